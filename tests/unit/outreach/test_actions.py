"""What a sent message promises the shop will do (services/outreach/domain/actions.py):
one request per message and action, only once it is sent, and copy that backs nothing
else."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.schemas import CareActionRequested
from services.outreach.domain.actions import PROMISES, requested
from services.outreach.handlers import action_events

AT = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
TEMPLATES = Path(__file__).resolve().parents[3] / "services" / "outreach" / "templates"


def payload(kind: str) -> dict[str, object]:
    return {
        "customer_id": "c-1",
        "order_id": "o-1",
        "decision_id": "dec_1",
        "cause": {"type": "incident", "id": "inc-1", "kind": kind},
        "message_kind": kind,
        "channel": "email",
    }


@pytest.mark.parametrize(
    ("kind", "actions"),
    [
        ("shipment_stalled", ["carrier_inquiry"]),
        ("delivery_late", ["carrier_inquiry"]),
        ("carrier_exception", ["carrier_inquiry"]),
        ("refund_late", ["refund_escalation"]),
        ("merchant_fault_return", ["quality_report"]),
        ("dispatch_late", ["priority_dispatch"]),
        ("delivery_failed", []),
        ("churn_risk", []),
    ],
)
def test_a_sent_message_requests_what_its_kind_promises(kind, actions):
    found = requested("sent", payload(kind), AT)
    assert [a["action"] for a in found] == actions
    for data in found:
        event = CareActionRequested.model_validate(data)
        assert (event.customer_id, event.order_id, event.decision_id) == ("c-1", "o-1", "dec_1")


def test_only_a_sent_message_requests_and_always_with_the_same_id():
    for status in ("decided", "scheduled", "sending", "suppressed", "failed", "delivered"):
        assert requested(status, payload("refund_late"), AT) == []
    first = requested("sent", payload("refund_late"), AT)
    again = requested("sent", payload("refund_late"), AT.replace(hour=11))
    assert first[0]["action_id"] == again[0]["action_id"]


def test_the_events_are_cloudevents_on_their_own_type():
    class Row:
        status = "sent"
        at = AT
        payload = payload("shipment_stalled")

    (event,) = action_events(Row())  # type: ignore[arg-type]
    assert event.type == "care.action.requested" and event.subject == "dec_1"
    assert event.data["action"] == "carrier_inquiry"


PROMISE_WORDS = {
    "en": ("escalated", "quality team", "asked our warehouse", "in touch with", "asked them"),
    "de": ("eskaliert", "Qualitätsteam", "Lager gebeten", "in Kontakt", "gebeten"),
    "fr": ("fait remonter", "équipe qualité", "demandé à notre entrepôt", "en contact", "demandé"),
}


@pytest.mark.parametrize("lang", sorted(PROMISE_WORDS))
def test_every_shipped_promise_of_an_action_is_backed(lang):
    """A message kind whose shipped copy says we escalated, asked or passed something on
    requests that action when sent; copy that promises an action no kind backs fails."""
    kinds = tomllib.loads((TEMPLATES / f"{lang}.toml").read_text())
    unbacked = {
        kind: words
        for kind, fields in kinds.items()
        if not kind.startswith("_")
        and (words := [w for w in PROMISE_WORDS[lang] if w in str(fields)])
        and kind not in PROMISES
    }
    assert unbacked == {}


def test_a_remedy_is_asked_for_when_sent_or_when_a_report_settles_the_send():
    remedy = {"kind": "percent", "value": "10", "code": "SORRY-AAAA-BBBB", "why": "budget…"}
    sent = requested("sent", {**payload("delivery_late"), "remedy": remedy}, AT)
    (code,) = [a for a in sent if a["action"] == "discount_code"]
    assert code["remedy"] == {"kind": "percent", "value": "10", "code": "SORRY-AAAA-BBBB"}
    settled = {**payload("delivery_late"), "remedy": remedy, "taken": True}
    assert {a["action"] for a in requested("delivered", settled, AT)} == {
        "carrier_inquiry",
        "discount_code",
    }
    assert requested("delivered", {**payload("delivery_late"), "remedy": remedy}, AT) == []
    credit = {"kind": "credit", "value": "15.00", "currency": "EUR"}
    (booked,) = requested("sent", {**payload("churn_risk"), "remedy": credit}, AT)
    assert booked["action"] == "store_credit"
    CareActionRequested.model_validate(booked)
