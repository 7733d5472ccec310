"""Reads the decisions of a period and their customers' outcome facts, and compares
each experiment's arms (domain/outcomes.py); as a JSON document or text."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any

from common.metrics import EXPERIMENT_CUSTOMERS, EXPERIMENT_DIFFERENCE, EXPERIMENT_OUTCOME
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.domain import outcomes


async def build(
    store: OutcomeStore,
    *,
    since: datetime,
    until: datetime,
    now: datetime,
    currency: str | None = None,
    experiment: str | None = None,
    min_effect: Mapping[str, float] | None = None,
    slices: bool = True,
) -> dict[str, Any]:
    """The report of the customers first exposed to an experiment between `since` and
    `until`, their outcomes as of `now` (a window not yet over by then is not counted)."""
    exposed = await store.exposures(since, until)
    if experiment is not None:
        exposed = {k: v for k, v in exposed.items() if k == experiment}
    customers = {e.customer_id for rows in exposed.values() for e in rows}
    facts = await store.facts(customers, since)
    currency = currency or _main_currency(facts)
    groups = await asyncio.to_thread(  # the statistics off the event loop
        outcomes.report, exposed, facts, now, currency=currency, min_effect=min_effect,
        slices=slices,
    )  # fmt: skip
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "now": now.isoformat(),
        "currency": currency,
        "customers": len(customers),
        "experiments": [_group(g) for g in groups],
    }


def _main_currency(facts: Mapping[str, list[outcomes.Fact]]) -> str | None:
    seen = Counter(f.currency for rows in facts.values() for f in rows if f.kind == outcomes.ORDER)
    seen.pop(None, None)
    return seen.most_common(1)[0][0] if seen else None


def _group(group: outcomes.Group) -> dict[str, Any]:
    return {
        "experiment": group.experiment,
        "subject": group.subject,
        "slice": group.slice,
        "control_customers": group.control_customers,
        "treatment_customers": group.treatment_customers,
        "outcomes": [
            {**asdict(c), "title": outcomes.BY_NAME[c.metric].title} for c in group.comparisons
        ],
    }


def as_text(report: Mapping[str, Any]) -> str:
    """For people: one block per experiment (and slice), one line per outcome."""
    lines = [
        f"first exposed {report['since']} … {report['until']}, outcomes as of {report['now']}"
        f" (spend in {report['currency'] or 'every currency'}); {report['customers']}"
        " customers in experiments",
    ]
    if not report["experiments"]:
        lines.append("no experiment covered a decision in the period")
    for g in report["experiments"]:
        name = g["experiment"] + (f" [{g['slice']}]" if g["slice"] else "")
        lines += [
            "",
            f"{name} ({g['subject']}): {g['control_customers']} control,"
            f" {g['treatment_customers']} treatment customers",
        ]
        for o in g["outcomes"]:
            lines.append("  " + _line(o))
    return "\n".join(lines)


def _line(o: Mapping[str, Any]) -> str:
    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.3g}"

    interval = "" if o["low"] is None else f" [{num(o['low'])}, {num(o['high'])}]"
    needed = "" if o["needed_per_arm"] is None else f"; {o['needed_per_arm']} per arm to tell"
    return (
        f"{o['title']}: control {num(o['control'])} (n={o['control_n']}),"
        f" treatment {num(o['treatment'])} (n={o['treatment_n']}),"
        f" difference {num(o['difference'])}{interval} — {o['verdict']}{needed}"
    )


def export(report: Mapping[str, Any]) -> None:
    """The report's whole experiments as gauges for the business dashboard (those of
    experiments no longer in it are dropped)."""
    for gauge in (EXPERIMENT_CUSTOMERS, EXPERIMENT_OUTCOME, EXPERIMENT_DIFFERENCE):
        gauge.clear()
    for g in report["experiments"]:
        if g["slice"]:
            continue
        name = g["experiment"]
        EXPERIMENT_CUSTOMERS.labels(name, "control").set(g["control_customers"])
        EXPERIMENT_CUSTOMERS.labels(name, "treatment").set(g["treatment_customers"])
        for o in g["outcomes"]:
            for arm in ("control", "treatment"):
                if o[arm] is not None:
                    EXPERIMENT_OUTCOME.labels(name, arm, o["metric"]).set(o[arm])
            for bound, key in (("estimate", "difference"), ("low", "low"), ("high", "high")):
                if o[key] is not None:
                    EXPERIMENT_DIFFERENCE.labels(name, o["metric"], bound).set(o[key])
