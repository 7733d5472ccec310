"""Outcomes (docs/outcomes.md): each experiment's control and treatment compared on what
became of their customers — orders, spend, returns, contacts, feedback, opt-outs — with
the difference, its 95 % confidence interval and how many customers it takes to tell.

Every role may look: the page shows counts and rates, never a customer. The report is
built from the ledger and the outcome events (outcome_report/build.py) at most once a
minute per period and experiment."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from aiohttp import web

from common.clock import wall_now
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.domain.outcomes import BY_NAME
from services.outreach.outcome_report.build import build
from services.outreach.studio.accounts import VIEW
from services.outreach.studio.context import require, studio_of

PERIODS = (30, 90, 180, 365)  # days of decisions the page may look back over
FRESH_S = 60.0
_kept: dict[tuple[int, str], tuple[float, dict[str, Any]]] = {}


async def outcomes(request: web.Request) -> web.Response:
    require(request, VIEW)
    studio = studio_of(request)
    try:
        days = int(request.query.get("days", "90"))
    except ValueError:
        days = 0
    if days not in PERIODS:
        allowed = ", ".join(map(str, PERIODS))
        return studio.error(request, 400, "No such period", f"Look back {allowed} days.")
    experiment = request.query.get("experiment", "")[:64]
    key = (days, experiment)
    kept = _kept.get(key)
    if kept is None or kept[0] < time.monotonic():
        now = wall_now()
        report = await build(
            OutcomeStore(studio.accounts.sessions),
            since=now - timedelta(days=days), until=now, now=now,
            experiment=experiment or None,
        )  # fmt: skip
        kept = (time.monotonic() + FRESH_S, report)
        _kept[key] = kept
    report = kept[1]
    return studio.page(
        request,
        "outcomes.html",
        report=report,
        days=days,
        periods=PERIODS,
        experiment=experiment,
        kinds={name: m.kind for name, m in BY_NAME.items()},
    )
