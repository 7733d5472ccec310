"""The delivery ledger in memory: `LedgerPort` for unit tests of what uses the ledger
(outreach's delivery service, the relay, the studio's views), without a database.

It keeps the SQL ledger's contract — compare-and-set moves checked against the state
machine, fenced claims, one row per decision and per request, the outbox in order,
leases, erasure and retention scrubbing — and tests/contract/test_ledger.py runs the same
suite on it, on SQLite and on PostgreSQL. What it does not have is the rest of the
database: an erasure here does not reach the studio's test sends (a table of the
template store), and nothing survives the process.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import orjson
from sqlalchemy.exc import IntegrityError

from services.outreach.adapters.ledger import (
    STATES,
    Delivery,
    DeliveryEvent,
    LedgerPort,
    Recent,
    scrub_row,
    settled,
)
from services.outreach.domain.lifecycle import CauseState, RowChanges
from services.outreach.domain.states import LEASED, UNDER_WAY, Status, check_move

Row = TypeVar("Row", Delivery, DeliveryEvent)
_PENDING = (Status.SCHEDULED, Status.DECIDED)
_INDEXED = ("request_id", "customer_id", "cause_id", "provider_message_id", "address", "order_id")


def _duplicate(what: str) -> IntegrityError:
    return IntegrityError(f"duplicate {what}", None, ValueError(what))


#: Values a copy may share with the original: nothing can change them in place.
_IMMUTABLE = (str, int, float, datetime, type(None))


def _copy(row: Row) -> Row:
    """A detached copy, as a query returns: the caller's changes stay its own. Its
    values are put in as the ORM puts a loaded row's (no change events: nothing tracks
    a detached object)."""
    fresh = type(row)()
    values = row.__dict__
    fresh.__dict__.update(
        (key, value if isinstance(value, _IMMUTABLE) else _detached(value))
        for key in _column_keys(type(row))
        for value in (values.get(key),)
    )
    return fresh


def _detached(value: Any) -> Any:
    """A copy of a column's value. A JSON column's (a dict, a list) goes through JSON as
    the database would store and load it — and an order of magnitude faster than
    deepcopy (the replay copies a request with every row it reads)."""
    if isinstance(value, dict | list):
        try:
            return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
        except TypeError:  # nothing a JSON column could hold: copied as it is
            pass
    return copy.deepcopy(value)


@functools.cache
def _column_keys(model: type) -> tuple[str, ...]:
    return tuple(column.key for column in model.__table__.columns)  # type: ignore[attr-defined]


def _with_defaults(row: Row) -> Row:
    """The row as the database stores it: columns left unset take their defaults."""
    fresh = _copy(row)
    for column in type(row).__table__.columns:
        default = column.default
        if getattr(fresh, column.key) is None and default is not None:
            arg: Any = getattr(default, "arg", None)
            setattr(fresh, column.key, arg(None) if callable(arg) else arg)
    return fresh


class InMemoryLedger:
    def __init__(self) -> None:
        self.rows: dict[str, Delivery] = {}
        self.events: list[DeliveryEvent] = []
        self.resolved: dict[str, tuple[datetime, str]] = {}
        self.leases: dict[str, tuple[str, datetime]] = {}
        self.workers: dict[str, tuple[datetime, datetime]] = {}  # id → (started, seen)
        self.erased: dict[str, datetime] = {}
        # Indexes, as the database's: column → value → the decision ids that had it (a
        # superset: a lookup checks the row), the scheduled rows, the events' ids.
        self._index: dict[str, dict[Any, set[str]]] = {key: {} for key in _INDEXED}
        self._scheduled_ids: set[str] = set()
        self._event_ids: set[str] = set()
        self._seen: dict[str, int] = {}  # the rows indexed, in the order they came
        self.version = 0  # moves with every change of a row

    # --- reading -------------------------------------------------------------------------

    def _catch_up(self) -> None:
        """Index the rows a test put in directly."""
        if len(self._seen) != len(self.rows):
            for row in self.rows.values():
                if row.decision_id not in self._seen:
                    self._indexed(row)

    def _find(self, **equal: Any) -> list[Delivery]:
        self._catch_up()
        indexed = next((key for key in _INDEXED if key in equal), None)
        if indexed is not None:
            ids = self._index[indexed].get(equal[indexed], ())
            candidates = [self.rows[i] for i in sorted(ids, key=self._seen.__getitem__)]
        elif equal.get("status") == Status.SCHEDULED:
            ordered = sorted(self._scheduled_ids, key=self._seen.__getitem__)
            candidates = [self.rows[i] for i in ordered]
        else:
            candidates = list(self.rows.values())
        return [
            row
            for row in candidates
            if all(getattr(row, key) == value for key, value in equal.items())
        ]

    def _indexed(self, row: Delivery) -> None:
        """Record the row's current indexed values (after it was written)."""
        self._seen.setdefault(row.decision_id, len(self._seen))
        self.version += 1
        for key in _INDEXED:
            self._index[key].setdefault(getattr(row, key), set()).add(row.decision_id)
        if row.status == Status.SCHEDULED:
            self._scheduled_ids.add(row.decision_id)
        else:
            self._scheduled_ids.discard(row.decision_id)

    async def get(self, decision_id: str) -> Delivery | None:
        row = self.rows.get(decision_id)
        return None if row is None else _copy(row)

    async def by_request(self, request_id: str) -> Delivery | None:
        return next((_copy(r) for r in self._find(request_id=request_id)), None)

    async def by_provider_id(self, provider_message_id: str) -> Delivery | None:
        found = self._find(provider_message_id=provider_message_id)
        return next((_copy(r) for r in found), None)

    async def latest_to(self, channel: str, address: str) -> Delivery | None:
        channels = ("sms", "whatsapp") if channel in ("sms", "whatsapp") else (channel,)
        rows = [r for r in self._find(address=address) if r.channel in channels]
        latest = max(rows, key=lambda r: (r.sent_at is not None, r.decided_at), default=None)
        return None if latest is None else _copy(latest)

    async def messages_to(self, customer_id: str, limit: int) -> list[Delivery]:
        rows = [r for r in self._find(customer_id=customer_id) if r.sent_at is not None]
        rows.sort(key=lambda r: r.sent_at or r.decided_at)
        return [_copy(r) for r in rows[-limit:]]

    async def count_recent(
        self, customer_id: str, since: datetime, *, besides_cause: tuple[str, str] | None = None
    ) -> int:
        count = 0
        for row in self._find(customer_id=customer_id):
            if (row.status in UNDER_WAY and (row.sent_at or row.decided_at) >= since) or (
                row.status in _PENDING
                and row.channel is not None
                and row.decided_at >= since
                and (row.cause_type, row.cause_id) != besides_cause
            ):
                count += 1
        return count

    async def reached_about(self, customer_id: str, cause_ids: list[str]) -> bool:
        return any(
            row.cause_id in cause_ids and row.status in UNDER_WAY
            for row in self._find(customer_id=customer_id)
        )

    async def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys((*STATES, "held"), 0)
        for row in self.rows.values():
            held = row.status == Status.SCHEDULED and row.send_at is None
            counts["held" if held else row.status] += 1
        return counts

    async def is_resolved(self, cause_id: str) -> bool:
        return cause_id in self.resolved

    async def open_for_cause(self, cause_id: str) -> list[Delivery]:
        return [_copy(r) for r in self._find(cause_id=cause_id) if r.status in _PENDING]

    async def older_unsent(self, cause_type: str, cause_id: str, revision: int) -> list[Delivery]:
        rows = self._find(cause_type=cause_type, cause_id=cause_id)
        return [_copy(r) for r in rows if r.revision < revision and r.status in _PENDING]

    async def newer_revision(self, cause_type: str, cause_id: str, revision: int) -> bool:
        rows = self._find(cause_type=cause_type, cause_id=cause_id)
        return any(r.revision > revision for r in rows)

    async def cause_state(
        self, cause_type: str, cause_id: str, revision: int, *, recent: Recent | None = None
    ) -> CauseState:
        counted = 0
        if recent is not None:
            counted = await self.count_recent(*recent, besides_cause=(cause_type, cause_id))
        return CauseState(
            await self.is_resolved(cause_id),
            await self.newer_revision(cause_type, cause_id, revision),
            counted,
        )

    async def stale(self, wall_now: datetime, limit: int = 100) -> list[Delivery]:
        rows = [
            r
            for r in self.rows.values()
            if r.status in LEASED and r.lease_until is not None and r.lease_until <= wall_now
        ]
        return [_copy(r) for r in sorted(rows, key=lambda r: r.lease_until or wall_now)[:limit]]

    async def due(self, now: datetime, limit: int = 100) -> list[Delivery]:
        rows = [r for r in self._scheduled() if r.send_at is not None and r.send_at <= now]
        return [_copy(r) for r in sorted(rows, key=lambda r: r.send_at or now)[:limit]]

    async def earliest_due(self) -> datetime | None:
        self._catch_up()
        rows = self.rows
        times = [t for i in self._scheduled_ids if (t := rows[i].send_at) is not None]
        return min(times) if times else None

    async def held(self, limit: int = 100, excluding: Collection[str] = ()) -> list[Delivery]:
        rows = sorted(
            (r for r in self._scheduled() if r.send_at is None),
            key=lambda r: (r.customer_id, r.decision_id),
        )
        return [_copy(r) for r in rows if r.storm_id is None or r.storm_id not in excluding][:limit]

    async def mark_storm(self, decision_ids: list[str], storm_id: str) -> None:
        for decision_id in decision_ids:
            row = self.rows.get(decision_id)
            if row is not None and row.storm_id is None:
                row.storm_id = storm_id
                self.version += 1

    async def storm_held(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._scheduled():
            if r.send_at is None and r.storm_id is not None:
                counts[r.storm_id] = counts.get(r.storm_id, 0) + 1
        return counts

    def _scheduled(self) -> list[Delivery]:
        return self._find(status=Status.SCHEDULED)

    async def unpublished(self, limit: int = 500) -> list[DeliveryEvent]:
        return [_copy(e) for e in self.events if not e.published][:limit]

    async def history(
        self, customer_id: str | None = None, order_id: str | None = None, limit: int = 200
    ) -> list[Delivery]:
        equal = {k: v for k, v in (("customer_id", customer_id), ("order_id", order_id)) if v}
        rows = self._find(**equal)
        rows.sort(key=lambda r: r.decided_at, reverse=True)
        return [_copy(r) for r in rows[:limit]]

    async def events_of(self, decision_id: str) -> list[DeliveryEvent]:
        return [_copy(e) for e in self.events if e.decision_id == decision_id]

    async def receivers_up_since(self, wall_now: datetime, within: timedelta) -> datetime | None:
        live = [started for started, seen in self.workers.values() if seen >= wall_now - within]
        return min(live) if live else None

    async def live_workers(self, wall_now: datetime, within: timedelta) -> int:
        return sum(1 for _, seen in self.workers.values() if seen >= wall_now - within)

    # --- writing -------------------------------------------------------------------------

    async def mark_resolved(self, cause_id: str, at: datetime, resolution: str) -> None:
        self.resolved.setdefault(cause_id, (at, resolution))

    async def create(self, row: Delivery, event: DeliveryEvent) -> bool:
        if row.decision_id in self.rows or self._find(request_id=row.request_id):
            return False
        if event.event_id in self._event_ids:
            return False
        self.rows[row.decision_id] = stored = _with_defaults(row)
        self._indexed(stored)
        self._append(event)
        return True

    async def transition(
        self,
        decision_id: str,
        expected: tuple[str, ...],
        event: DeliveryEvent | None,
        *,
        fence: int | None = None,
        **values: Unpack[RowChanges],
    ) -> bool:
        target = values.get("status")
        if target is not None:
            for source in expected:
                check_move(Status(source), Status(target))
        self._catch_up()
        row = self.rows.get(decision_id)
        if row is None or row.status not in expected:
            return False
        if fence is not None and row.attempts != fence:
            return False
        if event is not None and event.event_id in self._event_ids:
            raise _duplicate("event_id")
        for key, value in values.items():
            setattr(row, key, value if isinstance(value, _IMMUTABLE) else _detached(value))
        self._indexed(row)
        if event is not None:
            self._append(event)
        return True

    def _append(self, event: DeliveryEvent) -> None:
        stored = _with_defaults(event)
        stored.id = len(self.events) + 1
        self.events.append(stored)
        self._event_ids.add(stored.event_id)

    async def mark_published(self, ids: list[int]) -> None:
        wanted = set(ids)
        for event in self.events:
            if event.id in wanted:
                event.published = True

    async def erase_customer(self, customer_id: str, wall_now: datetime) -> int:
        self.erased.setdefault(customer_id, wall_now)
        return self._scrub(lambda row: row.customer_id == customer_id)

    async def scrub_due(self, retain_until: datetime) -> int:
        return self._scrub(
            lambda row: row.customer_id in self.erased or row.decided_at < retain_until
        )

    def _scrub(self, which: Any) -> int:
        self._catch_up()
        rows = [r for r in self.rows.values() if which(r) and not r.scrubbed and settled(r)]
        for row in rows:
            scrub_row(row)
            self._indexed(row)
        return len(rows)

    async def worker_seen(self, worker_id: str, started_at: datetime, wall_now: datetime) -> None:
        known = self.workers.get(worker_id)
        if known is not None:
            self.workers[worker_id] = (known[0], wall_now)
            return
        self.workers[worker_id] = (started_at, wall_now)
        gone = wall_now - timedelta(days=1)
        self.workers = {k: v for k, v in self.workers.items() if v[1] >= gone}

    async def hold_lease(self, name: str, holder: str, until: datetime, wall_now: datetime) -> bool:
        current = self.leases.get(name)
        if current is not None and current[0] != holder and current[1] > wall_now:
            return False
        self.leases[name] = (holder, until)
        return True


__all__ = ["InMemoryLedger"]


if TYPE_CHECKING:
    _contract: LedgerPort = InMemoryLedger()
