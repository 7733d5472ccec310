"""The faust worker of risk_detector.

Two agents. `rekey` reads the order-keyed topics (orders, returns), remembers each
order's customer in the `order_customers` table and forwards the facts the profile
needs, unchanged, to `<group>-customer-facts` keyed by customer_id. `assess` reads
every customer-keyed topic (incidents, feedback, customers and those facts) into the
`profiles` table and emits outreach requests and hand-offs.

Time without facts (a customer who stops ordering) reaches `assess` as tick records on
`<group>-ticks` (common.deadlines): `rhythm_deadlines` holds each
customer's next rhythm check, the index over it is rebuilt after every assignment. A
tick is only sent for a moment that no order fact still on its way from `rekey` to
`assess` could precede, so a replay judges silence on the same facts as the live run.

`spend_quantiles` keeps the running P² estimate of 365-day spend, one per partition
(keyed by the partition number), so the high-value test survives restarts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import faust
from aiohttp import web

from common import tracing
from common.admin import ensure_topics
from common.batched_input import deliver_in_batches
from common.clock import Clock, WallClock, WatermarkClock
from common.deadlines import DeadlineIndex, DeadlineSchedule
from common.envelope import CloudEvent, InvalidEvent
from common.kafka import DeadLetters, InputMessage, MessageProcessor
from common.logs import configure_logging, get_logger
from common.metrics import EVENTS_CONSUMED, ORDERS_FORGOTTEN
from common.ops_http import Heartbeat, OpsServer, operator_only
from common.settings import secret_value
from common.streaming import (
    FaustProducer,
    InputProgress,
    PartitionHolds,
    caught_up,
    changelog_specs,
    create_app,
    input_message,
    raw_topic,
    run_worker,
    use_event_loop,
)
from common.topics import WATERMARKS_RETENTION_MS, TopicSpec
from services.risk_detector.config import Settings
from services.risk_detector.domain.profile import Profile
from services.risk_detector.domain.quantile import P2Quantile
from services.risk_detector.entrypoints.event_clock import EventClockRunner
from services.risk_detector.handlers import CUSTOMER_HEADER, Outcome, RiskDetector

SERVICE = "risk_detector"
FORWARDED = frozenset({"order.placed", "order.cancelled", "return.requested"})
log = get_logger(__name__)


class RiskRuntime:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        if clock is None and settings.outreach_clock == "event":
            clock = WatermarkClock()
        self.clock = clock or settings.make_clock()
        self.topics = settings.topics
        self.detector = RiskDetector(settings.policy(), self.topics)
        event_clock = isinstance(self.clock, WatermarkClock)
        # On the event clock a rebalance waits for the batch in hand (entrypoints/event_clock.py).
        self.app = create_app(
            SERVICE, settings, store=settings.store, stream_wait_empty=event_clock
        )
        self.facts_name = f"{self.app.conf.id}-customer-facts"
        self.ticks_name = f"{self.app.conf.id}-ticks"
        # An erased customer's orders, keyed and partitioned like the order topics, so
        # that `rekey` forgets them in `order_customers` (which `assess` cannot write).
        self.forget_name = forget_topic(self.app)
        schema: faust.Schema[Any, Any] = faust.Schema(
            key_type=str, key_serializer="raw", value_serializer="json"
        )

        def table(name: str) -> Any:
            # JSON values keyed by a string, one partition per input partition, the
            # RocksDB sizes from the settings.
            return self.app.Table(
                name,
                default=None,
                schema=schema,
                partitions=settings.topic_partitions,
                options=settings.table_options(),
            )

        self.order_customers = table("order_customers")
        self.profiles = table("profiles")
        self.rhythm_deadlines = table("rhythm_deadlines")
        self.spend_quantiles = table("spend_quantiles")
        # On the wall clock, silence is judged only once the input is read: the order
        # facts of this worker's order partitions and the customer partition's own.
        self.progress = InputProgress(
            self.app,
            {self.facts_name},
            upstream=frozenset({settings.topics.orders, settings.topics.returns}),
            also_admit=frozenset(
                {settings.topics.incidents, settings.topics.feedback, settings.topics.customers}
            ),
            service=SERVICE,
        )
        self.schedule = DeadlineSchedule(
            self.app,
            self.rhythm_deadlines,
            None if event_clock else self.ticks_name,
            gate=self.progress if isinstance(self.clock, WallClock) else None,
        )
        self.schedule.export_metrics(SERVICE, lambda: self._horizon().timestamp())
        # `order_customers` entries expire `order_memory_days` after the order's latest
        # fact: an index of expiry moments per partition, rebuilt from the table after an
        # assignment, pruned a few keys at a time by `rekey` (a table changes only while
        # a record of the same partition is handled).
        self.order_memory_s = settings.order_memory_days * 86400
        self.order_expiry = DeadlineIndex()
        self.order_expiry_ready = False
        self.quantiles: dict[int, P2Quantile] = {}
        # Order facts sent by `rekey` to a facts partition of this worker and not yet
        # handled by `assess`, by event id, at their event time.
        self.facts_in_flight = DeadlineIndex()
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
            checks={
                "kafka_assignment": lambda: self.assigned,
                "tables_recovered": lambda: self.schedule.ready,
            },
            routes=[
                web.get(
                    "/customers/{customer_id}/explain",
                    operator_only(secret_value(settings.operator_token), self._explain),
                )
            ],
        )
        self.runner: EventClockRunner | None = None
        if isinstance(self.clock, WatermarkClock):
            self.runner = EventClockRunner(self, self.clock)
        self._wire()

    def _wire(self) -> None:
        app = self.app
        if self.runner is not None:
            # Short fetch rounds, as orders_watcher's: a request to the broker for end
            # offsets (common/aligned.py) waits behind a fetch in flight.
            deliver_in_batches(
                app,
                raw_topic(app, *sorted(self.runner.topics), self.forget_name),
                self.runner.on_batch,
                idle_s=self.settings.tick_interval_s,
                fetch_min_bytes=65_536,
                fetch_max_wait_s=0.02,
            )
        else:
            self._wire_agents()

        @app.timer(interval=self.settings.tick_interval_s)
        async def tick_timer() -> None:
            self.heartbeat.beat()
            self.schedule.check_recovered()
            if self.schedule.ready and not self.order_expiry_ready:
                # Tables recover together: the deadline table's readiness says the order
                # table is back too.
                self._rebuild_order_expiry()
            await self._request_ticks()

        @app.task
        async def start_ops() -> None:
            await self.ops.start()

        async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
            self.assigned = True
            self.schedule.on_assigned()
            self.quantiles.clear()
            self.facts_in_flight.clear()
            self.holds.on_assigned(assigned)
            self.progress.on_assigned(assigned)
            self.order_expiry_ready = False
            self.order_expiry.clear()
            if self.runner is not None:
                self.runner.on_assigned(assigned)

        async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
            self.schedule.on_revoked()
            self.quantiles.clear()
            self.facts_in_flight.clear()
            self.holds.on_revoked()
            self.progress.on_revoked()
            self.order_expiry_ready = False
            self.order_expiry.clear()
            if self.runner is not None:
                self.runner.on_revoked()

        app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]

    def _wire_agents(self) -> None:
        """On the wall clock: two agents, `rekey` and `assess`, and ticks."""
        app = self.app
        order_keyed = raw_topic(app, self.topics.orders, self.topics.returns, self.forget_name)
        customer_keyed = raw_topic(
            app,
            self.topics.incidents,
            self.topics.feedback,
            self.topics.customers,
            self.facts_name,
            self.ticks_name,
        )

        @app.agent(order_keyed, name=f"{SERVICE}.rekey")
        async def rekey(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                self.heartbeat.beat()
                msg = input_message(event)
                if msg.topic == self.forget_name:
                    self.forget_order(msg)
                    continue
                if not await self.progress.admit(event.message, msg):
                    continue  # read again later, or read already
                await self.holds.ready()
                await self.rekeyer.process(msg, caught_up=caught_up(app, msg))
                self.progress.handled(msg)

        @app.agent(customer_keyed, name=f"{SERVICE}.assess")
        async def assess(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                self.heartbeat.beat()
                msg = input_message(event)
                if msg.topic == self.ticks_name:
                    await self._on_tick(msg.partition)
                    continue
                if not await self.progress.admit(event.message, msg):
                    continue
                await self.holds.ready()
                await self.assessor.process(msg, caught_up=caught_up(app, msg))
                self.progress.handled(msg)
                await self._request_ticks()

    async def _on_order_fact(self, msg: InputMessage, event: CloudEvent) -> None:
        data = event.data
        order_id = data.get("order_id")
        if not isinstance(order_id, str):
            raise InvalidEvent(f"{event.type} has no order_id", code="bad_data")
        entry = self.order_customers.get(order_id)
        customer_id = data.get("customer_id")
        if not (isinstance(customer_id, str) and customer_id):
            customer_id = _remembered_customer(entry)
        if customer_id:
            self._remember_order(order_id, entry, customer_id, msg.partition, event.time)
        self._forget_expired_orders(msg.partition)
        if event.type not in FORWARDED:
            return
        if not customer_id:
            EVENTS_CONSUMED.labels(SERVICE, msg.topic, "unknown_order").inc()
            return
        headers = [(k, v) for k, v in msg.headers if k != CUSTOMER_HEADER]
        headers.append((CUSTOMER_HEADER, customer_id.encode()))
        headers = tracing.with_trace_headers(headers)
        key = customer_id.encode()
        # The partition the default partitioner would pick, chosen explicitly so that we
        # know whether our own `assess` will read it (and must wait for it before ticks).
        partition = customer_partition(key, self.settings.topic_partitions)
        if self.runner is not None:
            await self.runner.forward(key, msg.value or b"", headers, partition)
            return
        if self._assigned_here(self.facts_name, partition):
            self.facts_in_flight.set(event.id, 0, event.time.timestamp())
        await self.app.producer.send_and_wait(
            self.facts_name,
            key,
            msg.value or b"",
            partition=partition,
            timestamp=None,
            headers=headers,
        )

    def forget_order(self, msg: InputMessage) -> None:
        order_id = (msg.key or b"").decode(errors="replace")
        if order_id and self.order_customers.get(order_id) is not None:
            self.order_customers.pop(order_id, None)
            self.order_expiry.set(order_id, msg.partition, None)
            ORDERS_FORGOTTEN.inc()

    async def _forget_orders_of(self, profile: Profile) -> None:
        """Before an erased customer's profile goes: tell `rekey` to forget their orders."""
        for order_id in sorted({o.order_id for o in profile.orders}):
            key = order_id.encode()
            await self.app.producer.send_and_wait(
                self.forget_name,
                key,
                b"",
                partition=customer_partition(key, self.settings.topic_partitions),
                timestamp=None,
                headers=None,
            )

    def _remember_order(
        self, order_id: str, entry: Any, customer_id: str, partition: int, at: datetime
    ) -> None:
        """Remember (or refresh) the order's customer (`entry`: what the table holds now);
        the table is written when the customer changes or the order's latest fact moved by
        more than a day."""
        moment = at.timestamp()
        last = entry.get("at", 0.0) if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or entry.get("c") != customer_id
            or last is None
            or moment > last + 86400
        ):
            self.order_customers[order_id] = {"c": customer_id, "at": moment, "p": partition}
            last = moment
        self.order_expiry.set(order_id, partition, max(last, moment) + self.order_memory_s)

    def _forget_expired_orders(self, partition: int, limit: int = 8) -> None:
        if not self.order_expiry_ready:
            return
        now = self.clock.now().timestamp()
        for order_id in self.order_expiry.pop_due(partition, now, limit):
            entry = self.order_customers.get(order_id)
            if isinstance(entry, dict) and float(entry["at"]) + self.order_memory_s <= now:
                self.order_customers.pop(order_id, None)
                ORDERS_FORGOTTEN.inc()

    def _rebuild_order_expiry(self) -> None:
        self.order_expiry.clear()
        for key, entry in self.order_customers.items():
            if isinstance(entry, dict):
                order_id = key.decode() if isinstance(key, bytes) else key
                at = float(entry["at"]) + self.order_memory_s
                self.order_expiry.set(order_id, int(entry["p"]), at)
        self.order_expiry_ready = True
        log.info("order_memory_rebuilt", orders=len(self.order_expiry))

    def _assigned_here(self, topic: str, partition: int) -> bool:
        from faust.types import TP

        return TP(topic, partition) in self.app.consumer.assignment()

    def _horizon(self) -> datetime:
        """How far silence may be judged: the clock, but never past an order fact still
        on its way from `rekey` to `assess` (it could end the silence)."""
        now = self.clock.now()
        waiting = self.facts_in_flight.earliest(0)
        if waiting is not None:
            now = min(now, datetime.fromtimestamp(waiting, UTC))
        return now

    async def _request_ticks(self) -> None:
        await self.schedule.request_ticks(self._horizon().timestamp())

    def _quantile(self, partition: int) -> P2Quantile:
        estimate = self.quantiles.get(partition)
        if estimate is None:
            raw = self.spend_quantiles.get(str(partition))
            estimate = P2Quantile.from_dict(raw) if raw else self.detector.new_quantile()
            self.quantiles[partition] = estimate
        return estimate

    async def _on_customer_fact(self, msg: InputMessage, event: CloudEvent) -> None:
        if msg.topic == self.facts_name:
            self.facts_in_flight.set(event.id, 0, None)
        customer_id = _customer_of(msg, event)
        raw = self.profiles.get(customer_id)
        profile = Profile.model_validate(raw) if raw else None
        quantile = self._quantile(msg.partition)
        outcome = self.detector.handle(profile, customer_id, event, quantile)
        if outcome.duplicate:
            EVENTS_CONSUMED.labels(SERVICE, msg.topic, "duplicate").inc()
            return
        if outcome.erased and profile is not None:
            await self._forget_orders_of(profile)
        await self._apply(customer_id, msg.partition, outcome)
        if outcome.quantile_changed:
            self.spend_quantiles[str(msg.partition)] = quantile.to_dict()

    async def _on_tick(self, partition: int) -> None:
        horizon = self._horizon()
        for customer_id in self.schedule.due(partition, horizon.timestamp()):
            await self.check_rhythm(customer_id, partition, horizon)

    async def check_rhythm(self, customer_id: str, partition: int, now: datetime) -> None:
        """The customer's rhythm check is due: judge it at `now`."""
        raw = self.profiles.get(customer_id)
        if not raw:
            self.schedule.schedule(customer_id, partition, None)
            return
        profile = Profile.model_validate(raw)
        outcome = self.detector.handle_tick(profile, now, self._quantile(partition))
        await self._apply(customer_id, partition, outcome)

    async def _apply(self, customer_id: str, partition: int, outcome: Outcome) -> None:
        if self.runner is None:
            await self.producer.emit(SERVICE, outcome.records)
        else:
            # Stamped with the moment decided; acknowledged with the batch's outputs.
            await self.producer.emit(
                SERVICE, outcome.records, acks=self.runner.acks, at=self.clock.now()
            )
        if outcome.profile is None:
            self.profiles.pop(customer_id, None)
            self.schedule.schedule(customer_id, partition, None)
            return
        self.profiles[customer_id] = outcome.profile.model_dump(mode="json")
        due = outcome.rhythm_due.timestamp() if outcome.rhythm_due else None
        self.schedule.schedule(customer_id, partition, due)

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


