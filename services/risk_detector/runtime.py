"""risk_detector's service layer: facts through the handlers, with its tables and the
producer, and the passing of time (wired to faust in entrypoints/stream.py, built by
bootstrap.py).

On the wall clock two agents share the work. `rekey` reads the order-keyed topics
(orders, returns), remembers each order's customer in the `order_customers` table and
forwards the facts the profile needs, unchanged, to `<group>-customer-facts` keyed by
customer_id. `assess` reads every customer-keyed topic (incidents, feedback, customers
and those facts) into the `profiles` table and emits outreach requests and hand-offs.
Time without facts (a customer who stops ordering) reaches `assess` as tick records on
`<group>-ticks` (common.deadlines): `rhythm_deadlines` holds each customer's next rhythm
check, the index over it is rebuilt after every assignment. A tick is only sent for a
moment that no order fact still on its way from `rekey` to `assess` could precede, so
silence is judged on the facts the live run would have. On the event clock one runner
reads every input in arrival order instead (event_clock.py).

`spend_quantiles` keeps the running P² estimate of 365-day spend, one per partition
(keyed by the partition number), so the high-value test survives restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust
from aiohttp import web

from common import tracing
from common.clock import Clock, WatermarkClock
from common.deadlines import DeadlineIndex, DeadlineSchedule
from common.envelope import CloudEvent, InvalidEvent
from common.kafka import DeadLetters, InputMessage, MessageProcessor, ProducerPort
from common.logs import get_logger
from common.metrics import EVENTS_CONSUMED, ORDERS_FORGOTTEN
from common.ops_http import FORWARDED_BY, forward_get, operator_only
from common.settings import secret_value
from common.streaming import (
    InputProgress,
    PartitionHolds,
    StreamWorker,
    advertised_url,
    caught_up,
    input_message,
    owner_of,
)
from services.risk_detector.config import Settings, customer_topics
from services.risk_detector.domain.profile import Profile
from services.risk_detector.domain.quantile import P2Quantile
from services.risk_detector.event_clock import EventClockRunner
from services.risk_detector.handlers import CUSTOMER_HEADER, Outcome, RiskDetector

SERVICE = "risk_detector"
FORWARDED = frozenset({"order.placed", "order.cancelled", "return.requested"})
log = get_logger(__name__)


@dataclass(frozen=True)
class RiskPorts:
    """What the runtime works with, built by bootstrap.py: the faust app and its four
    tables, its own topics' names (`facts_name`, `ticks_name`, `forget_name`), the
    producer, the clock, how far each input is read (`progress`) and the schedule of
    rhythm checks."""

    app: faust.App
    clock: Clock
    producer: ProducerPort
    order_customers: Any
    profiles: Any
    rhythm_deadlines: Any
    spend_quantiles: Any
    progress: InputProgress
    schedule: DeadlineSchedule
    facts_name: str
    ticks_name: str
    forget_name: str


class RiskRuntime(StreamWorker):
    def __init__(self, settings: Settings, ports: RiskPorts) -> None:
        t = settings.topics
        self.clock = ports.clock
        super().__init__(
            (settings.http_host, settings.http_port),
            ports.app,
            ports.schedule,
            PartitionHolds(
                ports.app,
                self.clock,
                {t.orders, t.returns, ports.facts_name, *customer_topics(t)},
            ),
            ports.progress,
            routes=[
                web.get(
                    "/customers/{customer_id}/explain",
                    operator_only(secret_value(settings.operator_token), self._explain),
                )
            ],
        )
        self.settings = settings
        self.topics = t
        self.producer = ports.producer
        self.order_customers = ports.order_customers
        self.profiles = ports.profiles
        self.rhythm_deadlines = ports.rhythm_deadlines
        self.spend_quantiles = ports.spend_quantiles
        self.facts_name, self.ticks_name = ports.facts_name, ports.ticks_name
        # An erased customer's orders, keyed and partitioned like the order topics, so
        # that `rekey` forgets them in `order_customers` (which `assess` cannot write).
        self.forget_name = ports.forget_name
        self.detector = RiskDetector(settings.policy(), self.topics)
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
        self.deadletters = DeadLetters(self.producer, self.topics.deadletter(SERVICE), SERVICE)
        self.rekeyer = MessageProcessor(SERVICE, self._on_order_fact, self.deadletters, self.clock)
        self.assessor = MessageProcessor(
            SERVICE, self._on_customer_fact, self.deadletters, self.clock
        )
        self.runner: EventClockRunner | None = None
        if isinstance(self.clock, WatermarkClock):
            self.runner = EventClockRunner(self, self.clock)

    # --- the assignment and the passing of time (wired in entrypoints/stream.py) --------

    def on_assigned(self, assigned: Any) -> None:
        super().on_assigned(assigned)
        self._forget_partition_state()
        if self.runner is not None:
            self.runner.on_assigned(assigned)

    def on_revoked(self) -> None:
        super().on_revoked()
        self._forget_partition_state()
        if self.runner is not None:
            self.runner.on_revoked()

    def _forget_partition_state(self) -> None:
        self.quantiles.clear()
        self.facts_in_flight.clear()
        self.order_expiry_ready = False
        self.order_expiry.clear()

    async def on_timer(self) -> None:
        self.heartbeat.beat()
        self.schedule.check_recovered()
        if self.schedule.ready and not self.order_expiry_ready:
            # Tables recover together: the deadline table's readiness says the order
            # table is back too.
            self._rebuild_order_expiry()
        await self._request_ticks()

    # --- the wall clock's agents ---------------------------------------------------------

    async def rekey(self, event: Any) -> None:
        """An order-keyed record (or an order to forget)."""
        self.heartbeat.beat()
        msg = input_message(event)
        if msg.topic == self.forget_name:
            self.forget_order(msg)
            return
        if not await self.progress.admit(event.message, msg):
            return  # read again later, or read already
        await self.holds.ready()
        await self.rekeyer.process(msg, caught_up=caught_up(self.app, msg))
        self.progress.handled(msg)

    async def assess(self, event: Any) -> None:
        """A customer-keyed record, or a tick."""
        self.heartbeat.beat()
        msg = input_message(event)
        if msg.topic == self.ticks_name:
            await self._on_tick(msg.partition)
            return
        if not await self.progress.admit(event.message, msg):
            return
        await self.holds.ready()
        await self.assessor.process(msg, caught_up=caught_up(self.app, msg))
        self.progress.handled(msg)
        await self._request_ticks()

    # --- facts ---------------------------------------------------------------------------

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
        customer_id = customer_of(msg, event)
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
        if outcome.state is None:
            self.profiles.pop(customer_id, None)
            self.schedule.schedule(customer_id, partition, None)
            return
        self.profiles[customer_id] = outcome.state.model_dump(mode="json")
        due = outcome.deadline.timestamp() if outcome.deadline else None
        self.schedule.schedule(customer_id, partition, due)

    async def _explain(self, request: web.Request) -> web.Response:
        customer_id = request.match_info["customer_id"]
        raw = self.profiles.get(customer_id)
        if not raw:
            owner = owner_of(self.app, "profiles", customer_id)
            here = advertised_url(self.settings)
            if owner and owner != here and FORWARDED_BY not in request.headers:
                # Another replica holds this customer's partition: ask it.
                return await forward_get(owner, request, here)
            return web.json_response(
                {"error": "unknown customer", "customer_id": customer_id}, status=404
            )
        profile = Profile.model_validate(raw)
        now = max(self.clock.now(), profile.last_event_at or self.clock.now())
        return web.json_response(self.detector.explain(profile, now))


def customer_of(msg: InputMessage, event: CloudEvent) -> str:
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


__all__ = [
    "SERVICE",
    "RiskPorts",
    "RiskRuntime",
    "customer_of",
    "customer_partition",
    "forget_topic",
]
