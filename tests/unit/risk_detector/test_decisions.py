"""risk_detector decisions: one table row per rule, fed through the handler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from common.envelope import new_event
from common.topics import Topics
from services.risk_detector.domain.decisions import Policy
from services.risk_detector.domain.quantile import P2Quantile
from services.risk_detector.domain.scoring import score
from services.risk_detector.handlers import RiskDetector

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def ev(type_, data, hours=0.0, id_=None):
    return new_event(
        type=type_,
        source="/t",
        subject="x",
        data=data,
        time=T0 + timedelta(hours=hours),
        id=id_ or f"{type_}:{hours}:{hash(repr(sorted(data.items())))}",
    )


def incident(
    kind="delivery_late",
    severity="warning",
    change="opened",
    revision=1,
    hours=0.0,
    iid="inc-1",
    order="o-1",
):
    return ev(
        f"incident.{change}",
        {
            "incident_id": iid,
            "revision": revision,
            "kind": kind,
            "severity": severity,
            "customer_id": "c-1",
            "order_id": order,
            "status": "open",
            "detected_at": (T0 + timedelta(hours=hours)).isoformat(),
            "explanation": f"{kind} happened",
            "evidence": ["e1"],
            "facts": {},
        },
        hours,
        id_=f"{iid}:{revision}:{change}",
    )


def ret(return_id, reason, hours):
    return ev(
        "return.requested",
        {
            "return_id": return_id,
            "order_id": f"o-{return_id}",
            "customer_id": "c-1",
            "reason": reason,
            "items": [{"sku": "s", "quantity": 1, "reason": reason}],
        },
        hours,
    )


def run(*events, policy=None):
    detector = RiskDetector(policy or Policy(), Topics())
    profile, out = None, []
    for e in events:
        outcome = detector.handle(profile, "c-1", e)
        profile = outcome.state
        out += [r.event for r in outcome.records]
    return profile, out


def test_an_incident_becomes_an_outreach_request_with_the_right_intent():
    _, out = run(incident("delivery_late"), incident("delivery_at_risk", iid="inc-2"))
    assert [(e.data["intent"], e.data["message_kind"]) for e in out] == [
        ("apology", "delivery_late"),
        ("status_update", "delivery_at_risk"),
    ]
    assert out[0].data["cause"] == {"type": "incident", "id": "inc-1", "kind": "delivery_late"}


def test_the_same_cause_never_yields_a_second_request():
    e = incident()
    _, out = run(e, e)
    assert len(out) == 1


def test_a_material_update_yields_a_new_request_and_resolution_none():
    _, out = run(
        incident(),
        incident(change="updated", revision=2, hours=5),
        incident(change="resolved", revision=3, hours=9),
    )
    assert [e.data["message_kind"] for e in out] == ["delivery_late", "delivery_late"]
    assert out[0].data["request_id"] != out[1].data["request_id"]


def test_lost_parcel_is_an_apology():
    _, out = run(incident("carrier_exception", "critical"))
    assert out[0].data["intent"] == "apology"


def test_merchant_fault_return_gets_an_apology_and_changed_mind_does_not():
    _, out = run(ret("r1", "damaged", 0), ret("r2", "changed_mind", 1))
    assert [e.data["message_kind"] for e in out] == ["merchant_fault_return"]


def test_three_returns_within_90_days_trigger_one_serial_returns_checkin():
    _, out = run(
        ret("r1", "size_fit", 0),
        ret("r2", "size_fit", 24 * 30),
        ret("r3", "changed_mind", 24 * 60),
        ret("r4", "size_fit", 24 * 61),
    )
    kinds = [e.data["message_kind"] for e in out]
    assert kinds.count("serial_returns") == 1


def high_value_trouble():
    """A 2,500 EUR order, three critical incidents, a complaint and an NPS of 1."""
    events = [
        ev(
            "order.placed",
            {
                "order_id": "big",
                "customer_id": "c-1",
                "currency": "EUR",
                "total": "2500.00",
                "items": [{"sku": "s", "name": "TV", "quantity": 1, "unit_price": "2500.00"}],
                "shipping_method": "standard",
                "promised_ship_by": T0.isoformat(),
                "promised_delivery_by": T0.isoformat(),
                "shipping_address": {"country": "DE", "postal_code": "1", "city": "B"},
            },
            0,
        )
    ]
    events += [
        incident("carrier_exception", "critical", iid=f"x{i}", hours=i + 1) for i in range(3)
    ]
    events += [
        ev("feedback.received", {"customer_id": "c-1", "kind": "complaint"}, 5),
        ev("feedback.received", {"customer_id": "c-1", "kind": "nps", "score": 1}, 6),
    ]
    return events


def test_high_score_checks_in_and_high_value_customer_is_handed_off():
    events = high_value_trouble()
    profile, out = run(*events)
    types = [e.type for e in out]
    assert "support.handoff.requested" in types
    handoff = next(e for e in out if e.type == "support.handoff.requested")
    assert handoff.data["risk_score"] >= 85
    assert "Churn risk" in handoff.data["summary"]
    # The automated check-in waits for the agent by default.
    assert not any(
        e.data.get("message_kind") == "churn_risk"
        for e in out
        if e.type != types[0] and e.type == "outreach.request.created"
    )
    _, out2 = run(*events, policy=Policy(checkin_waits_for_agent=False))
    assert any(
        e.data.get("message_kind") == "churn_risk"
        for e in out2
        if e.type == "outreach.request.created"
    )


def resolved(handoff_id, outcome, hours):
    data = {
        "handoff_id": handoff_id,
        "customer_id": "c-1",
        "outcome": outcome,
        "resolved_at": (T0 + timedelta(hours=hours)).isoformat(),
    }
    return ev("support.handoff.resolved", data, hours, id_=f"res:{handoff_id}:{outcome}")


def checkins(out):
    return [
        e.data["request_id"]
        for e in out
        if e.type == "outreach.request.created" and e.data["message_kind"] == "churn_risk"
    ]


#: A check-in wanted at the hand-off's score: it is first wanted when the case opens.
AT_ONCE = Policy(checkin_score=85)


def test_the_check_in_waits_for_the_agents_outcome():
    events = high_value_trouble()
    profile, out = run(*events, policy=AT_ONCE)
    handoff = next(e for e in out if e.type == "support.handoff.requested").data["handoff_id"]
    assert checkins(out) == [] and [a.handoff_id for a in profile.awaiting_agent] == [handoff]
    # Solved: the agent took care of it; the check-in is dropped, and no later fact of
    # the quiet period brings one back.
    profile, solved = run(
        *events, resolved(handoff, "solved", 8), incident(iid="later", hours=9), policy=AT_ONCE
    )
    assert checkins(solved) == [] and profile.awaiting_agent == []
    assert [(r.handoff_id, r.outcome) for r in profile.resolutions] == [(handoff, "solved")]
    # No contact: the held check-in goes now, once; and it raises the score.
    profile, missed = run(
        *events,
        resolved(handoff, "no_contact", 8),
        resolved(handoff, "no_contact", 9),
        policy=AT_ONCE,
    )
    assert len(checkins(missed)) == 1 and profile.awaiting_agent == []
    assert "agent_no_contact" in {
        c.code for c in score(profile, T0 + timedelta(hours=9)).contributions
    }
    # Escalated: it keeps waiting.
    profile, escalated = run(*events, resolved(handoff, "escalated", 8), policy=AT_ONCE)
    assert checkins(escalated) == [] and len(profile.awaiting_agent) == 1


def test_a_check_in_no_outcome_answers_goes_after_the_wait():
    events = high_value_trouble()
    wait = Policy().agent_wait_days * 24
    held_at = 5  # the complaint's hour: the score passes 85
    _, early = run(*events, incident(iid="soon", hours=held_at + wait - 1), policy=AT_ONCE)
    assert checkins(early) == []
    profile, late = run(
        *events,
        incident(iid="late", hours=held_at + wait + 1),
        incident(iid="later", hours=held_at + 2 * wait + 2),
        policy=AT_ONCE,
    )
    assert len(checkins(late)) == 1 and profile.awaiting_agent == []


def test_erasure_removes_the_profile():
    profile, _ = run(incident(), ev("customer.erased", {"customer_id": "c-1"}, 1))
    assert profile is None


def test_p2_quantile_tracks_the_90th_percentile():
    est = P2Quantile(0.9)
    for i in range(1, 10_001):
        est.add(float((i * 7919) % 10_000))
    value = est.value()
    assert value is not None and 8700 < value < 9300
    assert P2Quantile.from_dict(est.to_dict()).value() == value


def reply(intent, tone, hours):
    data = {
        "reply_id": f"rep-{hours}",
        "customer_id": "c-1",
        "channel": "sms",
        "received_at": (T0 + timedelta(hours=hours)).isoformat(),
        "order_id": "o-1",
        "intent": intent,
        "tone": tone,
        "language": "en",
        "classifier": "lexicon-v1",
    }
    return ev("outreach.reply.received", data, hours, id_=f"rep-{hours}")


def test_a_complaint_or_an_angry_reply_counts_as_a_complaint():
    profile, _ = run(
        incident(),
        reply("thanks", "happy", 1),
        reply("question", "neutral", 2),
        reply("question", "angry", 3),
        reply("complaint", "neutral", 4),
    )
    assert [(f.kind, f.via) for f in profile.feedback] == [("complaint", "reply")] * 2
    reasons = {c.detail for c in score(profile, T0 + timedelta(hours=5)).contributions}
    assert "complaint in a reply" in reasons


def test_a_survey_answer_is_a_csat_score():
    answered = reply("survey_answer", "neutral", 2)
    answered.data["survey_score"] = 1
    profile, _ = run(incident(), answered)
    assert [(f.kind, f.score, f.via) for f in profile.feedback] == [("csat", 1, "reply")]
    codes = {c.code for c in score(profile, T0 + timedelta(hours=3)).contributions}
    assert "low_csat" in codes
