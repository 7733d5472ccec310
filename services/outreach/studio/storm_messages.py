"""The ledger's messages of one storm, for the studio's storm view: read only, and only
what the ledger's port does not offer (the worker never needs a storm's rows by its id;
it holds and releases them by their state). A row names its storm once it was about to
leave (adapters/ledger.py, `storm_id`): held with the storm it is scheduled with no
time; one that left keeps the name with its own status."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.outreach.adapters.ledger import Delivery

ROWS_LIMIT = 10_000  # as many as StormStore.members reads of the storm's incidents


class StormMessages:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def of_storm(self, storm_id: str, limit: int = ROWS_LIMIT) -> list[Delivery]:
        """Every message named in the storm, held or gone, the earliest decided first."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(Delivery)
                .where(Delivery.storm_id == storm_id)
                .order_by(Delivery.decided_at, Delivery.decision_id)
                .limit(limit)
            )
            return list(rows.scalars())
