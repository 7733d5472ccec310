"""Upgrade outreach's database (the delivery ledger, templates, the studio's tables) to
the newest migration and exit (the chart's pre-install/pre-upgrade Job runs it before any
worker or studio starts; they also upgrade at start-up, one at a time).

    python -m services.outreach.migrate
"""

from __future__ import annotations

import asyncio

from common.logs import configure_logging, get_logger
from services.outreach.adapters.db import create_engine, create_schema
from services.outreach.config import Settings

SERVICE = "outreach"


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    url = settings.db_url()
    asyncio.run(_migrate(url))
    get_logger(__name__).info("migrated", database=url.split(":", 1)[0])


if __name__ == "__main__":
    main()
