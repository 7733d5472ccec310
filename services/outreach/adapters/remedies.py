"""Remedies in outreach's database (docs/remedies.md): the policy's versions (edited,
published and rolled back in the studio, like templates), the budget spent per period,
and one grant per decision — the remedy it carries (or why none), its code, and whether
the code was redeemed.

The budget is a hard cap under any concurrency: a grant adds its cost to the period's
row with one conditional UPDATE (`spent + cost <= cap`), which the database applies to
one writer at a time (PostgreSQL re-checks the condition on the row it locked; SQLite
has one writer); a remedy that does not fit is refused there and the next one tried, in
the same transaction as the grant's row. A decision is granted once: a retry, a second
render or another worker gets the same grant (the decision id is the grant's key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Index,
    Integer,
    String,
    Text,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common.metrics import REMEDIES, REMEDY_REDEMPTIONS
from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.adapters.outcomes import OutcomeEvent
from services.outreach.domain import learning
from services.outreach.domain import remedies as domain
from services.outreach.domain.offers import offer_code
from services.outreach.domain.remedies import CODED, Facts, Policy, PolicyError

DRAFT, PUBLISHED, ARCHIVED = "draft", "published", "archived"
# How far back (before the window) a learner counts its grants: within the outcome
# facts' retention, and recent enough to follow a shop that changes.
LEARN_HORIZON = timedelta(days=90)


class RemedyPolicyVersion(Base):
    __tablename__ = "remedy_policies"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RemedyBudget(Base):
    __tablename__ = "remedy_budgets"

    period: Mapped[str] = mapped_column(String(16), primary_key=True)
    spent_cents: Mapped[int] = mapped_column(BigInteger, default=0)


class RemedyGrant(Base):
    __tablename__ = "remedy_grants"
    __table_args__ = (Index("ix_remedy_grants_context_granted_at", "context", "granted_at"),)

    decision_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    order_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    period: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True)  # None: none fitted
    value: Mapped[str | None] = mapped_column(String(32), nullable=True)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    cost_cents: Mapped[int] = mapped_column(BigInteger, default=0)  # budget's currency
    code: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    why: Mapped[str] = mapped_column(Text, default="")
    policy_version: Mapped[int] = mapped_column(Integer, default=0)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    redeemed_order_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # A learned choice (domain/learning.py): the message kind and customer value it was
    # learned for, and the arm taken ("percent:10", …, or "none").
    context: Mapped[str | None] = mapped_column(String(120), nullable=True)
    arm: Mapped[str | None] = mapped_column(String(40), nullable=True)


@dataclass(frozen=True)
class Grant:
    """What a decision carries: a remedy (kind None: none fitted), and why."""

    decision_id: str
    kind: str | None
    value: str | None
    currency: str | None
    code: str | None
    expires_at: datetime | None
    cost: Decimal
    budget_currency: str
    why: str

    def offer(self) -> dict[str, Any] | None:
        """The template context's `offer` (docs/templates.md)."""
        if self.kind is None:
            return None
        return {
            "kind": self.kind, "value": self.value, "currency": self.currency,
            "code": self.code, "expires_at": self.expires_at,
        }  # fmt: skip

    def explained(self) -> dict[str, Any]:
        """For explain: what it was, what it cost, why (no code: that is the customer's)."""
        return {
            "kind": self.kind, "value": self.value, "currency": self.currency,
            "cost": str(self.cost), "why": self.why,
        }  # fmt: skip

    def record(self) -> dict[str, Any]:
        """For the message's ledger event: the remedy and why (or why none); the code is
        dropped from outreach.messages and given to the shop's systems on
        outreach.actions."""
        kept = {k: v for k, v in (self.offer() or {}).items() if v is not None}
        if self.expires_at is not None and self.kind is not None:
            kept["expires_at"] = self.expires_at.isoformat()
        return kept | {"why": self.why}


