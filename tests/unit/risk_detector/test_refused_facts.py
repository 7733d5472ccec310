"""A fact whose payload is refused (dead-lettered) leaves the customer's profile as it
was, whoever keeps it: risk_detector's stream reads the profile again for every record,
the rehearsal's replay (replay/stages.py) keeps the object itself."""

from __future__ import annotations

import pytest

from common.envelope import InvalidEvent
from common.topics import Topics
from services.risk_detector.domain.decisions import Policy
from services.risk_detector.domain.profile import Profile
from services.risk_detector.handlers import RiskDetector
from tests.risk_scenario import feedback, order


def test_a_refused_fact_changes_nothing_not_even_a_due_rhythm_check():
    detector = RiskDetector(Policy(), Topics())
    profile: Profile | None = None
    for _, _, event in [order("c-1", f"o{i}", 5 * i) for i in range(4)]:
        profile = detector.handle(profile, "c-1", event).state
    assert profile is not None
    before = profile.model_dump(mode="json")
    _, _, bad = feedback("c-1", "nps", 3, 60)  # 45 days of silence later: a check is due
    bad = bad.with_fields(data={"customer_id": "c-1", "kind": "nps", "score": "not a score"})
    with pytest.raises(InvalidEvent):
        detector.handle(profile, "c-1", bad)
    assert profile.model_dump(mode="json") == before
    # The same fact, mended, is not taken for a duplicate of the refused one.
    good = bad.with_fields(data={"customer_id": "c-1", "kind": "nps", "score": 3})
    outcome = detector.handle(profile, "c-1", good)
    assert not outcome.duplicate and outcome.state is not None
    assert outcome.state.last_event_at == good.time
    assert outcome.state.rhythm_checked_at is not None  # the silence judged now, once
    assert before["rhythm_checked_at"] != outcome.state.model_dump(mode="json")["rhythm_checked_at"]
