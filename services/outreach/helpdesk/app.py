"""The helpdesk adapter's process: its consumer of support.handoffs (a ticket per case)
and its webhook for the agents' outcomes (support.resolutions)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

from aiohttp import web

from common import schemas
from common.admin import ensure_topics
from common.clock import WallClock, wall_now
from common.envelope import CloudEvent, derived_id, new_event
from common.kafka import (
    AiokafkaProducer,
    ConsumerLoop,
    DeadLetters,
    InputMessage,
    MessageProcessor,
    Outgoing,
    ProducerPort,
)
from common.logs import get_logger
from common.ops_http import Heartbeat, OpsServer
from common.topics import TopicSpec
from services.outreach.adapters.zendesk import ZendeskDesk, webhook_valid
from services.outreach.config import Settings
from services.outreach.domain import helpdesk

SERVICE = "outreach"
COMPONENT = "outreach-helpdesk"
log = get_logger(__name__)


class Helpdesk:
    """Its consumer of hand-offs and its webhook; `desk` is the helpdesk's API."""

    def __init__(self, settings: Settings, desk: ZendeskDesk, producer: ProducerPort) -> None:
        self.settings, self.desk, self.producer = settings, desk, producer
        topics = settings.topics
        self.topics = topics
        self.heartbeat = Heartbeat()
        deadletters = DeadLetters(producer, topics.deadletter(SERVICE), COMPONENT)
        processor = MessageProcessor(COMPONENT, self.on_handoff, deadletters, WallClock())
        self.consumer = ConsumerLoop(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.topic_prefix}helpdesk",  # the chart's serviceName: its ACLs
            topics=[topics.handoffs],
            processor=processor,
            heartbeat=self.heartbeat,
            client_id=COMPONENT,
            session_timeout_s=settings.kafka_session_timeout_s,
        )
        self.ops = OpsServer(
            settings.http_host,
            settings.helpdesk_port,
            self.heartbeat,
            checks={"kafka_assignment": self.consumer.ready},
            routes=[web.post("/webhooks/zendesk", self.on_webhook)],
        )

    async def on_handoff(self, msg: InputMessage, event: CloudEvent) -> None:
        """A hand-off: its case's ticket, created or noted (idempotent by the case)."""
        if event.type != "support.handoff.requested":
            return
        handoff = schemas.parse_payload(event, schemas.HandoffRequested)
        tag = helpdesk.reply_tag(handoff.reply.reply_id) if handoff.reply else None
        draft = helpdesk.ticket_for(handoff)
        ticket = await self.desk.open_case(draft, helpdesk.note_for(handoff), tag)
        log.info("ticket", ticket_id=ticket, handoff_id=handoff.handoff_id)

    async def on_webhook(self, request: web.Request) -> web.Response:
        """Zendesk's webhook (a trigger on ticket updates): signed with the webhook's
        secret over its timestamp and body; a solved, closed or escalated ticket of ours
        becomes `support.handoff.resolved`."""
        secret = self.settings.zendesk_webhook_secret
        body = await request.read()
        stamp = request.headers.get("X-Zendesk-Webhook-Signature-Timestamp", "")
        signature = request.headers.get("X-Zendesk-Webhook-Signature", "")
        if secret is None or not webhook_valid(secret.get_secret_value(), stamp, body, signature):
            return web.Response(status=403, text="invalid signature")
        if abs(time.time() - _epoch(stamp)) > self.settings.webhook_max_age_s:
            return web.Response(status=403, text="stale timestamp")
        try:
            payload: Any = json.loads(body)
            case = helpdesk.case_of(str(payload["external_id"]))
            tags = payload.get("tags") or []
            tags = tags.split() if isinstance(tags, str) else [str(t) for t in tags]
            outcome = helpdesk.outcome_of(str(payload.get("status", "")), tags)
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="not a ticket update")
        if case is None or outcome is None:
            return web.Response(status=204)  # not ours, or nothing decided yet
        try:
            await self._resolved(case, outcome, payload)
        except Exception as exc:  # Zendesk retries a webhook that failed
            log.warning("resolution_not_published", error=repr(exc))
            return web.Response(status=503, text="try again")
        return web.Response(status=204)

    async def _resolved(self, case: tuple[str, str], outcome: str, payload: Any) -> None:
        customer_id, handoff_id = case
        now = wall_now()
        resolved = schemas.HandoffResolved.model_validate(
            {
                "handoff_id": handoff_id,
                "customer_id": customer_id,
                "outcome": outcome,
                "resolved_at": now,
                "agent": str(payload["agent"]) if payload.get("agent") else None,
                "ticket_id": str(payload["ticket_id"]) if payload.get("ticket_id") else None,
            }
        )
        event = new_event(
            type="support.handoff.resolved",
            source="/outreach/helpdesk",
            subject=customer_id,
            time=now,
            id=derived_id("resolution", handoff_id, outcome),
            data=resolved.model_dump(mode="json", exclude_none=True),
        )
        await self.producer.emit(COMPONENT, [Outgoing(self.topics.resolutions, customer_id, event)])
        log.info("resolution", handoff_id=handoff_id, outcome=outcome)

    async def run(self, stop: asyncio.Event) -> None:
        topics, partitions = self.topics, self.settings.topic_partitions
        ensure_topics(
            self.settings.kafka_bootstrap_servers,
            [
                TopicSpec(topics.handoffs, partitions),
                TopicSpec(topics.resolutions, partitions),
                TopicSpec(topics.deadletter(SERVICE), 1),
            ],
        )
        await self.producer.start()
        await self.consumer.start()
        await self.ops.start()
        log.info("started", http_port=self.ops.port)
        consuming = asyncio.create_task(self.consumer.run())
        await asyncio.wait(
            [consuming, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED"
        )
        await self.consumer.stop()
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
        await self.ops.stop()
        await self.producer.stop()


def _epoch(stamp: str) -> float:
    """Zendesk's timestamp (ISO 8601), in seconds; 0 when it is none."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def build(settings: Settings) -> Helpdesk:
    if not (settings.zendesk_subdomain and settings.zendesk_email and settings.zendesk_api_token):
        raise SystemExit("ZENDESK_SUBDOMAIN, ZENDESK_EMAIL and ZENDESK_API_TOKEN are needed")
    desk = ZendeskDesk(
        settings.zendesk_subdomain,
        settings.zendesk_email,
        settings.zendesk_api_token.get_secret_value(),
        base_url=settings.zendesk_api_base_url,
        timeout_s=settings.provider_timeout_s,
    )
    producer = AiokafkaProducer(settings.kafka_bootstrap_servers, COMPONENT)
    return Helpdesk(settings, desk, producer)


def main() -> None:
    from common.logs import configure_logging

    settings = Settings()
    configure_logging(COMPONENT, settings.log_level, settings.log_format)
    helpdesk_ = build(settings)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await helpdesk_.run(stop)

    asyncio.run(serve())


__all__ = ["Helpdesk", "build", "main"]
