"""How an order is kept in the `orders` table: its state and its next deadline in one
JSON value, so that one changelog record per change carries both.

    {"deadline": {"at": <epoch seconds>, "p": <input partition>} | null, "state": {...}}

The value is assembled around pydantic's JSON of the state (no second encoding) and
taken apart the same way: `state_of` cuts the state out without parsing the deadline,
`deadline_of` parses only the deadline (the index rebuild after a rebalance reads
nothing else). Values written before the deadline moved into this table (the state
alone) still load; they carry no deadline, so such an order is dated again by its
next record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any, Final, Protocol

import orjson

PREFIX: Final = b'{"deadline":'
SEPARATOR: Final = b',"state":'

Deadline = tuple[float, int]


class OrderTable(Protocol):
    """The `orders` table by partition (common.tables.PartitionedTable): only the worker a
    partition is assigned to reads and writes it."""

    def get(self, partition: int, key: str) -> bytes | None:
        """The order's value, or None."""

    async def write(
        self, partition: int, changes: Iterable[tuple[str, bytes | None]]
    ) -> list[Awaitable[Any]]:
        """Put (None: delete) each order's value; returns the changelog's acknowledgements."""

    def forget(self) -> None:
        """A rebalance: partitions may have moved, what is kept per partition goes."""


def encode(state_json: bytes, deadline: Deadline | None) -> bytes:
    head = b"null" if deadline is None else orjson.dumps({"at": deadline[0], "p": deadline[1]})
    return b"".join((PREFIX, head, SEPARATOR, state_json, b"}"))


def state_of(value: bytes) -> bytes:
    """The state's JSON."""
    if not value.startswith(PREFIX):
        return value  # an older value: the state alone
    cut = value.index(SEPARATOR, len(PREFIX))
    return value[cut + len(SEPARATOR) : -1]


def deadline_of(value: bytes) -> Deadline | None:
    """(moment, partition), or None: the order waits for nothing (or an older value)."""
    if not value.startswith(PREFIX):
        return None
    head = orjson.loads(value[len(PREFIX) : value.index(SEPARATOR, len(PREFIX))])
    return None if head is None else (float(head["at"]), int(head["p"]))
