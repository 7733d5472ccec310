"""orders_watcher, risk_detector and preferences in one process: each service's own
handlers (the code its stream runtime calls for every record and deadline), with its
state in dictionaries instead of tables, and its outputs handed to the timeline
(timeline.py) stamped with the moment they were decided, as the services' producers
stamp them on the event clock.

What the runtimes do around the handlers and what a replay does not need — tables and
their changelogs, batches, marks, acknowledgements, rebalances — is left out; what
changes a decision is kept: the order of records and deadlines, each order's and
customer's state, the per-partition spend estimate (partitioned as the shop's producers
partition customers), the memory of which customer an order belongs to (and its
expiry), orphans held and released."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Generic, TypeVar

from common import handling
from common.clock import WatermarkClock
from common.envelope import CloudEvent, InvalidEvent
from common.kafka import Outgoing
from common.records import InputMessage
from replay.timeline import Deadlines, Timeline
from services.orders_watcher.config import Settings as WatcherSettings
from services.orders_watcher.domain.model import OrderState
from services.orders_watcher.handlers import OrdersWatcher
from services.preferences.adapters.change_feed import ChangeFeed
from services.preferences.adapters.memory_store import InMemoryPreferencesStore
from services.preferences.domain.validation import FieldViolation
from services.preferences.handlers import Preferences
from services.risk_detector.config import Settings as RiskSettings
from services.risk_detector.domain.profile import Profile
from services.risk_detector.domain.quantile import P2Quantile
from services.risk_detector.handlers import RiskDetector
from services.risk_detector.runtime import FORWARDED, customer_of, customer_partition

#: Hands a decided record on: (its moment in seconds, the record).
Emit = Callable[[float, Outgoing], None]
S = TypeVar("S")


def moment(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


class DeadLetters(Counter[tuple[str, str]]):
    """What a replay would have dead-lettered: (service, code) → how many."""


class KeyedStage(Generic[S]):
    """A service whose state is kept per key (an order, a customer) with each key's next
    deadline on the timeline, on a clock of its own."""

    service = ""

    def __init__(self, timeline: Timeline, emit: Emit, dead: DeadLetters) -> None:
        self.timeline, self.emit, self.dead = timeline, emit, dead
        self.states: dict[str, S] = {}
        self.deadlines = Deadlines()
        self.clock = WatermarkClock()

    def keep(self, key: str, outcome: handling.Outcome[S]) -> None:
        """What a handler decided: its records handed on (stamped now), what it refused
        counted, the key's state and next deadline kept (or forgotten)."""
        now = self.clock.now().timestamp()
        for record in outcome.records:
            self.emit(now, record)
        for rejected in outcome.dead_letters:
            self.dead[self.service, rejected.code] += 1
        if outcome.state is None:
            self.states.pop(key, None)
            self.timeline.schedule(self.deadlines, key, None, self)
            return
        self.states[key] = outcome.state
        at = outcome.deadline.timestamp() if outcome.deadline else None
        self.timeline.schedule(self.deadlines, key, at, self)


class WatcherStage(KeyedStage[OrderState]):
    """orders_watcher: each order's state, its next deadline, its incidents."""

    service = "orders_watcher"

    def __init__(
        self, settings: WatcherSettings, timeline: Timeline, emit: Emit, dead: DeadLetters
    ) -> None:
        super().__init__(timeline, emit, dead)
        self.handler = OrdersWatcher(settings.detection(), settings.topics)

    def on_record(self, at: float, msg: InputMessage, event: CloudEvent) -> None:
        self.clock.advance_to(moment(at))
        try:
            order_id = self.handler.order_id_of(msg, event)
            outcome = self.handler.handle_event(
                self.states.get(order_id), msg, event, self.clock.now()
            )
        except InvalidEvent as exc:
            self.dead["orders_watcher", exc.code] += 1
            return
        if not outcome.duplicate:
            self.keep(order_id, outcome)

    def on_deadline(self, order_id: str, at: float) -> None:
        state = self.states.get(order_id)
        if state is None:
            return
        self.clock.advance_to(moment(at))
        self.keep(order_id, self.handler.handle_tick(state, self.clock.now()))


