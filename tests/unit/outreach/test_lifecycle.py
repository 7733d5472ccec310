"""A message's life as values (domain/lifecycle.py) and outreach's pure handlers
(handlers.py): every move checked against the state machine, without a ledger, a
provider or a clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from common import schemas
from services.outreach import handlers
from services.outreach.domain import lifecycle
from services.outreach.domain.decisions import DeliveryPolicy, Suppression
from services.outreach.domain.lifecycle import (
    CauseState,
    Moment,
    Move,
    NewRow,
    Rendered,
    SendingPolicy,
)
from services.outreach.domain.states import MOVES, Report, Status
from tests.outreach_requests import EMAIL, NIGHT, NOON, SMS, plan, request

WALL = NOON + timedelta(hours=1)
AT = Moment(NOON, WALL, timedelta(minutes=10))
POLICY = DeliveryPolicy()
SENDING = SendingPolicy(max_attempts=3, backoff_base_s=2.0, backoff_cap_s=60.0)
OPEN = CauseState(resolved=False, superseded=False)


def outreach_request(**kw) -> schemas.OutreachRequest:
    return schemas.parse_payload(request(**kw), schemas.OutreachRequest)


def decided(seen: handlers.Seen | None = None, at: Moment = AT, **kw) -> handlers.Decided:
    seen = seen or handlers.Seen(plan(EMAIL, SMS), OPEN)
    return handlers.on_request(outreach_request(**kw), seen, at, POLICY)


def row(status: Status = Status.SENDING, **kw) -> NewRow:
    return replace(decided().row, status=status, **({"attempts": 1} | kw))


def assert_allowed(move: Move) -> None:
    target = Status(move.values["status"])
    for source in move.expected:
        assert target in MOVES[Status(source)], f"{source} -> {target}"


# --- the decision --------------------------------------------------------------------


def test_a_request_is_decided_to_be_sent_now_with_a_lease_and_an_expiry() -> None:
    out = decided()
    assert out.decision.outcome == "send"
    assert (out.row.status, out.row.channel, out.row.address) == (
        Status.DECIDED,
        "email",
        "ada@example.com",
    )
    assert out.row.lease_until == WALL + AT.lease
    assert out.row.expires_at == NOON + POLICY.scheduled_expiry
    assert out.row.fallbacks == [SMS.__dict__]
    assert out.row.request["first_name"] == "Ada"
    assert (out.entry.status, out.entry.decision_id, out.entry.at) == (
        Status.DECIDED,
        out.row.decision_id,
        NOON,
    )
    assert not out.supersedes


def test_the_same_request_decides_the_same_row_and_event() -> None:
    assert decided() == decided()


def test_a_resolved_cause_suppresses_with_no_lease_and_nothing_superseded() -> None:
    out = decided(handlers.Seen(plan(EMAIL), CauseState(True, False)), revision=3)
    assert (out.row.status, out.row.reason) == (Status.SUPPRESSED, "already_resolved")
    assert out.row.lease_until is None
    assert out.entry.payload["reason"] == "already_resolved"
    assert not out.supersedes


def test_a_later_revision_supersedes_the_older_messages() -> None:
    assert decided(revision=2).supersedes


def test_held_by_a_pause_has_no_channel_and_no_expiry_until_decided() -> None:
    out = decided(handlers.Seen(plan(EMAIL), OPEN, paused=True))
    assert (out.row.status, out.row.channel, out.row.expires_at) == (
        Status.SCHEDULED,
        None,
        None,
    )
    assert out.entry.payload["send_at"] is None


def test_an_sms_at_night_waits_for_8_in_the_morning_and_expires_after_it() -> None:
    out = decided(handlers.Seen(plan(SMS), OPEN), at=replace(AT, now=NIGHT))
    assert out.row.status == Status.SCHEDULED
    assert out.row.send_at is not None and out.row.send_at > NIGHT
    assert out.row.expires_at == out.row.send_at + POLICY.scheduled_expiry
    assert out.entry.payload["send_at"] == out.row.send_at.isoformat()


def test_the_trace_of_the_request_in_hand_is_kept_with_the_row_and_its_events() -> None:
    trace = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    out = decided(at=replace(AT, trace=trace))
    assert out.row.request["traceparent"] == trace["traceparent"]
    assert out.entry.payload[lifecycle.TRACE_KEY] == trace
    # Later, outside any trace (the scheduler at 08:00): the row's own trace.
    later = lifecycle.suppress(out.row, Suppression.PAUSED, "x", AT)
    assert later.entry is not None and later.entry.payload[lifecycle.TRACE_KEY] == trace


def test_a_checkin_whose_promise_held_asks_about_the_incidents_it_follows() -> None:
    checkin = outreach_request(kind="post_incident_checkin", intent="check_in")
    assert handlers.experience_to_ask(checkin) is None  # no facts: counts, as before
    checkin.context["incident"]["facts"] = {"promise_broken": False, "incident_ids": [7, "i"]}
    assert handlers.experience_to_ask(checkin) == ["7", "i"]
    assert handlers.experience_to_ask(outreach_request()) is None


# --- a message's moves ---------------------------------------------------------------


def test_a_claim_is_fenced_on_the_attempt_it_replaces_and_leased_in_wall_time() -> None:
    rendered = Rendered("Hi", "text", "<p>text</p>", "delivery_late.email.de", 4, [5])
    move = lifecycle.claim(row(Status.DECIDED), rendered, AT, address="ada@example.com")
    assert_allowed(move)
    assert (move.fence, move.values["attempts"]) == (1, 2)
    assert (move.values["claimed_at"], move.values["lease_until"]) == (WALL, WALL + AT.lease)
    assert move.values["template_version"] == 4
    assert move.entry is not None and move.entry.payload["template_skipped"] == [5]


def test_event_ids_are_derived_from_the_change_so_a_change_written_twice_is_one() -> None:
    rendered = Rendered(None, "t", None, "k", 1)
    first = lifecycle.claim(row(Status.DECIDED), rendered, AT, address="a")
    again = lifecycle.claim(row(Status.DECIDED), rendered, replace(AT, now=NIGHT), address="a")
    next_attempt = lifecycle.claim(row(Status.DECIDED, attempts=2), rendered, AT, address="a")
    assert first.entry and again.entry and next_attempt.entry
    assert first.entry.event_id == again.entry.event_id != next_attempt.entry.event_id
    # A row can be in doubt more than once per attempt: each time is its own event.
    doubt = [
        lifecycle.in_doubt(row(), "timeout", replace(AT, wall=WALL + timedelta(seconds=s)),
                           look_in=timedelta(seconds=30)).entry
        for s in (0, 1)
    ]  # fmt: skip
    assert doubt[0] and doubt[1] and doubt[0].event_id != doubt[1].event_id


def test_sent_records_the_provider_and_the_template_of_the_claim() -> None:
    claimed = row(template_key="k", template_version=3)
    move = lifecycle.sent(claimed, AT, provider="sendgrid", provider_message_id="m", outbox=False)
    assert_allowed(move)
    assert move.expected == (Status.SENDING,)
    assert move.entry is not None
    assert (move.entry.payload["template"], move.entry.payload["template_version"]) == ("k", 3)
    found = lifecycle.sent(
        claimed, AT, provider="sendgrid", provider_message_id="m", outbox=False, reconciled=True
    )
    assert found.expected == (Status.IN_DOUBT,)
    assert found.entry is not None and found.entry.payload["reconciled"] is True


@pytest.mark.parametrize(
    ("throttled", "failures", "retry_after", "jitter", "delay_s"),
    [
        (True, 0, None, 1.0, 2.0),  # throttled: not a failure, the first backoff
        (False, 0, None, 0.5, 1.0),  # failed once: 2 s, jittered to half
        (False, 1, None, 1.0, 4.0),  # failed twice: 4 s
        (False, 1, 30.0, 0.5, 30.0),  # the provider's Retry-After is the floor
    ],
)
def test_a_refused_send_is_tried_again_after_a_backoff(
    throttled: bool, failures: int, retry_after: float | None, jitter: float, delay_s: float
) -> None:
    move = lifecycle.refused(
        row(failures=failures),
        "429",
        AT,
        SENDING,
        throttled=throttled,
        retry_after=retry_after,
        jitter=jitter,
    )
    assert_allowed(move)
    assert move.values["status"] == Status.SCHEDULED
    assert move.values["send_at"] == NOON + timedelta(seconds=delay_s)
    assert move.values["failures"] == failures + (0 if throttled else 1)


def test_a_refused_send_gives_up_after_max_attempts_but_throttling_never_counts() -> None:
    def refused(throttled: bool) -> Move:
        return lifecycle.refused(
            row(failures=2), "503", AT, SENDING, throttled=throttled, retry_after=None, jitter=1
        )

    gave_up = refused(False)
    assert_allowed(gave_up)
    assert gave_up.values["status"] == Status.FAILED
    assert gave_up.values["reason"] == "gave_up after 3 attempts: 503"
    assert refused(True).values["status"] == Status.SCHEDULED


def test_a_permanent_error_moves_on_to_the_next_channel_then_fails() -> None:
    on_email = row(fallbacks=[SMS.__dict__])
    move = lifecycle.rejected(on_email, "21211", "invalid", AT)
    assert_allowed(move)
    assert (move.values["status"], move.values["channel"], move.values["fallbacks"]) == (
        Status.DECIDED,
        "sms",
        [],
    )
    assert move.entry is not None
    assert (move.entry.status, move.entry.payload["fallback_to"]) == (Status.FAILED, "sms")
    last = lifecycle.rejected(row(fallbacks=[]), "21211", "invalid", AT)
    assert_allowed(last)
    assert (last.values["status"], last.values["reason"]) == (Status.FAILED, "21211: invalid")


def test_absent_at_the_provider_is_decided_again_until_max_attempts() -> None:
    again = lifecycle.absent(row(Status.IN_DOUBT), AT, SENDING)
    assert_allowed(again)
    assert (again.values["status"], again.values["failures"]) == (Status.DECIDED, 1)
    given_up = lifecycle.absent(row(Status.IN_DOUBT, failures=2), AT, SENDING)
    assert_allowed(given_up)
    assert given_up.values["status"] == Status.FAILED


def test_a_look_is_leased_and_fenced_on_the_claim_it_looks_at() -> None:
    for status in (Status.SENDING, Status.IN_DOUBT):
        move = lifecycle.look(row(status), AT)
        assert_allowed(move)
        assert (move.expected, move.fence) == ((status,), 1)
    again = lifecycle.look_again(row(Status.IN_DOUBT), AT, settle=timedelta(seconds=30))
    assert again.values["lease_until"] == WALL + timedelta(seconds=30)


def test_reports_only_move_forward() -> None:
    accepted = lifecycle.report(
        row(), Report.ACCEPTED, AT, provider="twilio", detail={"provider_message_id": "SM1"}
    )
    assert accepted is not None
    assert_allowed(accepted)
    assert (accepted.values["status"], accepted.values["provider"]) == (Status.SENT, "twilio")
    failed = lifecycle.report(
        row(Status.SENT), Report.FAILED, AT, provider=None, detail={"reason": "bounce"}
    )
    assert failed is not None and failed.values["reason"] == "bounce"
    assert "provider" not in failed.values  # already known since it was sent
    late = lifecycle.report(row(Status.DELIVERED), Report.FAILED, AT, provider=None, detail={})
    assert late is None


def test_every_end_and_wait_is_a_move_the_state_machine_allows() -> None:
    moves = [
        lifecycle.suppress(row(Status.DECIDED), Suppression.SUPERSEDED, "newer", AT),
        lifecycle.fail(row(Status.DECIDED), "render_failed: x", AT, expected=(Status.DECIDED,)),
        lifecycle.release(row(Status.SCHEDULED), AT),
        lifecycle.wait_for_preferences(row(Status.DECIDED), AT),
        lifecycle.in_doubt(row(), "timeout", AT, look_in=timedelta(seconds=30)),
        handlers.expired(row(Status.SCHEDULED, attempts=0), AT),
        handlers.expired(row(Status.SCHEDULED, failures=1), AT),
    ]
    for move in moves:
        assert_allowed(move)
    assert moves[-2].values["reason"] == Suppression.QUIET_HOURS_EXPIRED
    assert moves[-1].values["status"] == Status.FAILED


# --- decided again: a held row, the last look -----------------------------------------


def test_a_row_held_by_a_pause_is_decided_again_from_the_plan_on() -> None:
    held = decided(handlers.Seen(plan(EMAIL), OPEN, paused=True)).row
    now = lifecycle.Moment(NOON, WALL, AT.lease)
    move = handlers.on_held(held, handlers.Seen(plan(SMS), OPEN), now, POLICY)
    assert_allowed(move)
    # Released for now, to leave with the customer's other held messages (consolidation).
    assert (move.values["status"], move.values["channel"]) == (Status.SCHEDULED, "sms")
    assert move.values["send_at"] == NOON and "released at the resume" in move.values["rule"]
    assert move.values["expires_at"] == NOON + POLICY.scheduled_expiry
    resolved = handlers.on_held(held, handlers.Seen(plan(SMS), CauseState(True, False)), now,
                                POLICY)  # fmt: skip
    assert resolved.values["status"] == Status.SUPPRESSED


def test_the_last_look_keeps_the_channel_or_says_why_not() -> None:
    decided_row = decided().row
    keep = handlers.last_look(decided_row, handlers.Seen(plan(EMAIL, SMS), OPEN), AT, POLICY)
    assert not isinstance(keep, Move) and keep.channel == "email"
    opted_out = handlers.last_look(decided_row, handlers.Seen(plan(SMS), OPEN), AT, POLICY)
    assert not isinstance(opted_out, Move) and opted_out.channel == "sms"
    superseded = handlers.Seen(plan(EMAIL), CauseState(False, True))
    move = handlers.last_look(decided_row, superseded, AT, POLICY)
    assert isinstance(move, Move) and move.values["reason"] == Suppression.SUPERSEDED
    paused = handlers.last_look(decided_row, handlers.Seen(plan(EMAIL), OPEN, paused=True), AT,
                                POLICY)  # fmt: skip
    assert isinstance(paused, Move)
    assert_allowed(paused)
    assert (paused.values["status"], paused.expected) == (Status.SCHEDULED, (Status.DECIDED,))
    assert paused.entry is not None and paused.entry.status == Status.SCHEDULED
