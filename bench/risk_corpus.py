"""The input of the risk_detector benchmark: one simulated shop of 1,000 customers, and how
it becomes a shop of 100,000.

One story is generated once and cached: the simulated shop (seed 99, 1,000 customers,
20 orders an hour for 12 days, every order played out to its end), with the incidents
orders_watcher would publish for it, found by the watcher's own rules in this process
(`OrdersWatcher`, `EventClock`, `DeadlineIndex`, as bench/stages.py's hand-written stage
runs them). Of what risk_detector reads (orders, returns, customers, feedback,
incidents), in publishing order:

- the *history*, everything published in the first 10 days, is folded into profiles by
  risk_detector's own domain (`RiskDetector.handle`, then the rhythm checks due by day 10
  through `handle_tick`), so a profile is what the service would have stored: orders and
  spend, incidents, returns, feedback, the requests and hand-offs already made;
- the *load* is what follows, the shop in steady state until orders stop on day 12 (then
  the tail of returns, refunds and feedback), plus one `customer.upserted` again for 10 %
  of the customers at a random moment of those two days (half of them change their
  marketing consent), so that every input topic carries traffic.

A shop of N customers is N / 1,000 *copies* of the story. Copy k appends `.k` to every id
the story makes (customers, orders, returns, events, incidents), so each copy is a set of
different customers living through the same days; copies share their timestamps, and the
load interleaves them event by event. Ids derived by hashing inside a profile (request
and hand-off ids) keep the hash of copy 0's names: risk_detector compares them only with
ids it derives for the same customer and cause, which never recur (a repeat is stopped by
the event id, the incident revision or the quiet period first), so decisions are the same.
"""

from __future__ import annotations

import pickle
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SEED = 99
BASE_CUSTOMERS = 1000
STORY_DAYS = 12
HISTORY_DAYS = 10
ORDERS_PER_HOUR = 20.0
REUPSERT_SHARE = 0.10
VERSION = 1  # of the cached story's format and content

# What risk_detector consumes (unprefixed) and which of it `rekey` forwards to `assess`.
ORDERS, RETURNS, CUSTOMERS, FEEDBACK, INCIDENTS = (
    "commerce.orders",
    "commerce.returns",
    "commerce.customers",
    "commerce.feedback",
    "outreach.incidents",
)
INPUTS = (ORDERS, RETURNS, CUSTOMERS, FEEDBACK, INCIDENTS)
ORDER_KEYED = (ORDERS, RETURNS)
FORWARDED = frozenset({"order.placed", "order.cancelled", "return.requested"})
_WATCHED = ("commerce.orders", "commerce.shipments", "commerce.returns")

# Every id the story makes: the simulator's (`cust-99-00042`, `ord-99-0001234`, ...), the
# watcher's incident ids and derived event ids (uuid5).
_ID = re.compile(
    rb"\b([a-z]+-%d-\d+|inc_[0-9a-f]{24}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b"
    % SEED
)


@dataclass(frozen=True, slots=True)
class Fact:
    """One input record of the load. `units` is the work it makes: 2 when `rekey`
    forwards it to `assess` (the service handles it twice), else 1."""

    topic: str  # without the run's prefix
    key: bytes
    value: bytes
    type: str
    units: int


@dataclass(frozen=True, slots=True)
class ProfileTemplate:
    customer_id: str
    value: bytes  # the `profiles` table's value, as the service serializes it
    rhythm_at: float | None  # the `rhythm_deadlines` entry's moment (None: no entry)


@dataclass
class Story:
    profiles: list[ProfileTemplate]
    orders: list[tuple[str, str]]  # (order_id, customer_id) of every order in the history
    spend_samples: list[tuple[str, float]]  # (customer_id, 365-day spend) per order placed
    load: list[Fact]
    steady: int  # load facts published before orders stop (day 12)
    history_facts: int
    history_requests: int
    split: datetime


def rename(data: bytes, copy: int) -> bytes:
    suffix = b".%d" % copy
    return _ID.sub(lambda m: m.group(1) + suffix, data)


def renamed(name: str, copy: int) -> str:
    return f"{name}.{copy}"