class RiskStage(KeyedStage[Profile]):
    """risk_detector: the order → customer memory (its `rekey`), each customer's profile
    and rhythm check (its `assess`), one spend estimate per customer partition."""

    service = "risk_detector"

    def __init__(
        self,
        settings: RiskSettings,
        timeline: Timeline,
        emit: Emit,
        dead: DeadLetters,
        partitions: int,
    ) -> None:
        super().__init__(timeline, emit, dead)
        self.detector = RiskDetector(settings.policy(), settings.topics)
        self.order_keyed = frozenset({settings.topics.orders, settings.topics.returns})
        self.partitions = partitions
        self.memory_s = settings.order_memory_days * 86400
        self.orders: dict[str, tuple[str, float]] = {}  # order → (customer, its latest fact)
        self.quantiles: dict[int, P2Quantile] = {}
        self._partition: dict[str, int] = {}

    def on_record(self, at: float, msg: InputMessage, event: CloudEvent) -> None:
        self.clock.advance_to(moment(at))
        try:
            if msg.topic in self.order_keyed:
                self._order_fact(msg, event)
            else:
                self._assess(customer_of(msg, event), event)
        except InvalidEvent as exc:
            self.dead["risk_detector", exc.code] += 1

    def _order_fact(self, msg: InputMessage, event: CloudEvent) -> None:
        data = event.data
        order_id = data.get("order_id")
        if not isinstance(order_id, str):
            raise InvalidEvent(f"{event.type} has no order_id", code="bad_data")
        now = self.clock.now().timestamp()
        known = self.orders.get(order_id)
        if known is not None and known[1] + self.memory_s <= now:
            known = None  # forgotten: its latest fact is older than the memory
        customer_id = data.get("customer_id")
        if not (isinstance(customer_id, str) and customer_id):
            customer_id = known[0] if known else None
        if customer_id:
            latest = known[1] if known and known[0] == customer_id else 0.0
            self.orders[order_id] = (customer_id, max(latest, event.time.timestamp()))
        if event.type in FORWARDED and customer_id:
            self._assess(customer_id, event)

    def _assess(self, customer_id: str, event: CloudEvent) -> None:
        profile = self.states.get(customer_id)
        outcome = self.detector.handle(profile, customer_id, event, self._quantile(customer_id))
        if outcome.duplicate:
            return
        if outcome.erased and profile is not None:
            for order in profile.orders:
                self.orders.pop(order.order_id, None)
        self.keep(customer_id, outcome)

    def on_deadline(self, customer_id: str, at: float) -> None:
        profile = self.states.get(customer_id)
        if profile is None:
            return
        self.clock.advance_to(moment(at))
        outcome = self.detector.handle_tick(profile, self.clock.now(), self._quantile(customer_id))
        self.keep(customer_id, outcome)

    def _quantile(self, customer_id: str) -> P2Quantile:
        partition = self._partition.get(customer_id)
        if partition is None:
            partition = customer_partition(customer_id.encode(), self.partitions)
            self._partition[customer_id] = partition
        estimate = self.quantiles.get(partition)
        if estimate is None:
            estimate = self.quantiles[partition] = self.detector.new_quantile()
        return estimate


class PreferencesStage:
    """preferences: the customers' records and opt-outs, applied at their moments, in
    memory; outreach reads its contact plans from it (outreach.py)."""

    def __init__(self, default_order: tuple[str, ...], dead: DeadLetters) -> None:
        self.store = InMemoryPreferencesStore(pseudonym_salt="rehearsal")
        self.preferences = Preferences(self.store, ChangeFeed(), default_order)
        self.dead = dead

    async def on_record(self, customers: bool, event: CloudEvent) -> None:
        try:
            if customers:
                await self.preferences.on_customer_event(event)
            else:
                await self.preferences.on_optout_event(event)
        except InvalidEvent as exc:
            self.dead["preferences", exc.code] += 1
        except FieldViolation:
            self.dead["preferences", "bad_data"] += 1


__all__ = [
    "DeadLetters",
    "KeyedStage",
    "PreferencesStage",
    "RiskStage",
    "WatcherStage",
    "moment",
]
