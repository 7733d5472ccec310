"""The delivery ledger: one row per decision, its state machine, and an outbox of changes.

The states and the moves between them are `domain/states.py`; every write here is a
compare-and-set on the state it expects, checked against that table, so a message only
moves forward.

Claims are fenced: `attempts` grows by one each time a worker claims a row for a provider
call (decided → sending), and every later write about that call names the attempt it
belongs to. A worker that stalled, or a second reconciler, holding an older attempt
changes nothing. Intermediate states (decided, sending, in_doubt) carry a lease in wall
time (`lease_until`): a row still there after its lease was left by a process that died
or stalled, and the sweeper takes it over (`stale`).

The row is written in `sending` *before* the provider is called, so a crash between the
call and the commit leaves evidence: the row is in doubt, and is reconciled (by the
provider's report, or by asking the provider) instead of being sent blindly again.

Every change appends to `delivery_events`; a relay publishes unpublished rows to
`outreach.messages` (a transactional outbox), so no state change is lost to a crash
between the database commit and the Kafka send.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Unpack, cast

from sqlalchemy import (
    JSON,
    Boolean,
    Integer,
    Select,
    String,
    Table,
    Text,
    Update,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.adapters.group_commit import Change, GroupCommit
from services.outreach.domain.lifecycle import CauseState, RowChanges
from services.outreach.domain.states import LEASED, UNDER_WAY, Status, check_move

STATES = tuple(s.value for s in Status)


class Delivery(Base):
    __tablename__ = "deliveries"

    decision_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    order_id: Mapped[str | None] = mapped_column(String(200), index=True, nullable=True)
    cause_type: Mapped[str] = mapped_column(String(32))
    cause_id: Mapped[str] = mapped_column(String(128), index=True)
    cause_kind: Mapped[str] = mapped_column(String(64))
    intent: Mapped[str] = mapped_column(String(32))
    message_kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rule: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(35), nullable=True)
    time_zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    template_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    template_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    body_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    body_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    outbox: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    fallbacks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    offer_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Which revision of its cause this message speaks of (a newer one supersedes it).
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # Wall time until which the worker that put the row in an intermediate state owns it.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    # Wall time of the last claim: the provider is asked for messages since then.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Provider calls that failed for a reason other than throttling (429, breaker, rate).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # The storm its incident belongs to (domain/storms.py), once it was about to leave;
    # scheduled with no time and a storm: held until an operator decides the storm.
    storm_id: Mapped[str | None] = mapped_column(String(32), index=True, nullable=True)
    # The arm of each experiment covering the decision (domain/experiments.py).
    experiments: Mapped[list[dict[str, Any]] | None] = mapped_column(
        JSON, default=list, nullable=True
    )
    # A message not sent by then (a retry, or held too long) is given up.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Personal data (address, names, bodies) removed: an erasure, or the body retention.
    scrubbed: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class DeliveryEvent(Base):
    """Append-only history of every state change; also the outbox to `outreach.messages`."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    decision_id: Mapped[str] = mapped_column(String(64), index=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    published: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class ResolvedCause(Base):
    __tablename__ = "resolved_causes"

    cause_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    resolved_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolution: Mapped[str] = mapped_column(String(64))