def story(cache_dir: Path) -> Story:
    """The cached story (built in about a minute the first time)."""
    path = cache_dir / f"risk-story-v{VERSION}-seed{SEED}-{BASE_CUSTOMERS}c-{STORY_DAYS}d.pickle"
    if path.exists():
        with path.open("rb") as handle:
            cached: Story = pickle.load(handle)
        return cached
    built = _build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as handle:
        pickle.dump(built, handle, protocol=pickle.HIGHEST_PROTOCOL)
    partial.rename(path)
    return built


def _risk_stream() -> tuple[list[tuple[float, Fact]], datetime, datetime]:
    """The shop's events risk_detector reads, with the watcher's incidents after the event
    (or the passing of time) that raised them; each with its publishing moment."""
    from common.clock import EventClock
    from common.deadlines import DeadlineIndex
    from common.envelope import CloudEvent, InvalidEvent
    from common.kafka import InputMessage
    from common.topics import Topics
    from services.orders_watcher.domain.model import OrderState
    from services.orders_watcher.domain.rules import DetectionConfig
    from services.orders_watcher.handlers import OrdersWatcher, Outcome
    from simulator.shop import Config, Shop

    config = Config(
        seed=SEED,
        customers=BASE_CUSTOMERS,
        orders_per_hour=ORDERS_PER_HOUR,
        duration=timedelta(days=STORY_DAYS),
    )
    watcher = OrdersWatcher(DetectionConfig(), Topics(""))
    clock = EventClock()
    index = DeadlineIndex()
    states: dict[str, OrderState] = {}
    stream: list[tuple[float, Fact]] = []

    def apply(order_id: str, outcome: Outcome, at: float) -> None:
        for record in outcome.records:
            value = record.event.to_bytes()
            stream.append((at, Fact(INCIDENTS, record.key.encode(), value, record.event.type, 1)))
        if outcome.state is None:
            states.pop(order_id, None)
            index.set(order_id, 0, None)
            return
        states[order_id] = outcome.state
        index.set(order_id, 0, outcome.deadline.timestamp() if outcome.deadline else None)

    for emission in Shop(config).events():
        if emission.event is None:
            continue
        at = emission.at.timestamp()
        value = emission.value()
        kind = emission.event.type
        if emission.topic in INPUTS:
            units = 2 if emission.topic in ORDER_KEYED and kind in FORWARDED else 1
            stream.append((at, Fact(emission.topic, emission.key.encode(), value, kind, units)))
        if emission.topic in _WATCHED:
            msg = InputMessage(emission.topic, 0, 0, emission.key.encode(), value)
            try:
                event = CloudEvent.from_bytes(value)
                clock.observe(0, event.time, caught_up=True)
                order_id = watcher.order_id_of(msg, event)
                outcome = watcher.handle_event(states.get(order_id), msg, event, clock.now())
            except InvalidEvent:
                continue
            if not outcome.duplicate:
                apply(order_id, outcome, at)
        now = clock.now()
        for order_id in list(index.pop_due(0, now.timestamp())):
            state = states.get(order_id)
            if state is not None:
                apply(order_id, watcher.handle_tick(state, now), at)
    return stream, config.start, config.start + config.duration


def _reupserts(
    stream: list[tuple[float, Fact]], start: float, end: float
) -> list[tuple[float, Fact]]:
    """10 % of the customers publish their details again during the load (half of them
    with their marketing consent changed)."""
    import orjson

    from common.envelope import new_event

    rnd = random.Random(SEED)
    originals = [orjson.loads(f.value) for _, f in stream if f.type == "customer.upserted"]
    first = {e["data"]["customer_id"]: e for e in reversed(originals)}
    chosen = rnd.sample(sorted(first), k=int(len(first) * REUPSERT_SHARE))
    out = []
    for n, customer_id in enumerate(chosen):
        data = dict(first[customer_id]["data"])
        if n % 2 == 0:
            data["marketing_opt_in"] = not data.get("marketing_opt_in", False)
        moment = start + rnd.random() * (end - start)
        event = new_event(
            type="customer.upserted",
            source="/shop/customers",
            subject=customer_id,
            data=data,
            time=datetime.fromtimestamp(moment, UTC),
            id=f"upd-{SEED}-{n:07d}",
        )
        fact = Fact(CUSTOMERS, customer_id.encode(), event.to_bytes(), "customer.upserted", 1)
        out.append((moment, fact))
    out.sort(key=lambda pair: pair[0])
    return out


