"""Stand-ins for the runtime's adapters in unit tests."""

from __future__ import annotations

from typing import Any


class Table:
    """The orders table as the runtime uses it (common.tables.PartitionedTable); counts
    reads."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.reads = 0

    def get(self, partition: int, key: str) -> bytes | None:
        self.reads += 1
        return self.values.get(key)

    async def write(self, partition: int, changes: list[tuple[str, bytes | None]]) -> list[Any]:
        for key, value in changes:
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value
        return []

    def forget(self) -> None:
        return None
