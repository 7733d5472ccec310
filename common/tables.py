"""A faust table read and written by explicit partition, a batch of writes at a time.

Faust lets a table change only inside stream iteration: a write takes its partition
from the current event, goes to the store, and sends a changelog record through faust's
producer buffer, whose acknowledgement then writes the changelog offset into the store
(one more RocksDB put per write). A service that handles records in batches knows each
key's partition itself (the input partition it came on: tables are co-partitioned
with their inputs) and writes many keys at once. `PartitionedTable` does what faust's
write does, for a batch: the values go into the store in one write batch per
partition, one changelog record per key straight to the producer, and once the
partition's records are acknowledged, the changelog offset is persisted once. What it
writes is byte for byte what faust writes (same key and value encoding), so faust's
recovery, standby and iteration read it as their own.

The order of writes across batches is kept per partition: the producer keeps the
order of records per partition, and a changelog offset is persisted only after every
earlier write of the partition is acknowledged (persisting a later offset first would
let a restart skip an earlier record that never reached the log).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from functools import partial
from typing import Any

from faust.types import TP

from common import faust_private
from common.logs import get_logger

log = get_logger(__name__)

Change = tuple[str, bytes | None]  # key, value (None: delete the key)


class PartitionedTable:
    """`table`'s values as bytes, by partition. Only the owner of a partition (the worker
    it is assigned to) writes it, from one task."""

    def __init__(self, app: Any, table: Any) -> None:
        self.app = app
        self.table = table
        self.changelog = table.changelog_topic.get_topic_name()
        # Per partition: the acknowledgement of the latest batch written.
        self._latest: dict[int, asyncio.Future[int | None]] = {}

    @property
    def _store(self) -> Any:
        return self.table.data

    def _rocksdb(self) -> bool:
        return faust_private.is_rocksdb(self._store)

    def key_bytes(self, key: str) -> bytes:
        return faust_private.store_key(self._store, key) if self._rocksdb() else key.encode()

    def get(self, partition: int, key: str) -> bytes | None:
        store = self._store
        if self._rocksdb():
            db = faust_private.rocksdb_partition(store, partition)
            value: bytes | None = db.get(faust_private.store_key(store, key))
            return value
        found: bytes | None = store.data.get(key)
        return found

    async def write(self, partition: int, changes: Iterable[Change]) -> list[Awaitable[Any]]:
        """Put (or with None delete) each key's value in the store and its changelog.
        Returns the changelog records' acknowledgements; the changelog offset is persisted
        on its own once they (and every earlier write of the partition) are in."""
        encoded = [(key, self.key_bytes(key), value) for key, value in changes]
        if not encoded:
            return []
        self._apply(partition, encoded)
        acks: list[Awaitable[Any]] = []
        send = self.app.producer.send
        topic = self.changelog
        for _, key, value in encoded:
            acks.append(
                await send(topic, key, value, partition=partition, timestamp=None, headers=None)
            )
        self._persist_when_sent(partition, acks)
        return acks

    def _apply(self, partition: int, changes: list[tuple[str, bytes, bytes | None]]) -> None:
        store = self._store
        if self._rocksdb():
            from rocksdict import WriteBatch

            batch = WriteBatch(raw_mode=True)
            for _, encoded, value in changes:
                if value is None:
                    batch.delete(encoded)
                else:
                    batch.put(encoded, value)
            faust_private.rocksdb_partition(store, partition).write(batch)
            return
        # faust's memory store keeps decoded keys and values, and each key's partition.
        partitions = faust_private.memory_partitions(store)
        for key, _, value in changes:
            if value is None:
                store.data.pop(key, None)
                partitions.pop(key, None)
            else:
                store.data[key] = value
                partitions[key] = partition

    def _persist_when_sent(self, partition: int, acks: list[Awaitable[Any]]) -> None:
        previous = self._latest.get(partition)
        done: asyncio.Future[int | None] = asyncio.ensure_future(
            self._highest_offset(previous, acks)
        )
        self._latest[partition] = done
        done.add_done_callback(partial(self._persist, partition))

    async def _highest_offset(
        self, previous: asyncio.Future[int | None] | None, acks: list[Awaitable[Any]]
    ) -> int | None:
        results = await asyncio.gather(*acks, return_exceptions=True)
        if previous is not None:
            await asyncio.wait([previous])
            if previous.cancelled() or previous.exception() is not None:
                raise RuntimeError("an earlier changelog write of the partition failed")
        offsets: list[int] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            offsets.append(int(result.offset))
        return max(offsets)

    def _persist(self, partition: int, done: asyncio.Future[int | None]) -> None:
        if self._latest.get(partition) is done:
            del self._latest[partition]
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            # Nothing persisted: a restart reads the changelog from the last offset that
            # was, which is safe. The writer learns of the failure from its own acks.
            log.warning("changelog_offset_not_persisted", partition=partition, error=repr(error))
            return
        offset = done.result()
        store = self._store
        # Only into a partition's database that is still open: a rebalance may have
        # closed it meanwhile (then a restart merely reads a little more of the log).
        if offset is not None and self._rocksdb() and partition in store._dbs:
            store.set_persisted_offset(TP(self.changelog, partition), offset)

    def forget(self) -> None:
        """Drop the pending offset bookkeeping (a rebalance: partitions may have moved)."""
        self._latest.clear()


__all__ = ["Change", "PartitionedTable"]