def _build() -> Story:
    import heapq

    from faust.serializers import codecs

    from common.envelope import CloudEvent
    from common.topics import Topics
    from services.risk_detector.config import Settings
    from services.risk_detector.domain.profile import Profile
    from services.risk_detector.domain.quantile import P2Quantile
    from services.risk_detector.handlers import RiskDetector
    from services.risk_detector.runtime import customer_partition

    stream, start, orders_end = _risk_stream()
    split = start + timedelta(days=HISTORY_DAYS)
    cut = next(i for i, (at, _) in enumerate(stream) if at >= split.timestamp())
    history = [f for _, f in stream[:cut]]
    tail = stream[cut:]
    extra = _reupserts(stream[:cut], split.timestamp(), orders_end.timestamp())
    merged = list(heapq.merge(tail, extra, key=lambda pair: pair[0]))
    load = [f for _, f in merged]
    steady = sum(1 for at, _ in merged if at < orders_end.timestamp())

    detector = RiskDetector(Settings().policy(), Topics(""))
    profiles: dict[str, Profile] = {}
    quantiles: dict[int, P2Quantile] = {}
    order_customers: dict[str, str] = {}
    samples: list[tuple[str, float]] = []
    requests = 0

    def quantile(customer_id: str) -> P2Quantile:
        partition = customer_partition(customer_id.encode(), 4)
        return quantiles.setdefault(partition, detector.new_quantile())

    # What `rekey` and `assess` would have done with the history, in publishing order.
    for fact in history:
        event = CloudEvent.from_bytes(fact.value)
        data: dict[str, Any] = event.data if isinstance(event.data, dict) else {}
        if fact.topic in ORDER_KEYED:
            order_id = str(data["order_id"])
            customer_id = data.get("customer_id") or order_customers.get(order_id)
            if customer_id:
                order_customers.setdefault(order_id, customer_id)
            if fact.type not in FORWARDED or not customer_id:
                continue
        else:
            customer_id = data.get("customer_id") or fact.key.decode()
        outcome = detector.handle(
            profiles.get(customer_id), customer_id, event, quantile(customer_id)
        )
        if outcome.duplicate:
            continue
        requests += len(outcome.records)
        if outcome.state is None:
            profiles.pop(customer_id, None)
            continue
        profiles[customer_id] = outcome.state
        if outcome.quantile_changed:
            samples.append((customer_id, outcome.state.spend(event.time)))
    # The rhythm checks the service would have made by the end of the history.
    templates = []
    for customer_id in sorted(profiles):
        outcome = detector.handle_tick(profiles[customer_id], split, quantile(customer_id))
        requests += len(outcome.records)
        profile = outcome.state
        assert profile is not None
        due = outcome.deadline.timestamp() if outcome.deadline else None
        value = codecs.dumps("json", profile.model_dump(mode="json"))
        templates.append(ProfileTemplate(customer_id, value, due))
    return Story(
        profiles=templates,
        orders=sorted(order_customers.items()),
        spend_samples=samples,
        load=load,
        steady=steady,
        history_facts=len(history),
        history_requests=requests,
        split=split,
    )


class LoadStream:
    """The load of a shop of `copies` copies: each fact of the story, copy after copy."""

    def __init__(self, base: list[Fact], copies: int) -> None:
        self.base = base
        self.copies = copies
        self.position = 0  # facts taken so far

    def __len__(self) -> int:
        return len(self.base) * self.copies

    def take(self, count: int) -> list[Fact]:
        end = self.position + count
        if end > len(self):
            raise ValueError(
                f"the story's load holds {len(self)} facts for {self.copies} copies; "
                f"{end} were asked for"
            )
        out = []
        for i in range(self.position, end):
            fact, copy = self.base[i // self.copies], i % self.copies
            out.append(
                Fact(
                    fact.topic,
                    rename(fact.key, copy),
                    rename(fact.value, copy),
                    fact.type,
                    fact.units,
                )
            )
        self.position = end
        return out


def copies_of(customers: int) -> int:
    """Whole copies of the story's shop closest to `customers` (at least one)."""
    return max(1, round(customers / BASE_CUSTOMERS))
