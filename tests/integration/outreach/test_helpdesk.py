"""The helpdesk adapter on the real broker, through Zendesk's maintained client (zenpy)
against a local Zendesk double: a hand-off becomes one ticket with the conversation, a
later reply to the same case a note on it (once, however often it is delivered), an
outage of Zendesk holds the hand-off instead of losing it, and the agent's outcome comes
back signed and becomes support.resolutions. Only outside effects are checked: the
double's tickets and the topics."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import pytest

from common.envelope import new_event
from common.kafka import AiokafkaProducer
from services.outreach.config import Settings
from services.outreach.helpdesk.app import build
from tests.conftest import free_port, wait_for
from tests.doubles.zendesk import ZendeskDouble
from tests.e2e.stack import TopicReader

pytestmark = pytest.mark.integration
AT = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


def handoff(handoff_id: str, reply_id: str | None, text: str, trigger: str = "reply") -> dict:
    conversation = [
        {"at": AT, "direction": "out", "channel": "sms", "kind": "delivery_late",
         "text": "Leider ist Ihr Paket verspätet.", "ref": "dec_1"},
    ]  # fmt: skip
    data: dict = {
        "handoff_id": handoff_id,
        "customer_id": "c-7",
        "order_ids": ["o-7"],
        "risk_score": 72.0,
        "reasons": [{"code": "reply_intent_complaint", "detail": "frechheit"}],
        "trigger": trigger,
        "summary": "The customer is complaining (angry).",
    }
    if reply_id is not None:
        conversation.append(
            {"at": AT, "direction": "in", "channel": "sms", "kind": "complaint",
             "tone": "angry", "text": text, "ref": reply_id}
        )  # fmt: skip
        data |= {
            "locale": "de-DE",
            "summary_local": "Der Kunde beschwert sich (verärgert).",
            "reply": {"reply_id": reply_id, "intent": "complaint", "tone": "angry"},
            "incident": {"type": "incident", "id": "inc-7", "kind": "delivery_late"},
        }
    data["conversation"] = conversation
    return data


@pytest.fixture
async def desk(kafka_bootstrap, topic_prefix, tmp_path):
    zendesk = ZendeskDouble().start()
    settings = Settings(
        data_dir=tmp_path,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        helpdesk_port=free_port(),
        zendesk_subdomain=zendesk.subdomain,
        zendesk_email=zendesk.email,
        zendesk_api_token=zendesk.token,
        zendesk_api_base_url=zendesk.base_url,
        zendesk_webhook_secret=zendesk.webhook_secret,
    )
    helpdesk = build(settings)
    stop = asyncio.Event()
    running = asyncio.create_task(helpdesk.run(stop))
    producer = AiokafkaProducer(kafka_bootstrap, "test-shop")
    await producer.start()
    resolutions = TopicReader(kafka_bootstrap, settings.topics.resolutions)

    async def publish(data: dict, event_id: str) -> None:
        event = new_event(
            type="support.handoff.requested", source="/outreach/outreach", subject="c-7",
            time=AT, id=event_id, data=data,
        )  # fmt: skip
        await producer.send(settings.topics.handoffs, b"c-7", event.to_bytes(), [])

    try:
        await asyncio.to_thread(
            wait_for, lambda: helpdesk.consumer.ready(), timeout=60, message="assigned"
        )
        webhook = f"http://127.0.0.1:{settings.helpdesk_port}/webhooks/zendesk"
        yield zendesk, publish, resolutions, webhook
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 30)
        resolutions.close()
        await producer.stop()
        zendesk.stop()


async def wait_until(condition, message: str) -> None:
    await asyncio.to_thread(wait_for, condition, timeout=30, message=message)


async def test_a_case_is_one_ticket_with_the_conversation_and_its_later_replies_as_notes(desk):
    zendesk, publish, _, _ = desk
    zendesk.fail_next(2, status=503)  # Zendesk away: the hand-off waits, nothing is lost
    await publish(handoff("h-1", "r-1", "Frechheit, schon wieder!!"), "e-1")
    await wait_until(lambda: zendesk.tickets, "the ticket")
    (ticket,) = zendesk.tickets.values()
    assert ticket["external_id"] == "outreach/c-7/h-1"
    assert ticket["priority"] == "high" and "outreach_complaint" in ticket["tags"]
    body = ticket["comments"][0]
    assert body.startswith("The customer is complaining (angry).")
    assert "[de-DE] Der Kunde beschwert sich (verärgert)." in body
    assert "Leider ist Ihr Paket verspätet." in body and "Frechheit, schon wieder!!" in body
    # A second reply to the same case, delivered twice: one note on the same ticket.
    later = handoff("h-1", "r-2", "Ich will einen Mitarbeiter sprechen")
    await publish(later, "e-2")
    await publish(later, "e-2")
    await wait_until(lambda: len(ticket["comments"]) == 2, "the note")
    await publish(handoff("h-1", "r-1", "Frechheit, schon wieder!!"), "e-1")  # redelivered
    await publish(handoff("h-9", None, "", trigger="risk_score"), "e-9")
    await wait_until(lambda: len(zendesk.tickets) == 2, "the risk hand-off's ticket")
    assert len(ticket["comments"]) == 2 and "Ich will einen Mitarbeiter" in ticket["comments"][1]
    assert [t["external_id"] for t in zendesk.tickets.values()] == [
        "outreach/c-7/h-1",
        "outreach/c-7/h-9",
    ]


async def test_the_agents_outcome_comes_back_signed_as_a_resolution(desk):
    zendesk, publish, resolutions, webhook = desk
    await publish(handoff("h-1", "r-1", "Frechheit!!"), "e-1")
    await publish(handoff("h-2", None, "", trigger="risk_score"), "e-2")
    await wait_until(lambda: len(zendesk.tickets) == 2, "two tickets")
    first, second = sorted(zendesk.tickets)
    forged = await asyncio.to_thread(zendesk.agent_sets, webhook, first, "solved", [], "guess")
    assert forged == 403
    assert await asyncio.to_thread(zendesk.agent_sets, webhook, first, "open") == 204  # nothing yet
    assert await asyncio.to_thread(zendesk.agent_sets, webhook, first, "solved") == 204
    no_contact = ["outreach_no_contact"]
    assert await asyncio.to_thread(zendesk.agent_sets, webhook, second, "solved", no_contact) == 204
    events = await asyncio.to_thread(
        wait_for, lambda: (lambda e: e if len(e) >= 2 else None)(resolutions.events()), 30
    )
    assert [(e["data"]["handoff_id"], e["data"]["outcome"]) for e in events] == [
        ("h-1", "solved"),
        ("h-2", "no_contact"),
    ]
    assert {e["data"]["customer_id"] for e in events} == {"c-7"}
    assert events[0]["data"]["ticket_id"] == str(first) and events[0]["data"]["agent"]
