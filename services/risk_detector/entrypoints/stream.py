"""The faust worker of risk_detector.

Two agents. `rekey` reads the order-keyed topics (orders, returns), remembers each
order's customer in the `order_customers` table and forwards the facts the profile
needs, unchanged, to `<group>-customer-facts` keyed by customer_id. `assess` reads
every customer-keyed topic (incidents, feedback, customers and those facts) into the
`profiles` table and emits outreach requests and hand-offs.
"""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web

from common import tracing
from common.admin import ensure_topics
from common.clock import Clock
from common.envelope import CloudEvent, InvalidEvent
from common.kafka import DeadLetters, InputMessage, MessageProcessor
from common.logs import configure_logging, get_logger
from common.metrics import EVENTS_CONSUMED
from common.ops_http import Heartbeat, OpsServer
from common.streaming import (
    FaustProducer,
    PartitionHolds,
    caught_up,
    changelog_specs,
    create_app,
    input_message,
    raw_topic,
    run_worker,
)
from common.topics import TopicSpec
from services.risk_detector.config import Settings
from services.risk_detector.domain.profile import Profile
from services.risk_detector.handlers import CUSTOMER_HEADER, RiskDetector

SERVICE = "risk_detector"
FORWARDED = frozenset({"order.placed", "order.cancelled", "return.requested"})
log = get_logger(__name__)


class RiskRuntime:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or settings.make_clock()
        self.topics = settings.topics
        self.detector = RiskDetector(settings.policy(), self.topics)
        self.app = create_app(SERVICE, settings, store=settings.store)
        self.facts_name = f"{self.app.conf.id}-customer-facts"
        schema: faust.Schema[Any, Any] = faust.Schema(
            key_type=str, key_serializer="raw", value_serializer="json"
        )
        self.order_customers = self.app.Table(
            "order_customers", default=None, schema=schema, partitions=settings.topic_partitions
        )
        self.profiles = self.app.Table(
            "profiles", default=None, schema=schema, partitions=settings.topic_partitions
        )
        self.heartbeat = Heartbeat()
        self.assigned = False
        self.producer = FaustProducer(self.app)
        self.deadletters = DeadLetters(self.producer, self.topics.deadletter(SERVICE), SERVICE)
        self.rekeyer = MessageProcessor(SERVICE, self._on_order_fact, self.deadletters, self.clock)
        self.assessor = MessageProcessor(
            SERVICE, self._on_customer_fact, self.deadletters, self.clock
        )
        t = self.topics
        self.holds = PartitionHolds(
            self.app,
            self.clock,
            {t.orders, t.returns, t.incidents, t.feedback, t.customers, self.facts_name},
        )
        self.ops = OpsServer(
            settings.http_host,
            settings.http_port,
            self.heartbeat,
            checks={"kafka_assignment": lambda: self.assigned},
            routes=[web.get("/customers/{customer_id}/explain", self._explain)],
        )
        self._wire()

    def _wire(self) -> None:
        app = self.app
        order_keyed = raw_topic(app, self.topics.orders, self.topics.returns)
        customer_keyed = raw_topic(
            app, self.topics.incidents, self.topics.feedback, self.topics.customers, self.facts_name
        )

        @app.agent(order_keyed, name=f"{SERVICE}.rekey")
        async def rekey(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                self.heartbeat.beat()
                msg = input_message(event)
                await self.holds.ready()
                await self.rekeyer.process(msg, caught_up=caught_up(app, msg))

        @app.agent(customer_keyed, name=f"{SERVICE}.assess")
        async def assess(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                self.heartbeat.beat()
                msg = input_message(event)
                await self.holds.ready()
                await self.assessor.process(msg, caught_up=caught_up(app, msg))

        @app.timer(interval=1.0)
        async def beat() -> None:
            self.heartbeat.beat()

        @app.task
        async def start_ops() -> None:
            await self.ops.start()

        async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
            self.assigned = True
            self.holds.on_assigned(assigned)

        async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
            self.holds.on_revoked()

        app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    async def _on_order_fact(self, msg: InputMessage, event: CloudEvent) -> None:
        data = event.data
        order_id = data.get("order_id")
        if not isinstance(order_id, str):
            raise InvalidEvent(f"{event.type} has no order_id", code="bad_data")
        customer_id = data.get("customer_id")
        if isinstance(customer_id, str) and customer_id:
            if self.order_customers.get(order_id) != customer_id:
                self.order_customers[order_id] = customer_id
        else:
            customer_id = self.order_customers.get(order_id)
        if event.type not in FORWARDED:
            return
        if not customer_id:
            EVENTS_CONSUMED.labels(SERVICE, msg.topic, "unknown_order").inc()
            return
        headers = [(k, v) for k, v in msg.headers if k != CUSTOMER_HEADER]
        headers.append((CUSTOMER_HEADER, customer_id.encode()))
        headers = tracing.with_trace_headers(headers)
        await self.producer.send(self.facts_name, customer_id.encode(), msg.value or b"", headers)

    async def _on_customer_fact(self, msg: InputMessage, event: CloudEvent) -> None:
        customer_id = _customer_of(msg, event)
        raw = self.profiles.get(customer_id)
        profile = Profile.model_validate(raw) if raw else None
        outcome = self.detector.handle(profile, customer_id, event)
        if outcome.duplicate:
            EVENTS_CONSUMED.labels(SERVICE, msg.topic, "duplicate").inc()
            return
        await self.producer.emit(SERVICE, outcome.records)
        if outcome.profile is None:
            self.profiles.pop(customer_id, None)
        else:
            self.profiles[customer_id] = outcome.profile.model_dump(mode="json")

    async def _explain(self, request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        raw = self.profiles.get(customer_id)
        if not raw:
            return web.json_response(
                {"error": "unknown customer", "customer_id": customer_id}, status=404
            )
        profile = Profile.model_validate(raw)
        now = max(self.clock.now(), profile.last_event_at or self.clock.now())
        return web.json_response(self.detector.explain(profile, now))


def _customer_of(msg: InputMessage, event: CloudEvent) -> str:
    for key, value in msg.headers:
        if key == CUSTOMER_HEADER:
            return value.decode()
    customer_id = event.data.get("customer_id")
    if isinstance(customer_id, str) and customer_id:
        return customer_id
    if msg.key:
        return msg.key.decode(errors="replace")
    raise InvalidEvent(f"{event.type} names no customer", code="bad_data")


def ensure_own_topics(settings: Settings, facts_name: str, app: faust.App) -> None:
    t = settings.topics
    specs = [
        TopicSpec(name, settings.topic_partitions)
        for name in (
            t.orders,
            t.returns,
            t.incidents,
            t.feedback,
            t.customers,
            t.requests,
            t.handoffs,
            facts_name,
        )
    ]
    specs.append(TopicSpec(t.deadletter(SERVICE), 1, retention_ms=30 * 24 * 3600 * 1000))
    specs += changelog_specs(app, settings.topic_partitions)
    ensure_topics(settings.kafka_bootstrap_servers, specs)


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    settings.configure_tracing(SERVICE)
    runtime = RiskRuntime(settings)
    ensure_own_topics(settings, runtime.facts_name, runtime.app)
    log.info("starting", clock=settings.outreach_clock, store=settings.store)
    run_worker(runtime.app, SERVICE, settings)
