"""The outreach decision pipeline: every suppression reason and each routing rule."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time

import pytest

from services.outreach.domain.decisions import (
    ChannelOption,
    ContactPlan,
    DeliveryPolicy,
    RequestFacts,
    decide,
    quiet_until,
    recheck,
    revision_of,
)
from tests.outreach_requests import EMAIL, SMS
from tests.outreach_requests import plan as base_plan

NOON_BERLIN = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
NIGHT_BERLIN = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 23:30 in Berlin


def plan(*channels: ChannelOption, known: bool = True, opt_in: bool = True) -> ContactPlan:
    """Ada's plan, consenting to marketing unless told otherwise."""
    return replace(base_plan(*channels, opt_in=opt_in), known=known)


SMS_OPTED_OUT = ChannelOption("sms", "+4915112345678", False, "opted_out")
EMAIL_MISSING = ChannelOption("email", "", False, "no_contact")


def request(
    intent: str = "apology", severity: str = "warning", offer: str | None = None, rid: str = "req-1"
) -> RequestFacts:
    return RequestFacts(
        request_id=rid,
        customer_id="c-1",
        intent=intent,
        message_kind="delivery_late",
        severity=severity,
        cause_id="inc-1",
        offer_tier=offer,
    )


def run(
    req=None,
    p=None,
    *,
    decided=False,
    resolved=False,
    paused=False,
    sent=0,
    now=NOON_BERLIN,
    policy=DeliveryPolicy(),
    experienced=True,
):
    return decide(
        req or request(),
        plan=p if p is not None else plan(EMAIL, SMS),
        already_decided=decided,
        resolved=resolved,
        paused=paused,
        sent_in_window=sent,
        now=now,
        policy=policy,
        experienced=experienced,
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        (dict(decided=True), "duplicate"),
        (dict(resolved=True), "already_resolved"),
        (dict(p=plan(known=False)), "no_contact"),
        (dict(p=plan(EMAIL_MISSING)), "no_contact"),
        (dict(p=plan(SMS_OPTED_OUT)), "opted_out"),
        (
            dict(req=request("check_in", offer="standard"), p=plan(EMAIL, opt_in=False)),
            "no_consent",
        ),
        (dict(sent=3), "frequency_cap"),
        (dict(policy=DeliveryPolicy(holdout_share=1.0)), "holdout"),
        (dict(req=request("check_in"), experienced=False), "not_experienced"),
    ],
)
def test_suppression_reasons(kwargs, reason):
    decision = run(**kwargs)
    assert decision.outcome == "suppress"
    assert decision.reason == reason
    assert decision.rule


def test_critical_incidents_bypass_the_frequency_cap():
    assert run(req=request(severity="critical"), sent=10).outcome == "send"


def test_first_usable_channel_in_the_customers_order_with_the_rest_as_fallbacks():
    decision = run(p=plan(SMS_OPTED_OUT, EMAIL, SMS))
    assert (decision.channel, [f.channel for f in decision.fallbacks]) == ("email", ["sms"])


def test_sms_at_night_is_scheduled_for_8_local_and_email_is_not_held():
    decision = run(p=plan(SMS, EMAIL), now=NIGHT_BERLIN)
    assert decision.outcome == "schedule"
    assert decision.send_at == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)  # 08:00 CET
    assert run(p=plan(EMAIL, SMS), now=NIGHT_BERLIN).outcome == "send"


def test_paused_sending_holds_the_decision():
    decision = run(paused=True)
    assert decision.outcome == "schedule" and decision.send_at is None


def test_quiet_hours_follow_dst():
    # The night DST starts in Berlin (29 March 2026): 08:00 local is 06:00 UTC.
    wake = quiet_until(datetime(2026, 3, 28, 23, 0, tzinfo=UTC), "Europe/Berlin", time(21), time(8))
    assert wake == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    assert (
        quiet_until(datetime(2026, 3, 29, 10, 0, tzinfo=UTC), "Europe/Berlin", time(21), time(8))
        is None
    )


def last_look(p=None, *, channel="sms", now=NOON_BERLIN, req=None, **flags):
    return recheck(
        req or request(),
        channel=channel,
        plan=p if p is not None else plan(SMS, EMAIL),
        resolved=flags.get("resolved", False),
        superseded=flags.get("superseded", False),
        paused=flags.get("paused", False),
        now=now,
        policy=DeliveryPolicy(),
    )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        (dict(resolved=True), "already_resolved"),
        (dict(superseded=True), "superseded"),
        (dict(p=plan(SMS_OPTED_OUT)), "opted_out"),
        (dict(p=plan(known=False)), "no_contact"),
        (
            dict(req=request("check_in", offer="standard"), p=plan(SMS, opt_in=False)),
            "no_consent",
        ),
    ],
)
def test_the_last_look_suppresses_what_changed_since_the_decision(kwargs, reason):
    decision = last_look(**kwargs)
    assert (decision.outcome, decision.reason) == ("suppress", reason)


def test_the_last_look_keeps_the_decided_channel_while_it_is_usable():
    decision = last_look(plan(EMAIL, SMS), channel="sms")
    assert (decision.outcome, decision.channel) == ("send", "sms")
    assert [f.channel for f in decision.fallbacks] == ["email"]


def test_the_last_look_moves_to_the_next_usable_channel_after_an_opt_out():
    decision = last_look(plan(SMS_OPTED_OUT, EMAIL), channel="sms")
    assert (decision.outcome, decision.channel) == ("send", "email")


def test_the_last_look_holds_an_sms_that_would_leave_at_night():
    decision = last_look(now=NIGHT_BERLIN)
    assert decision.outcome == "schedule" and decision.send_at == datetime(
        2026, 3, 3, 7, 0, tzinfo=UTC
    )


def test_the_last_look_holds_while_sending_is_paused():
    decision = last_look(paused=True)
    assert decision.outcome == "schedule" and decision.send_at is None


def test_a_newer_revision_came_first():
    decision = decide(
        request(),
        plan=plan(EMAIL),
        already_decided=False,
        resolved=False,
        paused=False,
        sent_in_window=0,
        now=NOON_BERLIN,
        policy=DeliveryPolicy(),
        superseded=True,
    )
    assert (decision.outcome, decision.reason) == ("suppress", "superseded")


@pytest.mark.parametrize(
    ("context", "revision"),
    [({}, 1), ({"incident": {"revision": 3}}, 3), ({"incident": {"revision": "x"}}, 1)],
)
def test_the_revision_a_request_speaks_of(context, revision):
    assert revision_of(context) == revision