def customer_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), the one upstream producers use for the
    customer-keyed topics, so a customer's facts share their partition number."""
    from kafka.partitioner.default import murmur2

    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def _remembered_customer(entry: Any) -> str | None:
    """The customer an `order_customers` entry names."""
    if isinstance(entry, dict):
        return str(entry["c"])
    return entry if isinstance(entry, str) else None  # written before expiry existed


def forget_topic(app: faust.App) -> str:
    return f"{app.conf.id}-order-forget"


def ensure_own_topics(settings: Settings, facts_name: str, ticks_name: str, app: faust.App) -> None:
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
    specs.append(TopicSpec(ticks_name, settings.topic_partitions, retention_ms=3600_000))
    specs.append(
        TopicSpec(forget_topic(app), settings.topic_partitions, retention_ms=7 * 24 * 3600_000)
    )
    specs.append(TopicSpec(t.deadletter(SERVICE), 1, retention_ms=30 * 24 * 3600 * 1000))
    if settings.outreach_clock == "event":
        specs.append(TopicSpec(t.watermarks, 1, retention_ms=WATERMARKS_RETENTION_MS))
    specs += changelog_specs(app, settings.topic_partitions)
    ensure_topics(settings.kafka_bootstrap_servers, specs)


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    settings.configure_tracing(SERVICE)
    use_event_loop(settings.event_loop)
    runtime = RiskRuntime(settings)
    ensure_own_topics(settings, runtime.facts_name, runtime.ticks_name, runtime.app)
    log.info("starting", clock=settings.outreach_clock, store=settings.store)
    run_worker(runtime.app, SERVICE, settings)
