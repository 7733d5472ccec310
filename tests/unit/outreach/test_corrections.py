"""Corrections (domain/corrections.py): which closings contradict a message, which
message a correction answers, the request it becomes, and how it is decided."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from common.schemas import OutreachRequest
from services.outreach.domain.corrections import (
    DEFAULT,
    CorrectionPolicy,
    Told,
    cause_id_for,
    channel_of,
    correction_request,
    to_correct,
)
from services.outreach.domain.decisions import DeliveryPolicy, recheck
from tests.outreach_requests import EMAIL, SMS
from tests.unit.outreach.test_decisions import NIGHT_BERLIN, SMS_OPTED_OUT, plan, request, run

AT = datetime(2026, 3, 2, 11, 0, tzinfo=UTC)


def told(decision_id="dec-1", minutes=0, channel="sms") -> Told:
    return Told(
        decision_id=decision_id, customer_id="c-1", order_id="o-1", cause_id="inc-1",
        cause_kind="carrier_exception", channel=channel, sent_at=AT + timedelta(minutes=minutes),
        request={"context": {"order": {"order_id": "o-1"}, "incident": {"revision": 2}}},
    )  # fmt: skip


def test_the_default_policy_corrects_what_was_wrong_and_lets_what_stands_stand():
    policy = CorrectionPolicy.parse(DEFAULT)
    assert policy.wants("carrier_exception", "delivered")
    assert policy.wants("shipment_stalled", "delivered")
    assert policy.wants("delivery_late", "retracted") and policy.wants("dispatch_late", "retracted")
    assert not policy.wants("delivery_late", "delivered")  # late is late: the apology stands
    assert not policy.wants("carrier_exception", "cancelled")
    assert not policy.wants("carrier_exception", None)
    assert not CorrectionPolicy.parse("").wants("carrier_exception", "retracted")


@pytest.mark.parametrize("spec", ["carrier_exception", "x:", ":delivered", "a:b,c"])
def test_a_policy_that_is_not_kind_colon_resolution_is_refused(spec):
    with pytest.raises(ValueError, match="kind:resolution"):
        CorrectionPolicy.parse(spec)


def test_the_latest_message_about_the_incident_is_the_one_corrected():
    assert to_correct([told("dec-1", 0), told("dec-2", 30), told("dec-3", 10)]).decision_id == (
        "dec-2"
    )
    assert to_correct([]) is None


def test_the_correction_request_is_a_valid_request_of_its_own_cause():
    data = correction_request(told(), "delivered", AT + timedelta(hours=2))
    request = OutreachRequest.model_validate(data)
    assert request.request_id == "correction-dec-1"  # one per corrected message
    assert (request.cause.type, request.cause.id) == ("correction", cause_id_for("inc-1"))
    assert request.message_kind == "incident_corrected" and request.intent == "status_update"
    correction = request.context["correction"]
    assert (correction["decision_id"], correction["resolution"]) == ("dec-1", "delivered")
    assert request.context["order"] == {"order_id": "o-1"}  # what the templates name
    assert channel_of(request.context) == "sms" and channel_of({}) is None


def test_a_correction_goes_by_the_corrected_channel_despite_cap_and_holdout():
    correction = replace(request(), corrects_on="sms")
    everything = DeliveryPolicy(holdout_share=1.0)
    decision = run(correction, plan(EMAIL, SMS), sent=10, policy=everything)
    assert (decision.outcome, decision.channel, decision.fallbacks) == ("send", "sms", ())
    at_night = run(correction, plan(EMAIL, SMS), now=NIGHT_BERLIN)
    assert at_night.outcome == "schedule" and at_night.channel == "sms"  # quiet hours hold


def test_a_correction_whose_channel_is_gone_is_not_sent_elsewhere():
    correction = replace(request(), corrects_on="sms")
    decision = run(correction, plan(EMAIL, SMS_OPTED_OUT))
    assert (decision.outcome, decision.reason) == ("suppress", "no_contact")
    look = recheck(
        correction, channel="sms", plan=plan(EMAIL, SMS_OPTED_OUT), resolved=False,
        superseded=False, paused=False, now=AT, policy=DeliveryPolicy(),
    )  # fmt: skip
    assert look.outcome == "suppress"
