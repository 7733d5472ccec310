"""The delivery state machine: messages only move forward, and a provider's report a
message is already past changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.domain.states import (
    FINAL,
    MOVES,
    IllegalMove,
    Report,
    Status,
    check_move,
    reported,
)

RANK = {Status.SENT: 1, Status.DELIVERED: 2, Status.FAILED: 2}


def test_nothing_leaves_a_final_state():
    for final in FINAL:
        assert MOVES[final] == frozenset()
        for target in Status:
            with pytest.raises(IllegalMove):
                check_move(final, target)


def test_a_sent_message_only_learns_its_fate():
    assert MOVES[Status.SENT] == {Status.DELIVERED, Status.FAILED}
    with pytest.raises(IllegalMove):
        check_move(Status.SENT, Status.SENDING)


def test_a_send_in_doubt_is_settled_by_the_provider_never_rescheduled_blindly():
    assert Status.SCHEDULED not in MOVES[Status.IN_DOUBT]
    assert {Status.SENT, Status.DECIDED, Status.FAILED} <= MOVES[Status.IN_DOUBT]


@given(st.lists(st.sampled_from(list(Report)), min_size=1, max_size=12))
def test_reports_in_any_order_never_move_a_sent_message_backwards(reports):
    """Late, repeated and reordered webhooks: the first final report wins."""
    status = Status.SENT
    for report in reports:
        sources, target = reported(report)
        if status in sources:
            assert RANK[target] >= RANK[status]
            check_move(status, target)
            status = target
    if Report.DELIVERED in reports or Report.FAILED in reports:
        first_final = next(r for r in reports if r is not Report.ACCEPTED)
        assert (
            status
            == {Report.DELIVERED: Status.DELIVERED, Report.FAILED: Status.FAILED}[first_final]
        )


def test_a_report_for_a_send_in_doubt_is_proof_the_provider_has_it():
    for report in Report:
        sources, _ = reported(report)
        assert {Status.SENDING, Status.IN_DOUBT} <= sources
