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

from common.clock import WatermarkClock
from common.envelope import CloudEvent, InvalidEvent
from common.kafka import Outgoing
from common.records import InputMessage
from replay.timeline import Deadlines, Timeline
from services.orders_watcher.config import Settings as WatcherSettings
from services.orders_watcher.domain.model import OrderState
from services.orders_watcher.handlers import OrdersWatcher, Outcome
from services.preferences.adapters.change_feed import ChangeFeed
from services.preferences.adapters.memory_store import InMemoryPreferencesStore
from services.preferences.domain.validation import FieldViolation
from services.preferences.handlers import Preferences
from services.risk_detector.config import Settings as RiskSettings
from services.risk_detector.domain.profile import Profile
from services.risk_detector.domain.quantile import P2Quantile
from services.risk_detector.handlers import Outcome as RiskOutcome
from services.risk_detector.handlers import RiskDetector
from services.risk_detector.runtime import FORWARDED, customer_of, customer_partition

#: Hands a decided record on: (its moment in seconds, the record).
Emit = Callable[[float, Outgoing], None]


def moment(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


class DeadLetters(Counter[tuple[str, str]]):
    """What a replay would have dead-lettered: (service, code) → how many."""


class WatcherStage:
    """orders_watcher: each order's state, its next deadline, its incidents."""

    def __init__(
        self, settings: WatcherSettings, timeline: Timeline, emit: Emit, dead: DeadLetters
    ) -> None:
        self.handler = OrdersWatcher(settings.detection(), settings.topics)
        self.timeline, self.emit, self.dead = timeline, emit, dead
        self.states: dict[str, OrderState] = {}
        self.deadlines = Deadlines()
        self.clock = WatermarkClock()

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
            self._keep(order_id, outcome)

    def on_deadline(self, order_id: str, at: float) -> None:
        state = self.states.get(order_id)
        if state is None:
            return
        self.clock.advance_to(moment(at))
        self._keep(order_id, self.handler.handle_tick(state, self.clock.now()))

    def _keep(self, order_id: str, outcome: Outcome) -> None:
        now = self.clock.now().timestamp()
        for record in outcome.records:
            self.emit(now, record)
        for rejected in outcome.dead_letters:
            self.dead["orders_watcher", rejected.code] += 1
        if outcome.state is None:
            self.states.pop(order_id, None)
            self.timeline.schedule(self.deadlines, order_id, None, self)
            return
        self.states[order_id] = outcome.state
        at = outcome.deadline.timestamp() if outcome.deadline else None
        self.timeline.schedule(self.deadlines, order_id, at, self)


class RiskStage:
    """risk_detector: the order → customer memory (its `rekey`), each customer's profile
    and rhythm check (its `assess`), one spend estimate per customer partition."""

    def __init__(
        self,
        settings: RiskSettings,
        timeline: Timeline,
        emit: Emit,
        dead: DeadLetters,
        partitions: int,
    ) -> None:
        self.detector = RiskDetector(settings.policy(), settings.topics)
        self.order_keyed = frozenset({settings.topics.orders, settings.topics.returns})
        self.timeline, self.emit, self.dead = timeline, emit, dead
        self.partitions = partitions
        self.memory_s = settings.order_memory_days * 86400
        self.orders: dict[str, tuple[str, float]] = {}  # order → (customer, its latest fact)
        self.profiles: dict[str, Profile] = {}
        self.quantiles: dict[int, P2Quantile] = {}
        self._partition: dict[str, int] = {}
        self.deadlines = Deadlines()
        self.clock = WatermarkClock()

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
        profile = self.profiles.get(customer_id)
        outcome = self.detector.handle(profile, customer_id, event, self._quantile(customer_id))
        if outcome.duplicate:
            return
        if outcome.erased and profile is not None:
            for order in profile.orders:
                self.orders.pop(order.order_id, None)
        self._keep(customer_id, outcome)

    def on_deadline(self, customer_id: str, at: float) -> None:
        profile = self.profiles.get(customer_id)
        if profile is None:
            return
        self.clock.advance_to(moment(at))
        outcome = self.detector.handle_tick(profile, self.clock.now(), self._quantile(customer_id))
        self._keep(customer_id, outcome)

    def _keep(self, customer_id: str, outcome: RiskOutcome) -> None:
        now = self.clock.now().timestamp()
        for record in outcome.records:
            self.emit(now, record)
        if outcome.state is None:
            self.profiles.pop(customer_id, None)
            self.timeline.schedule(self.deadlines, customer_id, None, self)
            return
        self.profiles[customer_id] = outcome.state
        at = outcome.deadline.timestamp() if outcome.deadline else None
        self.timeline.schedule(self.deadlines, customer_id, at, self)

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


__all__ = ["DeadLetters", "PreferencesStage", "RiskStage", "WatcherStage", "moment"]
