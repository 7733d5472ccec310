"""Outcomes (docs/outcomes.md): each experiment's control and treatment compared on what
became of their customers — orders, spend, returns, contacts, feedback, opt-outs — with
the difference, its 95 % confidence interval and how many customers it takes to tell.

Every role may look: the page shows counts and rates, never a customer. The report is
built from the exposures and the outcome events (outcome_report/build.py) at most once a
minute per period; an arm with fewer than five customers shows no figures."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from aiohttp import web

from common.clock import wall_now
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.domain.outcomes import BY_NAME, LONGEST
from services.outreach.outcome_report.build import build
from services.outreach.studio.accounts import VIEW
from services.outreach.studio.context import Studio, require, studio_of

# Days back the customers' first exposure may be: 90-day outcomes need exposures at
# least 90 days old, so the default looks back twice that.
PERIODS = (90, 180, 365)
DEFAULT_DAYS = 180
FRESH_S = 60.0


async def report_of(studio: Studio, days: int) -> dict[str, Any]:
    """The report of the period, built at most once a minute."""
    kept = studio.outcome_reports.get(days)
    if kept is None or kept[0] < time.monotonic():
        now = wall_now()
        report = await build(
            OutcomeStore(studio.accounts.sessions),
            since=now - timedelta(days=days), until=now, now=now,
        )  # fmt: skip
        kept = studio.outcome_reports[days] = (time.monotonic() + FRESH_S, report)
    return kept[1]


async def outcomes(request: web.Request) -> web.Response:
    require(request, VIEW)
    studio = studio_of(request)
    try:
        days = int(request.query.get("days", str(DEFAULT_DAYS)))
    except ValueError:
        days = 0
    if days not in PERIODS:
        allowed = ", ".join(map(str, PERIODS))
        return studio.error(request, 400, "No such period", f"Look back {allowed} days.")
    report = await report_of(studio, days)
    names = sorted({g["experiment"] for g in report["experiments"]})
    experiment = request.query.get("experiment", "")
    if experiment and experiment not in names:
        detail = f"No experiment of that name has customers in the last {days} days."
        return studio.error(request, 404, "No such experiment", detail)
    if experiment:
        chosen = [g for g in report["experiments"] if g["experiment"] == experiment]
        report = {**report, "experiments": chosen}
    kept = studio.settings.ledger_retention_days + LONGEST.days  # outcome facts' life
    return studio.page(
        request,
        "outcomes.html",
        facts_kept_days=int(kept) if days > kept else None,
        report=report,
        days=days,
        periods=PERIODS,
        experiment=experiment,
        names=names,
        kinds={name: m.kind for name, m in BY_NAME.items()},
    )
