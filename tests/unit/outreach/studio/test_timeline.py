"""One customer's timeline (studio/timeline.py): every kind of entry in order, and what
each sight shows of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from services.outreach.studio.timeline import NOT_FOR_ROLE, SCRUBBED, Sight, summary, timeline

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
VIEWER, EDITOR, SUPPORT = Sight(False, False), Sight(True, False), Sight(True, True)


def decision(**changes):
    row = dict(
        decision_id="dec-1", customer_id="c-1", order_id="o-1", cause_type="incident",
        cause_id="inc-1", cause_kind="delivery_late", intent="apology",
        message_kind="delay_apology", severity="warning", status="sent", reason=None,
        rule="", channel="sms", address="+4915100000002", locale="de-DE",
        time_zone="Europe/Berlin", decided_at=AT, sent_at=AT + timedelta(seconds=1),
        template_key="delay_apology.sms.de", template_version=3, subject=None,
        body_text="Hallo Kim, Ihr Paket ist spät.", provider_message_id="SM1",
        outbox=False, request={"reasons": [{"code": "late", "detail": "2 days late"}]},
        scrubbed=False, experiments=[],
    )  # fmt: skip
    return SimpleNamespace(**(row | changes))


def reply(**changes):
    row = dict(
        reply_id="rep-1", channel="sms", received_at=AT + timedelta(hours=1),
        decision_id="dec-1", text="Frechheit, schon wieder!", command=None,
        intent="complaint", tone="angry", evidence=["frechheit"], language="de",
        classifier="lexicon-v1", handoff_id="ho-1", survey_score=None, scrubbed=False,
    )  # fmt: skip
    return SimpleNamespace(**(row | changes))


def handoff(**changes):
    row = dict(
        handoff_id="ho-1", requested_at=AT + timedelta(hours=1, seconds=1), trigger="reply",
        order_ids=["o-1"], risk_score=None, reasons=[{"code": "reply_tone_angry",
        "detail": "frechheit"}], summary="Kim complains (angry).",
        summary_local="Kim beschwert sich.", locale="de-DE",
        incident={"type": "incident", "id": "inc-1", "kind": "delivery_late"},
        reply_id="rep-1", outcome="solved", agent="Alex", ticket_id="42",
        resolved_at=AT + timedelta(hours=3), scrubbed=False,
    )  # fmt: skip
    return SimpleNamespace(**(row | changes))


def everything(sight: Sight, **reply_changes):
    survey = reply(reply_id="rep-2", received_at=AT + timedelta(days=2), text="4",
                   intent="survey_answer", tone="neutral", evidence=[], handoff_id=None,
                   survey_score=4)  # fmt: skip
    return timeline(
        [(decision(), ["decided", "sending", "sent"])],
        [reply(**reply_changes), survey],
        [handoff()],
        sight,
    )


def test_every_kind_of_entry_in_the_order_it_happened():
    kinds = [e.kind for e in everything(SUPPORT)]
    assert kinds == ["incident", "decision", "message", "reply", "handoff", "outcome", "survey"]


def test_a_support_lead_sees_the_words_and_the_full_address():
    entries = {e.kind: e for e in everything(SUPPORT)}
    assert entries["reply"].text == "Frechheit, schon wieder!"
    assert entries["message"].text == "Hallo Kim, Ihr Paket ist spät."
    assert "Kim beschwert sich." in (entries["handoff"].text or "")
    assert ("Channel", "sms +4915100000002") in entries["decision"].facts
    assert entries["outcome"].badge == "solved" and ("Agent", "Alex") in entries["outcome"].facts


def test_a_viewer_sees_why_and_when_and_nothing_anyone_wrote():
    entries = everything(VIEWER)
    assert all(e.text is None for e in entries)
    hidden = {e.kind: e.hidden for e in entries if e.hidden}
    assert hidden == {k: NOT_FOR_ROLE for k in ("message", "reply", "handoff", "survey")}
    facts = {e.kind: dict(e.facts) for e in entries}
    assert facts["reply"]["Read as"] == "complaint, angry"
    assert facts["reply"]["Because of"] == "frechheit"
    assert facts["decision"]["Why"] == "delivery_late → apology; 2 days late"
    assert facts["decision"]["Steps"] == "decided → sending → sent"
    assert "+4915100000002" not in str(facts) and "+49***02" in facts["decision"]["Channel"]


def test_an_editor_sees_what_we_wrote_not_what_the_customer_wrote():
    entries = {e.kind: e for e in everything(EDITOR)}
    assert entries["message"].text and entries["reply"].text is None
    assert entries["handoff"].text is None


def test_words_removed_by_the_retention_say_so():
    entries = {e.kind: e for e in everything(SUPPORT, text=None, scrubbed=True)}
    assert entries["reply"].text is None and entries["reply"].hidden == SCRUBBED


def test_a_hand_off_not_yet_resolved_waits_and_a_resolution_alone_still_shows():
    open_, = timeline([], [], [handoff(outcome=None, resolved_at=None)], SUPPORT)  # fmt: skip
    assert open_.badge == "waiting"
    (only,) = timeline([], [], [handoff(requested_at=None)], SUPPORT)
    assert only.kind == "outcome"


def test_the_summary_counts_what_the_timeline_holds():
    head = summary(
        "c-1", [decision()], [reply(), reply(reply_id="r2", survey_score=2)],
        [handoff(), handoff(handoff_id="ho-2", outcome="escalated")],
    )  # fmt: skip
    assert (head.locale, head.messages, head.replies, head.handoffs) == ("de-DE", 1, 1, 2)
    assert (head.open_handoffs, head.last_survey, head.channels) == (1, 2, ["sms"])


def test_shouted_words_are_the_customers_own_and_hidden_from_other_roles():
    shouted = ["frechheit", "SHOUTING: FRECHHEIT SCHON WIEDER"]
    masked = {e.kind: dict(e.facts) for e in everything(VIEWER, evidence=shouted)}
    assert masked["reply"]["Because of"] == "frechheit, SHOUTING (words hidden)"
    full = {e.kind: dict(e.facts) for e in everything(SUPPORT, evidence=shouted)}
    assert "FRECHHEIT SCHON WIEDER" in full["reply"]["Because of"]


def test_a_decision_names_the_arms_of_its_experiments():
    from services.outreach.studio.timeline import decision_entries

    arms = [
        {"experiment": "apology-effect", "subject": "intent:apology", "arm": "control",
         "effect": "withheld"},
        {"experiment": "offers", "subject": "remedy:*", "arm": "control",
         "effect": "without_remedy"},
        {"experiment": "holdout", "subject": "all", "arm": "control", "effect": "protected"},
    ]  # fmt: skip
    (entry, *_) = decision_entries(decision(experiments=arms), ["sent"], VIEWER)
    facts = dict(entry.facts)
    assert facts["Experiments"] == (
        "apology-effect (intent:apology): control, withheld; "
        "offers (remedy:*): control, sent without its remedy; "
        "holdout (all): control, protected: sent anyway"
    )


def test_a_decision_says_its_remedy_and_why_never_the_code():
    from services.outreach.studio.timeline import decision_entries

    why = "credit:20: 20.00 EUR would exceed the budget; amount:10: granted"
    remedy = {"kind": "amount", "value": "10.00", "currency": "EUR", "cost": "10.00", "why": why}
    (entry, *_) = decision_entries(decision(), ["sent"], VIEWER, remedy)
    assert dict(entry.facts)["Remedy"] == (
        "amount 10.00 EUR (cost 10.00): credit:20: 20.00 EUR would exceed the budget; "
        "amount:10: granted"
    )