class Lease(Base):
    """A named lease one worker holds at a time (the relay to outreach.messages)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    until: Mapped[datetime] = mapped_column(UTCDateTime)


class ErasedCustomer(Base):
    """A customer erased (customer.erased): their rows are scrubbed, now or once settled."""

    __tablename__ = "erased_customers"

    customer_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime)


# What stays of a request once its personal data is scrubbed: why and about what.
_REQUEST_SKELETON = ("request_id", "customer_id", "order_id", "intent", "message_kind",
                     "cause", "severity", "priority", "requested_at")  # fmt: skip
# Rows a provider call may still be settling: their address and body are needed to ask
# the provider, so they are scrubbed once settled.
_IN_FLIGHT = (Status.SENDING, Status.IN_DOUBT)


def _skeleton(request: dict[str, Any]) -> dict[str, Any]:
    kept = {k: request[k] for k in _REQUEST_SKELETON if k in request}
    kept["reasons"] = [
        {"code": r.get("code")} for r in request.get("reasons", []) if isinstance(r, dict)
    ]
    return kept | {"scrubbed": True}


class Worker(Base):
    """A running outreach worker, seen every second: the webhooks were reachable while
    one was up (a provider's report of a message could not have been lost then)."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


#: The customer and the start of the frequency cap's window.
Recent = tuple[str, datetime]


class LedgerPort(Protocol):
    """The ledger as outreach uses it: `Ledger` on SQL (SQLite, PostgreSQL), and
    `adapters/memory_ledger.py`'s `InMemoryLedger` for unit tests; tests/contract holds
    the two to the same behaviour. Rows returned are copies: changing one writes nothing."""

    async def get(self, decision_id: str) -> Delivery | None: ...
    async def by_request(self, request_id: str) -> Delivery | None: ...
    async def by_provider_id(self, provider_message_id: str) -> Delivery | None: ...
    async def latest_to(self, channel: str, address: str) -> Delivery | None: ...
    async def messages_to(self, customer_id: str, limit: int) -> list[Delivery]: ...
    async def count_recent(
        self, customer_id: str, since: datetime, *, besides_cause: tuple[str, str] | None = None
    ) -> int: ...
    async def reached_about(self, customer_id: str, cause_ids: list[str]) -> bool: ...
    async def count_by_status(self) -> dict[str, int]: ...
    async def is_resolved(self, cause_id: str) -> bool: ...
    async def mark_resolved(self, cause_id: str, at: datetime, resolution: str) -> None: ...
    async def open_for_cause(self, cause_id: str) -> list[Delivery]: ...
    async def older_unsent(
        self, cause_type: str, cause_id: str, revision: int
    ) -> list[Delivery]: ...
    async def newer_revision(self, cause_type: str, cause_id: str, revision: int) -> bool: ...
    async def cause_state(
        self, cause_type: str, cause_id: str, revision: int, *, recent: Recent | None = None
    ) -> CauseState: ...
    async def create(self, row: Delivery, event: DeliveryEvent) -> bool: ...
    async def transition(
        self,
        decision_id: str,
        expected: tuple[str, ...],
        event: DeliveryEvent | None,
        *,
        fence: int | None = None,
        **values: Unpack[RowChanges],
    ) -> bool: ...
    async def stale(self, wall_now: datetime, limit: int = 100) -> list[Delivery]: ...
    async def erase_customer(self, customer_id: str, wall_now: datetime) -> int: ...
    async def scrub_due(self, retain_until: datetime) -> int: ...
    async def worker_seen(
        self, worker_id: str, started_at: datetime, wall_now: datetime
    ) -> None: ...
    async def receivers_up_since(
        self, wall_now: datetime, within: timedelta
    ) -> datetime | None: ...
    async def live_workers(self, wall_now: datetime, within: timedelta) -> int: ...
    async def hold_lease(
        self, name: str, holder: str, until: datetime, wall_now: datetime
    ) -> bool: ...
    async def due(self, now: datetime, limit: int = 100) -> list[Delivery]: ...
    async def earliest_due(self) -> datetime | None: ...
    async def held(self, limit: int = 100, excluding: Collection[str] = ()) -> list[Delivery]: ...
    async def mark_storm(self, decision_ids: list[str], storm_id: str) -> None: ...
    async def storm_held(self) -> dict[str, int]: ...
    async def unpublished(self, limit: int = 500) -> list[DeliveryEvent]: ...
    async def mark_published(self, ids: list[int]) -> None: ...
    async def history(
        self, customer_id: str | None = None, order_id: str | None = None, limit: int = 200
    ) -> list[Delivery]: ...
    async def events_of(self, decision_id: str) -> list[DeliveryEvent]: ...


_DELIVERIES = cast(Table, Delivery.__table__)
_EVENTS = cast(Table, DeliveryEvent.__table__)


def _new_values(obj: Base) -> dict[str, Any]:
    """The columns of a new ORM object, for a plain insert; the scalar defaults of those
    not set are set on it too (as the ORM's insert would have)."""
    table = cast(Table, obj.__table__)
    given = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    for column in table.columns:
        default = column.default
        if column.key not in given and default is not None and default.is_scalar:
            value = default.arg  # type: ignore[attr-defined]
            setattr(obj, column.key, value)
            given[column.key] = value
    return given


def _recent(
    customer_id: Any, since: Any, besides_cause: tuple[Any, Any] | None
) -> ColumnElement[int]:
    """count_recent as one expression: the customer's messages sent or under way since
    `since`, plus those decided since then and waiting (not of `besides_cause`)."""
    sent = (
        select(func.count())
        .select_from(Delivery)
        .where(
            Delivery.customer_id == customer_id,
            Delivery.status.in_(tuple(UNDER_WAY)),
            func.coalesce(Delivery.sent_at, Delivery.decided_at) >= since,
        )
    )
    pending = (
        select(func.count())
        .select_from(Delivery)
        .where(
            Delivery.customer_id == customer_id,
            Delivery.status.in_((Status.SCHEDULED, Status.DECIDED)),
            Delivery.channel.is_not(None),  # held by a pause: not decided yet
            Delivery.decided_at >= since,
        )
    )
    if besides_cause is not None:
        pending = pending.where(
            or_(Delivery.cause_type != besides_cause[0], Delivery.cause_id != besides_cause[1])
        )
    return sent.scalar_subquery() + pending.scalar_subquery()


# The statements every message runs, built once (with bind parameters named b_*, apart
# from the columns an update sets): building them per call cost more than running them.
_BY_DECISION = select(_DELIVERIES).where(Delivery.decision_id == bindparam("b_key"))
_BY_REQUEST = select(_DELIVERIES).where(Delivery.request_id == bindparam("b_key"))
_CAUSE_STATE = select(
    exists().where(ResolvedCause.cause_id == bindparam("b_cause_id")),
    exists().where(
        Delivery.cause_type == bindparam("b_cause_type"),
        Delivery.cause_id == bindparam("b_cause_id"),
        Delivery.revision > bindparam("b_revision"),
    ),
    _recent(
        bindparam("b_customer", type_=String),
        bindparam("b_since", type_=UTCDateTime),
        (bindparam("b_cause_type"), bindparam("b_cause_id")),
    ),
)


@functools.cache
def _move(expected: int, fenced: bool) -> Update:
    """The compare-and-set of a transition from one of `expected` states (b_s0, b_s1,
    ...), with `fenced` on the attempt (b_fence). The states are plain parameters, not
    an expanding IN: that one is compiled again on every call."""
    query = update(_DELIVERIES).where(
        Delivery.decision_id == bindparam("b_decision_id"),
        or_(*(Delivery.status == bindparam(f"b_s{i}") for i in range(expected))),
    )
    return query.where(Delivery.attempts == bindparam("b_fence")) if fenced else query


def _group_by_keys(values: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows to insert, in groups that set the same columns (one statement each)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in values:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


def scrub_row(row: Delivery) -> set[str]:
    """Remove a row's personal data in place (an erasure, the body retention); returns
    the addresses it held (its own and its fallbacks'), whose studio test sends go too."""
    addresses = {row.address} if row.address else set()
    addresses |= {str(f["address"]) for f in row.fallbacks or [] if f.get("address")}
    row.address = None
    row.subject = row.body_text = row.body_html = row.last_error = None
    row.fallbacks = [{k: v for k, v in f.items() if k != "address"} for f in row.fallbacks or []]
    row.request = _skeleton(row.request or {})
    row.scrubbed = True
    return addresses


def settled(row: Delivery) -> bool:
    """Whether no provider call may still be settling the row (it can be scrubbed)."""
    return row.status not in _IN_FLIGHT


class Ledger:
    """Async access to the ledger. Every method runs in its own transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        assert isinstance(bind, AsyncEngine)
        self.engine = bind
        # SQLite takes one writer at a time, and a second one waits in its busy handler,
        # which sleeps for milliseconds at a time: this process's writers queue here
        # instead (other processes, the studio, still meet the busy timeout).
        one_writer = bind.dialect.name == "sqlite"
        self._write_turn: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if one_writer else contextlib.nullcontext()
        )
        # Decisions and transitions share their transactions (group_commit.py); only
        # they insert into these tables on the hot path, skipping rows that exist.
        self._group = GroupCommit(self._changing, self._write_group)
        on_conflict: Any = sqlite_insert if one_writer else postgresql_insert
        self._insert_new = (
            on_conflict(_DELIVERIES).on_conflict_do_nothing().returning(Delivery.decision_id)
        )
        self._insert_events = on_conflict(_EVENTS).on_conflict_do_nothing()

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """A write transaction (committed on leaving, rolled back on an error)."""
        async with self._write_turn, self.sessions() as s, s.begin():
            yield s

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction of plain statements, without the ORM's unit of work: the
        paths every message takes (create, transition, the relay) cost a fraction."""
        async with self._write_turn, self.engine.begin() as conn:
            yield conn

    async def get(self, decision_id: str) -> Delivery | None:
        return await self._one(_BY_DECISION, decision_id)

    async def by_request(self, request_id: str) -> Delivery | None:
        return await self._one(_BY_REQUEST, request_id)

    async def _one(self, query: Select[Any], key: str) -> Delivery | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(query, {"b_key": key})).first()
        return None if found is None else Delivery(**found._mapping)

    async def by_provider_id(self, provider_message_id: str) -> Delivery | None:
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery).where(Delivery.provider_message_id == provider_message_id)
            )
            return result.scalar_one_or_none()

    async def latest_to(self, channel: str, address: str) -> Delivery | None:
        """The most recent message sent to this address — the one a reply answers — or,
        when none was sent, the most recent decided for it (to map a STOP to a
        customer)."""
        channels = ("sms", "whatsapp") if channel in ("sms", "whatsapp") else (channel,)
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery)
                .where(Delivery.address == address, Delivery.channel.in_(channels))
                .order_by(Delivery.sent_at.is_(None), Delivery.decided_at.desc())
                .limit(1)
            )
            return result.scalar_one_or_none()

    async def messages_to(self, customer_id: str, limit: int) -> list[Delivery]:
        """The latest `limit` messages that went to the customer (sent or delivered, by a
        provider or the outbox), oldest first: their side of a conversation."""
        async with self.sessions() as s:
            result = await s.scalars(
                select(Delivery)
                .where(Delivery.customer_id == customer_id, Delivery.sent_at.is_not(None))
                .order_by(Delivery.sent_at.desc())
                .limit(limit)
            )
            return list(reversed(result.all()))

    async def count_recent(
        self, customer_id: str, since: datetime, *, besides_cause: tuple[str, str] | None = None
    ) -> int:
        """Proactive messages to this customer since `since` (sent, under way, or scheduled
        to go), not counting unsent ones of `besides_cause` (type, id): a newer revision
        of a message replaces them rather than adding to them."""
        async with self.sessions() as s:
            return int(await s.scalar(select(_recent(customer_id, since, besides_cause))) or 0)

    async def cause_state(
        self, cause_type: str, cause_id: str, revision: int, *, recent: Recent | None = None
    ) -> CauseState:
        """`is_resolved`, `newer_revision` and (with `recent`: the customer and the start
        of the cap window) `count_recent` besides this cause, read together."""
        customer, since = recent or (None, None)  # no customer: nothing counted
        params = dict(
            b_cause_type=cause_type,
            b_cause_id=cause_id,
            b_revision=revision,
            b_customer=customer,
            b_since=since,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(_CAUSE_STATE, params)).one()
        return CauseState(bool(row[0]), bool(row[1]), int(row[2] or 0))

    async def reached_about(self, customer_id: str, cause_ids: list[str]) -> bool:
        """Whether a message about any of these causes went to the customer (handed to a
        provider: sent, delivered, or under way)."""
        if not cause_ids:
            return False
        async with self.sessions() as s:
            found = await s.execute(
                select(Delivery.decision_id)
                .where(
                    Delivery.customer_id == customer_id,
                    Delivery.cause_id.in_(cause_ids),
                    Delivery.status.in_(tuple(UNDER_WAY)),
                )
                .limit(1)
            )
            return found.first() is not None

    async def count_by_status(self) -> dict[str, int]:
        """Rows per state (for `outreach_ledger_deliveries`); every state is present,
        and scheduled rows held by a pause are counted apart as `held`."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(Delivery.status, Delivery.send_at.is_(None), func.count()).group_by(
                    Delivery.status, Delivery.send_at.is_(None)
                )
            )
            counts = dict.fromkeys((*STATES, "held"), 0)
            for status, no_time, count in rows:
                key = "held" if status == "scheduled" and no_time else status
                counts[key] = counts.get(key, 0) + int(count)
            return counts

    async def is_resolved(self, cause_id: str) -> bool:
        async with self.sessions() as s:
            return await s.get(ResolvedCause, cause_id) is not None

    async def mark_resolved(self, cause_id: str, at: datetime, resolution: str) -> None:
        async with self._writing() as s:
            if await s.get(ResolvedCause, cause_id) is None:
                s.add(ResolvedCause(cause_id=cause_id, resolved_at=at, resolution=resolution))

    async def open_for_cause(self, cause_id: str) -> list[Delivery]:
        """Rows of this cause that have not been handed to a provider yet."""
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery).where(
                    Delivery.cause_id == cause_id,
                    Delivery.status.in_((Status.SCHEDULED, Status.DECIDED)),
                )
            )
            return list(result.scalars())

    async def older_unsent(self, cause_type: str, cause_id: str, revision: int) -> list[Delivery]:
        """Unsent rows of the same cause speaking of an older revision."""
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery).where(
                    Delivery.cause_type == cause_type,
                    Delivery.cause_id == cause_id,
                    Delivery.revision < revision,
                    Delivery.status.in_((Status.SCHEDULED, Status.DECIDED)),
                )
            )
            return list(result.scalars())

    async def newer_revision(self, cause_type: str, cause_id: str, revision: int) -> bool:
        """Is there a message about a newer revision of this cause?"""
        async with self.sessions() as s:
            result = await s.execute(
                select(func.count())
                .select_from(Delivery)
                .where(
                    Delivery.cause_type == cause_type,
                    Delivery.cause_id == cause_id,
                    Delivery.revision > revision,
                )
            )
            return int(result.scalar_one()) > 0

    async def create(self, row: Delivery, event: DeliveryEvent) -> bool:
        """Insert a new decision with its first event; False if it already existed."""
        return await self._group.submit(Change("create", _new_values(row), _new_values(event)))

    async def transition(
        self,
        decision_id: str,
        expected: tuple[str, ...],
        event: DeliveryEvent | None,
        *,
        fence: int | None = None,
        **values: Unpack[RowChanges],
    ) -> bool:
        """Compare-and-set the row's state; the event is recorded in the same transaction.
        False if the row was not in an expected state (another worker moved it) or, with
        `fence`, belongs to another attempt than `fence` (a newer claim took it over).
        Raises IllegalMove for a move the state machine forbids (a bug, never data)."""
        target = values.get("status")
        if target is not None:
            for source in expected:
                check_move(Status(source), Status(target))
        params: dict[str, Any] = dict(values, b_decision_id=decision_id)
        params.update((f"b_s{i}", state) for i, state in enumerate(expected))
        if fence is not None:
            params["b_fence"] = fence
        move = Change(
            "move",
            params,
            None if event is None else _new_values(event),
            _move(len(expected), fence is not None),
        )
        return await self._group.submit(move)

    async def _write_group(self, conn: AsyncConnection, group: Sequence[Change]) -> list[bool]:
        """A group's changes in one transaction: its new rows in one statement (a row that
        exists is skipped: False), each move as its compare-and-set, then the events of
        the changes that took effect in one statement."""
        inserted: set[str] = set()
        creates = [c.params for c in group if c.kind == "create"]
        for rows in _group_by_keys(creates):
            result = await conn.execute(self._insert_new, rows)
            inserted.update(found[0] for found in result)
        took: list[bool] = []
        for change in group:
            if change.kind == "create":
                decision_id = change.params["decision_id"]
                took.append(decision_id in inserted)
                inserted.discard(decision_id)  # the same decision twice: the first one
            else:
                took.append((await conn.execute(change.statement, change.params)).rowcount == 1)
        events = [c.event for c, ok in zip(group, took, strict=True) if ok and c.event]
        for rows in _group_by_keys(events):
            await conn.execute(self._insert_events, rows)
        return took

    async def stale(self, wall_now: datetime, limit: int = 100) -> list[Delivery]:
        """Rows in an intermediate state whose lease ran out: their holder died or
        stalled (decided: never claimed; sending: no answer recorded; in_doubt: due for
        another look at the provider)."""
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery)
                .where(
                    Delivery.status.in_(tuple(LEASED)),
                    Delivery.lease_until.is_not(None),
                    Delivery.lease_until <= wall_now,
                )
                .order_by(Delivery.lease_until)
                .limit(limit)
            )
            return list(result.scalars())

    async def erase_customer(self, customer_id: str, wall_now: datetime) -> int:
        """customer.erased: remember the erasure, and scrub the customer's rows — their
        address, first name, subject and bodies, the addresses of their fallbacks, the
        errors that may quote them — and studio test sends to those addresses. Rows a
        provider call is still settling are scrubbed once settled (`scrub_due`). The
        decision skeleton (ids, states, reasons, counts) stays for the audit. Returns
        the rows scrubbed now."""
        async with self._writing() as s:
            if await s.get(ErasedCustomer, customer_id) is None:
                s.add(ErasedCustomer(customer_id=customer_id, erased_at=wall_now))
        return await self._scrub(Delivery.customer_id == customer_id)

    async def scrub_due(self, retain_until: datetime) -> int:
        """Scrub settled rows of erased customers, and every settled row decided before
        `retain_until` (the body retention). Returns how many."""
        erased = select(ErasedCustomer.customer_id)
        return await self._scrub(
            or_(Delivery.customer_id.in_(erased), Delivery.decided_at < retain_until)
        )

    async def _scrub(self, which: Any, batch: int = 500) -> int:
        scrubbed = 0
        while True:
            async with self._writing() as s:
                rows = list(
                    (
                        await s.execute(
                            select(Delivery)
                            .where(which, Delivery.scrubbed.is_(False))
                            .where(Delivery.status.not_in(_IN_FLIGHT))
                            .limit(batch)
                            .with_for_update()
                        )
                    ).scalars()
                )
                addresses: set[str] = set()
                for row in rows:
                    addresses |= scrub_row(row)
                if addresses:
                    await s.execute(
                        text(
                            "UPDATE studio_test_sends SET \"to\" = '[erased]', subject = NULL, "
                            "html = NULL, text = '' WHERE \"to\" IN :addresses"
                        ).bindparams(bindparam("addresses", expanding=True)),
                        {"addresses": sorted(addresses)},
                    )
            scrubbed += len(rows)
            if len(rows) < batch:
                return scrubbed

    async def worker_seen(self, worker_id: str, started_at: datetime, wall_now: datetime) -> None:
        """Record that this worker is up (and forget workers gone for a day)."""
        async with self._writing() as s:
            seen = await s.execute(
                update(Worker).where(Worker.worker_id == worker_id).values(seen_at=wall_now)
            )
            if seen.rowcount != 1:  # type: ignore[attr-defined]
                s.add(Worker(worker_id=worker_id, started_at=started_at, seen_at=wall_now))
                await s.execute(delete(Worker).where(Worker.seen_at < wall_now - timedelta(days=1)))

    async def receivers_up_since(self, wall_now: datetime, within: timedelta) -> datetime | None:
        """Since when a worker has been up without a break (seen within `within` of
        now): the earliest start among the live ones; None if none is live."""
        async with self.sessions() as s:
            result = await s.execute(
                select(func.min(Worker.started_at)).where(Worker.seen_at >= wall_now - within)
            )
            return result.scalar_one_or_none()

    async def live_workers(self, wall_now: datetime, within: timedelta) -> int:
        """How many workers were seen within `within` of now."""
        async with self.sessions() as s:
            found = await s.scalar(
                select(func.count()).select_from(Worker).where(Worker.seen_at >= wall_now - within)
            )
            return int(found or 0)

    async def hold_lease(self, name: str, holder: str, until: datetime, wall_now: datetime) -> bool:
        """Take or renew the lease `name` for `holder` until `until`; False while another
        holder's lease runs."""
        async with self._writing() as s:
            result = await s.execute(
                update(Lease)
                .where(Lease.name == name, or_(Lease.holder == holder, Lease.until <= wall_now))
                .values(holder=holder, until=until)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return True
            if await s.get(Lease, name) is not None:
                return False
        try:
            async with self._writing() as s:
                s.add(Lease(name=name, holder=holder, until=until))
            return True
        except IntegrityError:
            return False

    async def due(self, now: datetime, limit: int = 100) -> list[Delivery]:
        async with self.sessions() as s:
            result = await s.execute(
                select(Delivery)
                .where(
                    Delivery.status == "scheduled",
                    Delivery.send_at.is_not(None),
                    Delivery.send_at <= now,
                )
                .order_by(Delivery.send_at)
                .limit(limit)
            )
            return list(result.scalars())

    async def earliest_due(self) -> datetime | None:
        """When the next scheduled message is due (None: none is scheduled for a time)."""
        async with self.sessions() as s:
            found = await s.scalar(
                select(func.min(Delivery.send_at)).where(
                    Delivery.status == "scheduled", Delivery.send_at.is_not(None)
                )
            )
        if found is not None and found.tzinfo is None:
            found = found.replace(tzinfo=UTC)
        return found

    async def held(self, limit: int = 100, excluding: Collection[str] = ()) -> list[Delivery]:
        """Scheduled with no time: held by a pause, or by a storm (those of the storms
        `excluding` still wait: domain/storms.py). By customer, so that a customer's
        held messages are released together (and merge)."""
        query = (
            select(Delivery)
            .where(Delivery.status == "scheduled", Delivery.send_at.is_(None))
            .order_by(Delivery.customer_id, Delivery.decision_id)
        )
        if excluding:
            query = query.where(
                Delivery.storm_id.is_(None) | Delivery.storm_id.not_in(list(excluding))
            )
        async with self.sessions() as s:
            return list((await s.execute(query.limit(limit))).scalars())

    async def mark_storm(self, decision_ids: list[str], storm_id: str) -> None:
        """Name the storm these messages' incidents belong to (for the storm's note and
        view); a row that names one already keeps it."""
        if not decision_ids:
            return
        async with self._writing() as s:
            await s.execute(
                update(Delivery)
                .where(Delivery.decision_id.in_(decision_ids), Delivery.storm_id.is_(None))
                .values(storm_id=storm_id)
            )

    async def storm_held(self) -> dict[str, int]:
        """Per storm, how many of its messages are held (scheduled with no time)."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(Delivery.storm_id, func.count())
                .where(
                    Delivery.status == "scheduled",
                    Delivery.send_at.is_(None),
                    Delivery.storm_id.is_not(None),
                )
                .group_by(Delivery.storm_id)
            )
            return {str(storm): int(n) for storm, n in rows.all()}

    async def unpublished(self, limit: int = 500) -> list[DeliveryEvent]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(_EVENTS)
                .where(DeliveryEvent.published.is_(False))
                .order_by(DeliveryEvent.id)
                .limit(limit)
            )
            return [DeliveryEvent(**found._mapping) for found in result]

    async def mark_published(self, ids: list[int]) -> None:
        if not ids:
            return
        async with self._changing() as conn:
            await conn.execute(
                update(_EVENTS).where(DeliveryEvent.id.in_(ids)).values(published=True)
            )

    async def history(
        self, customer_id: str | None = None, order_id: str | None = None, limit: int = 200
    ) -> list[Delivery]:
        async with self.sessions() as s:
            query = select(Delivery).order_by(Delivery.decided_at.desc()).limit(limit)
            if customer_id:
                query = query.where(Delivery.customer_id == customer_id)
            if order_id:
                query = query.where(Delivery.order_id == order_id)
            result = await s.execute(query)
            return list(result.scalars())

    async def events_of(self, decision_id: str) -> list[DeliveryEvent]:
        async with self.sessions() as s:
            result = await s.execute(
                select(DeliveryEvent)
                .where(DeliveryEvent.decision_id == decision_id)
                .order_by(DeliveryEvent.id)
            )
            return list(result.scalars())
