"""Every private part of faust-streaming (and of the aiokafka client inside it) that the
services rely on, in one place, each with what it is for. None of it is faust's API: a
new version may move it, so tests/unit/test_faust_private.py checks each part on the
version the lock pins (FAUST_STREAMING) and fails, naming the part, when one moves.

Not fenced here: common/batched_input.py's consumer thread, a subclass of faust's own
(its drain loop), and common/recovery.py's bulk copy, an override of faust's recovery;
each is written against the same pinned version.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import Any

from faust.streams import _current_event

#: The faust-streaming version these parts were read from (uv.lock pins it).
FAUST_STREAMING = "0.15.3"


# --- the consumer -------------------------------------------------------------------------


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The group's committed offset of `tp` as the consumer last read it (None: none)."""
    committed: dict[Any, int | None] = getattr(consumer, "_committed_offset", {})
    return committed.get(tp)


def leave_unacked(consumer: Any, message: Any) -> None:
    """Keep faust from counting a record as done: a message already marked acked is not
    acknowledged to the consumer again, so its offset holds the commit back."""
    message.acked = True
    unacked = getattr(consumer, "_unacked_messages", None)
    if unacked is not None:
        unacked.discard(message)


def hold_commit(consumer: Any, marker: Any) -> None:
    """Count `marker` among the consumer's unacknowledged messages: a rebalance waits
    for it (`stream_wait_empty`) until `release_commit`."""
    consumer._unacked_messages.add(marker)


def release_commit(consumer: Any, marker: Any) -> None:
    consumer._unacked_messages.discard(marker)
    from mode.utils.futures import notify

    notify(consumer._waiting_for_ack)


# --- the producer -------------------------------------------------------------------------


def flush_now(producer: Any) -> Callable[[], Awaitable[None]] | None:
    """What sends the records aiokafka holds for its linger at once (None: not started,
    or not found): it closes the batches being filled and wakes the sender."""
    client = getattr(producer, "_producer", None)
    accumulator = getattr(client, "_message_accumulator", None)
    flush: Callable[[], Awaitable[None]] | None = getattr(accumulator, "flush_for_commit", None)
    return flush


# --- the current event --------------------------------------------------------------------


def set_current_event(event: Any) -> Token[Any]:
    """Make `event` the one faust's tables take a key's partition from."""
    return _current_event.set(weakref.ref(event))


def reset_current_event(token: Token[Any]) -> None:
    _current_event.reset(token)


# --- table stores -------------------------------------------------------------------------


def is_rocksdb(store: Any) -> bool:
    return hasattr(store, "_db_for_partition")


def rocksdb_partition(store: Any, partition: int) -> Any:
    """The RocksDB database of one partition of a RocksDB store."""
    return store._db_for_partition(partition)


def store_key(store: Any, key: str) -> bytes:
    """`key` as a RocksDB store keeps it."""
    encoded: bytes = store._encode_key(key)
    return encoded


def memory_partitions(store: Any) -> dict[Any, int]:
    """A memory store's key → partition map (what it forgets on revocation)."""
    partitions: dict[Any, int] = store._key_partition
    return partitions


def has_changelog_hook(table: Any) -> bool:
    """Whether the table does something of its own with each changelog record read."""
    return bool(getattr(table, "_on_changelog_event", None))


__all__ = [
    "FAUST_STREAMING",
    "committed_offset",
    "flush_now",
    "has_changelog_hook",
    "hold_commit",
    "is_rocksdb",
    "leave_unacked",
    "memory_partitions",
    "release_commit",
    "reset_current_event",
    "rocksdb_partition",
    "set_current_event",
    "store_key",
]
