"""Upgrade preferences' database to the newest migration and exit (the chart's
pre-install/pre-upgrade Job runs it before any replica starts; replicas also upgrade at
start-up, one at a time, so a database without the Job is upgraded all the same).

    python -m services.preferences.migrate
"""

from __future__ import annotations

from common.logs import configure_logging, get_logger
from services.preferences.adapters.store import migrate
from services.preferences.config import Settings

SERVICE = "preferences"


def main() -> None:
    settings = Settings()
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    url = settings.db_url()
    migrate(url)
    get_logger(__name__).info("migrated", database=url.split(":", 1)[0])


if __name__ == "__main__":
    main()
