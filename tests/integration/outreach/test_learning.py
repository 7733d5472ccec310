"""The remedy learner in a simulated shop, on a real database (PostgreSQL):
fifty days of apologies whose rule says `learn`, thirty customers a day, a daily budget
too small for everyone to get the most effective remedy. The simulated customers
(simulator/responses.py) order again within two weeks by hidden true effects — a 10 %
code lifts it by 20 points for 5 EUR, a 10 EUR code by 5 points, free shipping by 2 —
and their orders are kept as outcome facts; the learner measures two-week windows. Only
outside effects are read: the grants' reasons and the budget in the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.adapters.remedies import RemedyBudget, RemedyGrant, RemedyStore
from services.outreach.domain import outcomes
from services.outreach.domain.remedies import Facts
from simulator.responses import Customers, Truth

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAYS, PER_DAY, CAP = 50, 30, Decimal("120")
POLICY = {
    "currency": "EUR",
    "budget": {"period": "day", "cap": str(CAP)},
    "costs": {"free_shipping": "4.90"},
    "rules": [
        {
            "intents": ["apology"],
            "offer": ["amount:10", "percent:10", "free_shipping"],
            "learn": {"window_days": 14, "exploration": 0.1},
        }
    ],
}
TRUTH = Truth(
    repeat=0.20,
    message=0.0,
    remedies={"amount:10": 0.05, "percent:10": 0.20, "free_shipping": 0.02},
)


async def test_the_learner_finds_the_best_remedy_per_euro_within_the_budget(
    postgres_database_url,
):
    # PostgreSQL only: the learner decides alike on either database (the grant's
    # SQL is shown on both in test_remedies.py), and fifty days take half a minute.
    engine = create_engine(postgres_database_url)
    await create_schema(engine)
    sessions = session_factory(engine)
    remedies, facts_store = RemedyStore(sessions), OutcomeStore(sessions)
    version = await remedies.save_draft(POLICY, "admin-1", "learn", T0)
    await remedies.publish(version, "admin-1", T0)
    customers = Customers(TRUTH, seed=21, window=timedelta(days=14))
    facts = Facts("delivery_late", "apology", "warning", "standard", None, Decimal("50"), "EUR")
    try:
        for day in range(DAYS):
            for n in range(PER_DAY):
                at = T0 + timedelta(days=day, minutes=10 * n)
                cid = f"c-{day}-{n}"
                grant = await remedies.grant(f"d-{day}-{n}", cid, f"o-{cid}", facts, at, "s")
                assert grant is not None
                got = None if grant.kind is None else _arm(grant.kind, grant.value)
                for emission in customers.answer(cid, at, messaged=True, remedy=got):
                    event = emission.event
                    assert event is not None
                    fact = outcomes.fact_of(event.type, event.id, event.time, event.data)
                    if fact is not None:
                        await facts_store.record(fact)
        async with sessions() as s:
            last = (
                (
                    await s.execute(
                        select(RemedyGrant.why).where(
                            RemedyGrant.granted_at >= T0 + timedelta(days=DAYS - 10)
                        )
                    )
                )
                .scalars()
                .all()
            )
            budgets = (await s.execute(select(RemedyBudget.spent_cents))).scalars().all()
        _, policy = await remedies.policy()
        context = f"{policy.rules[0].key}|delivery_late|standard"
        stats = await remedies.learned(context, timedelta(days=14), T0 + timedelta(days=DAYS))
    finally:
        await engine.dispose()
    best_first = sum(w.startswith("learning: percent:10 ranked first") for w in last)
    assert best_first >= 0.75 * len(last), (best_first, len(last))  # exploration aside
    assert max(budgets) <= int(CAP * 100)  # never past the day's cap
    assert len(budgets) == DAYS and min(budgets) >= 80 * 100  # and the budget was used
    trials = {arm: s.trials for arm, s in stats.items()}
    assert trials["percent:10"] > 2 * max(trials["amount:10"], trials["free_shipping"])


def _arm(kind: str, value: str | None) -> str:
    """The policy's name of a granted remedy (how the truth knows it)."""
    if value is None:
        return kind
    return f"{kind}:{Decimal(value).normalize():f}"
