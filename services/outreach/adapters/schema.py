"""Every outreach table, for the migrations (services/outreach/migrations/env.py) and
the test that compares them with the models: the modules that declare tables on
`adapters.db.Base`, imported here and not by db.py, which each of them imports."""

from __future__ import annotations

from sqlalchemy import MetaData

from services.outreach.adapters import (
    controls,
    conversations,
    ledger,
    outcomes,
    remedies,
    storms,
    templates,
)
from services.outreach.adapters.db import Base
from services.outreach.studio import accounts, rehearsals

#: The modules whose tables make up outreach's schema.
TABLE_MODULES = (
    controls,
    ledger,
    conversations,
    outcomes,
    remedies,
    storms,
    templates,
    accounts,
    rehearsals,
)


def all_tables() -> MetaData:
    """`Base.metadata`, with every outreach table in it."""
    return Base.metadata


__all__ = ["TABLE_MODULES", "all_tables"]