def _cents(amount: Decimal) -> int:
    return int((amount * 100).to_integral_value())


class RemedyStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], refresh_s: float = 5.0):
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        assert isinstance(bind, AsyncEngine)
        self._sqlite = bind.dialect.name == "sqlite"
        insert: Any = sqlite_insert if self._sqlite else postgresql_insert
        self._insert_budget = insert(RemedyBudget).on_conflict_do_nothing()
        # On the table, one row: a Core insert, whose rowcount says whether it was new.
        self._insert_grant = insert(RemedyGrant.__table__).on_conflict_do_nothing()
        self._one_writer = asyncio.Lock()  # SQLite: this process's writers queue here
        self.refresh_s = refresh_s
        self._policy: tuple[float, int, Policy] | None = None
        self._learned: dict[tuple[str, timedelta, datetime], dict[str, learning.ArmStats]] = {}
        self._learning = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        async with contextlib.AsyncExitStack() as stack:
            if self._sqlite:
                await stack.enter_async_context(self._one_writer)
            s = await stack.enter_async_context(self.sessions())
            await stack.enter_async_context(s.begin())
            yield s

    # --- the policy ------------------------------------------------------------------

    async def policy(self) -> tuple[int, Policy]:
        """The published policy (its version), read at most every `refresh_s`; version 0,
        the default policy, until one is published."""
        kept = self._policy
        if kept is None or kept[0] < time.monotonic():
            async with self.sessions() as s:
                row = (
                    await s.execute(
                        select(RemedyPolicyVersion)
                        .where(RemedyPolicyVersion.status == PUBLISHED)
                        .order_by(RemedyPolicyVersion.published_at.desc())
                        .limit(1)  # two admins publishing at once: the later one serves
                    )
                ).scalar_one_or_none()
            version, policy = (
                (0, domain.DEFAULT) if row is None else (row.version, domain.parse(row.document))
            )
            kept = self._policy = (time.monotonic() + self.refresh_s, version, policy)
        return kept[1], kept[2]

    async def versions(self) -> list[RemedyPolicyVersion]:
        async with self.sessions() as s:
            query = select(RemedyPolicyVersion).order_by(RemedyPolicyVersion.version.desc())
            return list((await s.execute(query)).scalars())

    async def save_draft(
        self, document: dict[str, Any], author: str, note: str, at: datetime
    ) -> int:
        """A new version (a draft); PolicyError when the document cannot be used."""
        domain.parse(document)
        for attempt in range(3):  # two admins saving at once: the second takes the next
            try:
                async with self._writing() as s:
                    newest = await s.execute(select(func.max(RemedyPolicyVersion.version)))
                    version = int(newest.scalar() or 0) + 1
                    s.add(RemedyPolicyVersion(
                        version=version, status=DRAFT, document=document, note=note[:2000],
                        author=author, created_at=at,
                    ))  # fmt: skip
                return version
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def publish(self, version: int, actor: str, at: datetime) -> None:
        """`version` serves from now on (the one before it archived); an older version
        published again is a rollback."""
        async with self._writing() as s:
            row = await s.get(RemedyPolicyVersion, version)
            if row is None:
                raise PolicyError(f"no remedy policy version {version}")
            domain.parse(row.document)
            await s.execute(
                update(RemedyPolicyVersion)
                .where(RemedyPolicyVersion.status == PUBLISHED)
                .values(status=ARCHIVED)
            )
            row.status, row.published_by, row.published_at = PUBLISHED, actor, at
        self._policy = None

    # --- granting ----------------------------------------------------------------------

    async def get(self, decision_id: str, budget_currency: str = "EUR") -> Grant | None:
        async with self.sessions() as s:
            row = await s.get(RemedyGrant, decision_id)
        return None if row is None else _grant(row, budget_currency)

    async def grant(
        self, decision_id: str, customer_id: str, order_id: str | None, facts: Facts,
        at: datetime, secret: str, *, retry: bool = True,
    ) -> Grant | None:  # fmt: skip
        """The decision's remedy: granted once (later calls get the same, whatever the
        policy says by then), the first of the policy's remedies that fits the budget, or
        none with the reasons. None when no rule of the policy covers the message (for a
        first attempt, `retry` False, without asking for an earlier grant)."""
        version, policy = await self.policy()
        rule = policy.rule_for(facts)
        if rule is None and not retry:
            return None
        existing = await self.get(decision_id, policy.currency)
        if existing is not None:
            return existing  # granted before (a retry, another worker)
        if rule is None:
            return None
        candidates = domain.priced(policy, facts)
        context = ranked = None
        if rule.learn is not None:
            context = f"{rule.key}|{facts.message_kind}|{facts.customer_value or 'unknown'}"
            ranked = await self._rank(decision_id, context, rule, policy, facts, at)
            candidates = _in_order(candidates, ranked.order)
        period = policy.period_of(at)
        async with self._writing() as s:
            fresh = RemedyGrant(
                decision_id=decision_id, customer_id=customer_id, order_id=order_id,
                period=period, granted_at=at, policy_version=version, cost_cents=0, uses=0,
                why="", context=context,
            )  # fmt: skip
            inserted = await s.execute(self._insert_grant.values(**_columns(fresh)))
            if inserted.rowcount == 1:  # type: ignore[attr-defined]  # else another's first
                chosen = await self._choose(s, policy, candidates, period)
                values = _granted(chosen, decision_id, policy, facts, at, secret)
                if ranked is not None:  # evidence only of what the learner chose first
                    picked = learning.NONE if chosen[0] is None else str(chosen[0].remedy)
                    values["arm"] = picked if picked == ranked.order[0] else None
                    values["why"] = f"{ranked.why}; {values['why']}"
                await s.execute(
                    update(RemedyGrant)
                    .where(RemedyGrant.decision_id == decision_id)
                    .values(**values)
                )
        return await self.get(decision_id, policy.currency)

    async def _rank(
        self, decision_id: str, context: str, rule: domain.Rule, policy: Policy,
        facts: Facts, at: datetime,
    ) -> learning.Ranked:  # fmt: skip
        assert rule.learn is not None
        stats = await self.learned(context, rule.learn.window, at)
        arms = [str(r) for r in rule.offer]
        costs = {str(r): policy.cost(r, facts) for r in rule.offer}
        return learning.rank(
            arms, costs, stats, learning.rng_for(decision_id), rule.learn.exploration
        )

    async def learned(
        self, context: str, window: timedelta, at: datetime
    ) -> dict[str, learning.ArmStats]:
        """What each arm did in `context`: the learned grants whose window had passed by
        `at`, and how many of their customers ordered again within it (not the order the
        message was about). Read at most once an hour of `at` per context."""
        key = (context, window, at.replace(minute=0, second=0, microsecond=0))
        if key in self._learned:
            return self._learned[key]
        async with self._learning:  # one reading at a time: the others wait for it
            if key in self._learned:
                return self._learned[key]
            async with self.sessions() as s:
                grants = (
                    await s.execute(
                        select(
                            RemedyGrant.customer_id,
                            RemedyGrant.order_id,
                            RemedyGrant.granted_at,
                            RemedyGrant.arm,
                        ).where(
                            RemedyGrant.context == context,
                            RemedyGrant.arm.is_not(None),
                            # The facts of older ones may be gone (docs/outcomes.md).
                            RemedyGrant.granted_at >= at - window - LEARN_HORIZON,
                            RemedyGrant.granted_at <= at - window,
                            RemedyGrant.customer_id.not_like("erased-%"),
                        )
                    )
                ).all()
                orders = await self._orders_after(s, grants, window)
        found: dict[str, tuple[int, int]] = {}
        for customer, order_id, granted_at, arm in grants:
            again = any(
                granted_at < placed <= granted_at + window and other != order_id
                for placed, other in orders.get(customer, ())
            )
            trials, successes = found.get(str(arm), (0, 0))
            found[str(arm)] = (trials + 1, successes + int(again))
        stats = {arm: learning.ArmStats(t, n) for arm, (t, n) in found.items()}
        self._learned = {k: v for k, v in self._learned.items() if k[0] != context}
        self._learned[key] = stats
        return stats

    @staticmethod
    async def _orders_after(
        s: AsyncSession, grants: Sequence[Any], window: timedelta
    ) -> dict[str, list[tuple[datetime, str | None]]]:
        """The orders of the grants' customers placed in their windows."""
        found: dict[str, list[tuple[datetime, str | None]]] = {}
        if not grants:
            return found
        customers = sorted({g[0] for g in grants})
        since, until = min(g[2] for g in grants), max(g[2] for g in grants) + window
        for start in range(0, len(customers), 500):
            query = select(OutcomeEvent.customer_id, OutcomeEvent.at, OutcomeEvent.order_id).where(
                OutcomeEvent.customer_id.in_(customers[start : start + 500]),
                OutcomeEvent.kind == "order",
                OutcomeEvent.at > since,
                OutcomeEvent.at <= until,
            )
            for customer, placed, order_id in (await s.execute(query)).all():
                found.setdefault(customer, []).append((placed, order_id))
        return found

    async def _choose(
        self, s: AsyncSession, policy: Policy, candidates: list[domain.Priced], period: str
    ) -> tuple[domain.Priced | None, list[str]]:
        """The first candidate the period's budget still has room for (its cost added),
        and the reasons the ones before it were refused."""
        await s.execute(self._insert_budget, [{"period": period, "spent_cents": 0}])
        refused: list[str] = []
        for p in candidates:
            if p.cost is None:
                refused.append(domain.refusal(p, policy))
                REMEDIES.labels(p.remedy.kind, "unpriced").inc()
                continue
            cents = _cents(p.cost)
            query = update(RemedyBudget).where(RemedyBudget.period == period)
            if policy.cap is not None:
                query = query.where(RemedyBudget.spent_cents + cents <= _cents(policy.cap))
            fits = await s.execute(query.values(spent_cents=RemedyBudget.spent_cents + cents))
            if getattr(fits, "rowcount", 0) == 1:
                REMEDIES.labels(p.remedy.kind, "granted").inc()
                return p, refused
            spent = await s.get(RemedyBudget, period, populate_existing=True)
            refused.append(
                domain.refusal(p, policy, Decimal(spent.spent_cents if spent else 0) / 100)
            )
            REMEDIES.labels(p.remedy.kind, "over_budget").inc()
        return None, refused

    # --- redemptions, erasure, the studio's figures -------------------------------------

    async def redeem(self, codes: Iterable[str], order_id: str | None, at: datetime) -> int:
        """Codes used with an order: each use counted, the first one kept as the
        redemption. Returns how many were ours."""
        async with self._writing() as s:
            return await self.redeem_in(s, codes, order_id, at)

    @staticmethod
    async def redeem_in(
        s: AsyncSession, codes: Iterable[str], order_id: str | None, at: datetime
    ) -> int:
        """`redeem` in the caller's transaction (the outcome recorder's: the order is kept
        and its codes counted together, or neither), one statement per code."""
        found = 0
        for code in sorted({c.strip().upper() for c in codes if c and c.strip()}):
            kind = (
                await s.execute(select(RemedyGrant.kind).where(RemedyGrant.code == code))
            ).scalar_one_or_none()
            if kind is None:
                continue
            first_at = literal(at, UTCDateTime())
            await s.execute(
                update(RemedyGrant)
                .where(RemedyGrant.code == code)
                .values(
                    uses=RemedyGrant.uses + 1,
                    redeemed_at=func.coalesce(RemedyGrant.redeemed_at, first_at),
                    redeemed_order_id=func.coalesce(RemedyGrant.redeemed_order_id, order_id),
                )
            )
            uses = (
                await s.execute(select(RemedyGrant.uses).where(RemedyGrant.code == code))
            ).scalar_one()
            REMEDY_REDEMPTIONS.labels(kind, "first" if uses == 1 else "again").inc()
            found += 1
        return found

    async def forget_customer(self, customer_id: str, secret: str) -> int:
        """An erasure: grants are the shop's spending records, kept with the customer id
        replaced by a pseudonym (keyed by `secret`: not re-linkable from customer ids
        alone; the same for all of theirs)."""
        digest = hmac.new(secret.encode(), customer_id.encode(), hashlib.sha256).hexdigest()
        pseudonym = "erased-" + digest[:16]
        async with self._writing() as s:
            done = await s.execute(
                update(RemedyGrant)
                .where(RemedyGrant.customer_id == customer_id)
                .values(customer_id=pseudonym)
            )
        return int(getattr(done, "rowcount", 0) or 0)

    async def spent(self, period: str) -> Decimal:
        async with self.sessions() as s:
            row = await s.get(RemedyBudget, period)
        return Decimal(row.spent_cents if row else 0) / 100

    async def summary(self, period: str) -> list[dict[str, Any]]:
        """Per remedy kind in `period`: grants, their cost, codes redeemed and used again."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(
                    RemedyGrant.kind,
                    func.count(),
                    func.sum(RemedyGrant.cost_cents),
                    func.count(RemedyGrant.redeemed_at),
                    func.sum(RemedyGrant.uses),
                )
                .where(RemedyGrant.period == period)
                .group_by(RemedyGrant.kind)
            )
            return [
                {"kind": kind or "none", "grants": n, "cost": Decimal(cost or 0) / 100,
                 "redeemed": redeemed, "uses": int(uses or 0)}
                for kind, n, cost, redeemed, uses in rows.all()
            ]  # fmt: skip


def _in_order(candidates: list[domain.Priced], order: Sequence[str]) -> list[domain.Priced]:
    """The candidates in the learned order, up to "none" (chosen first: none tried)."""
    by_name = {str(p.remedy): p for p in candidates}
    ranked = []
    for name in order:
        if name == learning.NONE:
            break
        ranked.append(by_name[name])
    return ranked


def _columns(row: RemedyGrant) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in RemedyGrant.__table__.columns}


def _granted(
    chosen: tuple[domain.Priced | None, list[str]], decision_id: str, policy: Policy,
    facts: Facts, at: datetime, secret: str,
) -> dict[str, Any]:  # fmt: skip
    """The grant row's columns for what `_choose` found."""
    picked, refused = chosen
    if picked is None:
        return {"why": "; ".join([*refused, "no remedy"])}
    remedy, cost = picked.remedy, picked.cost or Decimal(0)
    why = "; ".join([*refused, f"{remedy}: {cost} {policy.currency} granted"])
    currency = (
        None
        if remedy.kind in ("percent", "free_shipping", "expedited_reship")
        else (facts.order_currency or policy.currency)
    )
    value = None if remedy.value is None else format(remedy.value.normalize(), "f")
    if remedy.kind in ("amount", "credit") and remedy.value is not None:
        value = str(remedy.value.quantize(domain.CENT))
    return {
        "kind": remedy.kind, "value": value, "currency": currency, "cost_cents": _cents(cost),
        "code": offer_code(decision_id, secret, policy.prefix) if remedy.kind in CODED else None,
        "expires_at": at + policy.valid_for, "why": why,
    }  # fmt: skip


def _grant(row: RemedyGrant, budget_currency: str) -> Grant:
    return Grant(
        decision_id=row.decision_id, kind=row.kind, value=row.value, currency=row.currency,
        code=row.code, expires_at=row.expires_at, cost=Decimal(row.cost_cents) / 100,
        budget_currency=budget_currency, why=row.why,
    )  # fmt: skip
