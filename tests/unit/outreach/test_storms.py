"""Storms, the pure part: the scope of an incident's cause, when counts make a storm and
where it starts, what a storm's state does to its messages and what operators may do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.outreach.domain import storms
from services.outreach.domain.storms import Action, State, StormError, StormPolicy, Verdict

T0 = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)
POLICY = StormPolicy(3, timedelta(minutes=10), 5, timedelta(minutes=30))


def at(*minutes: float) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in minutes]


def test_the_scope_is_the_hub_when_known_else_the_carrier_or_the_dispatch():
    facts = {"carrier": " DHL ", "location": "Leipzig  hub"}
    assert storms.scope_of("carrier_exception", facts, None) == "hub:dhl@Leipzig hub"
    assert storms.scope_of("delivery_late", {}, {"carrier": "UPS"}) == "carrier:ups"
    assert storms.scope_of("dispatch_late", {}, None) == "dispatch"
    assert storms.scope_of("refund_late", facts, None) is None  # no shared cause
    assert storms.scope_of("shipment_stalled", {}, None) is None  # no carrier known
    assert storms.describe("hub:dhl@Leipzig hub") == "dhl at Leipzig hub"
    assert storms.describe("carrier:ups") == "ups (everywhere)"


def test_a_storm_forms_when_rate_incidents_fall_within_the_window():
    assert storms.formed_at(at(0, 4, 8), POLICY) == T0 + timedelta(minutes=8)
    assert storms.formed_at(at(0, 6, 12), POLICY) is None  # never three within 10 min
    assert storms.formed_at(at(0, 6, 12, 13), POLICY) == T0 + timedelta(minutes=13)
    # It starts with the first incident that led up to it without a quiet gap.
    times = at(-100, 0, 6, 12, 13)
    assert storms.started_at(times, T0 + timedelta(minutes=13), POLICY) == T0


@pytest.mark.parametrize(
    ("rate", "message"),
    [("50", "incidents"), ("1/60", "at least 2"), ("5/0", "positive"), ("x/60", "incidents")],
)
def test_a_rate_that_does_not_parse_is_refused(rate, message):
    with pytest.raises(ValueError, match=message):
        StormPolicy.parse(rate, 0, 60)


def test_a_storm_waits_from_the_approval_size_on_unless_an_operator_decided():
    assert storms.state_for_size(State.FLOWING, 4, POLICY) is State.FLOWING
    assert storms.state_for_size(State.FLOWING, 5, POLICY) is State.AWAITING
    assert storms.state_for_size(State.APPROVED, 500, POLICY) is State.APPROVED
    never = StormPolicy(3, timedelta(minutes=10), 0, timedelta(minutes=30))
    assert storms.state_for_size(State.FLOWING, 10_000, never) is State.FLOWING
    verdicts = {s: storms.verdict(s) for s in State}
    assert verdicts == {State.FLOWING: Verdict.FLOW, State.APPROVED: Verdict.FLOW,
                        State.AWAITING: Verdict.HOLD, State.HELD: Verdict.HOLD,
                        State.CANCELLED: Verdict.CANCEL}  # fmt: skip


def test_operators_move_a_storm_but_a_cancelled_one_stays_cancelled():
    assert storms.after(State.AWAITING, Action.APPROVE) is State.APPROVED
    assert storms.after(State.APPROVED, Action.HOLD) is State.HELD
    assert storms.after(State.HELD, Action.CANCEL) is State.CANCELLED
    assert storms.after(State.AWAITING, Action.NOTE) is State.AWAITING
    for action in Action:
        with pytest.raises(StormError):
            storms.after(State.CANCELLED, action)


def test_notes_are_per_shipped_language_bounded_and_never_sent_in_another():
    notes = storms.clean_notes(
        {"en": " Closed  hub. ", "de": " ", "fr": "Fermé."}, ["en", "de", "fr"]
    )
    assert notes == {"en": "Closed hub.", "fr": "Fermé."}
    assert storms.note_for(notes, "en-GB") == "Closed hub."
    assert storms.note_for(notes, "de-DE") is None
    with pytest.raises(StormError, match="shipped"):
        storms.clean_notes({"it": "Chiuso."}, ["en", "de", "fr"])
    with pytest.raises(StormError, match="longer"):
        storms.clean_notes({"en": "x" * (storms.NOTE_MAX + 1)}, ["en"])


def test_segments_group_the_held_messages_that_read_alike():
    held = [("c-1", "de-DE", "email", "carrier_exception"), ("c-1", "de-DE", "email",
            "carrier_exception"), ("c-2", "de-DE", "email", "carrier_exception"),
            ("c-3", "en-GB", "sms", "carrier_exception")]  # fmt: skip
    first, second = storms.segments(held)
    assert (first.locale, first.channel, first.customers, first.messages) == (
        "de-DE",
        "email",
        2,
        3,
    )
    assert (second.locale, second.customers, second.messages) == ("en-GB", 1, 1)


def test_a_storm_covers_incidents_until_it_has_been_quiet():
    storm = storms.Storm("st-1", "dispatch", T0, T0 + timedelta(minutes=20), 9, State.FLOWING)
    assert storm.covers(T0 + timedelta(minutes=49), POLICY)
    assert not storm.covers(T0 + timedelta(minutes=51), POLICY)
    assert not storm.covers(T0 - timedelta(minutes=1), POLICY)


def test_a_message_meets_the_storm_as_it_was_at_its_moment():
    storm = storms.Storm("st-1", "dispatch", T0, T0 + timedelta(minutes=20), 9, State.AWAITING,
                         formed_at=T0 + timedelta(minutes=5),
                         awaiting_since=T0 + timedelta(minutes=15))  # fmt: skip
    assert storm.verdict_at(T0 + timedelta(minutes=4)) is None  # not a storm yet
    assert storm.verdict_at(T0 + timedelta(minutes=10)) is Verdict.FLOW  # still small
    assert storm.verdict_at(T0 + timedelta(minutes=15)) is Verdict.HOLD
