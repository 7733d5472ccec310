"""`outreachctl outcomes` (docs/outcomes.md): the outcome report from outreach's
database (OUTREACH_DATABASE_URL, as the worker and the studio use it).

    python -m services.outreach.outcome_report [--since 180d] [--until ...] [--now ...]
        [--currency EUR] [--experiment NAME] [--min-effect repeat_30=0.02] [--output json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

from services.outreach.adapters.db import create_engine, session_factory
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.config import Settings
from services.outreach.domain.outcomes import BY_NAME
from services.outreach.outcome_report.build import as_text, build


def moment(text: str) -> datetime:
    """`90d`, `12h` (that long ago) or an RFC 3339 time."""
    if text[:-1].isdigit() and text[-1] in "dh":
        unit = {"d": "days", "h": "hours"}[text[-1]]
        return datetime.now(UTC) - timedelta(**{unit: int(text[:-1])})
    found = datetime.fromisoformat(text)
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def effect(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in BY_NAME:
        raise argparse.ArgumentTypeError(f"no outcome {name!r}; known: {', '.join(BY_NAME)}")
    return name, float(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outreachctl outcomes", description=__doc__)
    p.add_argument(
        "--since", type=moment, default="180d",
        help="customers first exposed from (default 180d: 90-day outcomes need 90 days)",
    )  # fmt: skip
    p.add_argument("--until", type=moment, default=None, help="... until (default now)")
    p.add_argument("--now", type=moment, default=None, help="outcomes as of (default now)")
    p.add_argument("--currency", default=None, help="spend in (default the most common)")
    p.add_argument("--experiment", default=None, help="only this experiment")
    p.add_argument(
        "--min-effect", type=effect, action="append", default=[],
        help="OUTCOME=DIFFERENCE: the smallest difference worth telling (for the customers"
        " needed), e.g. repeat_30=0.02",
    )  # fmt: skip
    p.add_argument("--output", choices=("text", "json"), default="text")
    return p


async def run(args: argparse.Namespace) -> int:
    engine = create_engine(Settings().db_url())
    now = args.now or datetime.now(UTC)
    try:
        report = await build(
            OutcomeStore(session_factory(engine)),
            since=args.since, until=args.until or now, now=now, currency=args.currency,
            experiment=args.experiment, min_effect=dict(args.min_effect),
        )  # fmt: skip
    finally:
        await engine.dispose()
    print(json.dumps(report, indent=2) if args.output == "json" else as_text(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
