"""Table recovery that reads a changelog in bulk before faust's own record-by-record pass.

Faust rebuilds a table by passing every changelog record through its consumer's drain
loop, the conductor, an event and its recovery loop: about 5,000 records a second on
one core here, so a million open orders took more than three minutes after a pod lost
its data dir (docs/performance.md, "Recovery"). The records are already what a
RocksDB store holds (serialized key and value), so `BulkRecovery` copies them in: when
recovery starts, for each active changelog partition of a RocksDB table with more than
`min_records` to read, a plain aiokafka consumer (no group, the partition assigned)
fetches from the table's persisted offset to the highwater, and each fetched batch is
written with the store's own `apply_changelog_batch` (one RocksDB write batch and the
persisted offset). Faust then seeks past what was copied and reads whatever is left
(what arrived meanwhile, or what did not fit in the time budget) the ordinary way.

What it promises: the store ends exactly as faust's own pass would leave it (same
records, same order, same persisted offset); a batch is written whole or not at all, so
an interruption (another rebalance, the budget, a crash) leaves the store at a batch
boundary and faust, or the next recovery, carries on from the persisted offset — a
record applied twice is the same put again. Anything it cannot handle (a memory store,
a table with a changelog hook, a broker error) falls back to faust's pass.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from common import faust_private, kafka_security
from common.logs import get_logger

log = get_logger(__name__)


class _Record:
    """A changelog record in the shape a faust store applies (`event.message.…`)."""

    __slots__ = ("key", "offset", "partition", "tp", "value")

    def __init__(self, tp: TP, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.tp = tp
        self.offset = offset
        self.key = key
        self.value = value
        self.partition = tp.partition

    @property
    def message(self) -> _Record:
        return self


def bulk_loadable(table: Any) -> bool:
    """Whether a table's changelog can be copied into its store as raw records: a store
    that keeps serialized bytes (RocksDB) and no per-record changelog hook."""
    store = table.data
    return faust_private.is_rocksdb(store) and not faust_private.has_changelog_hook(table)


class BulkRecovery(Recovery):
    #: Partitions with fewer records to read than this go through faust's pass (a
    #: consumer connection costs more than it saves there).
    min_records = 5_000
    #: Records handed to the store per write.
    batch_records = 5_000

    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await super()._build_offsets(consumer, tps, destination, title)
        if title != "active":
            return
        todo = {
            tp: (destination[tp], self.active_highwaters[tp])
            for tp in tps
            if tp in self.tp_to_table
            and bulk_loadable(self.tp_to_table[tp])
            and self.active_highwaters.get(tp) is not None
            and self.active_highwaters[tp] - destination[tp] >= self.min_records
        }
        if todo:
            await self._bulk_load(todo, destination)

    def _budget_s(self) -> float:
        # Faust cancels this step after broker_request_timeout; stop well before, so the
        # last write is ours and the log says how far it got.
        return 0.75 * float(self.app.conf.broker_request_timeout)

    def _apply(
        self, tp: TP, records: list[Any], todo: dict[TP, tuple[int, int]], destination: Any
    ) -> int:
        """One write of fetched records into the table's store; how many it wrote."""
        highwater = todo[tp][1]
        batch = [_Record(tp, r.offset, r.key, r.value) for r in records if r.offset <= highwater]
        if batch:
            table: Any = self.tp_to_table[tp]
            table.apply_changelog_batch(batch)
            destination[tp] = batch[-1].offset
        return len(batch)

    def _reader(self, partitions: int) -> AIOKafkaConsumer:
        """A consumer outside any group, fetching as much as `partitions` can take."""
        conf = self.app.conf
        return AIOKafkaConsumer(
            bootstrap_servers=",".join(f"{url.host}:{url.port or 9092}" for url in conf.broker),
            client_id=f"{conf.broker_client_id}-recovery",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed" if self.app.in_transaction else "read_uncommitted",
            max_partition_fetch_bytes=conf.consumer_max_fetch_size,
            fetch_max_bytes=max(conf.consumer_max_fetch_size * partitions, 50 * 1024 * 1024),
            # Tables hold what the service wrote: no client-side CRC pass over them again.
            check_crcs=False,
            **kafka_security.client_options(),
        )

    async def _bulk_load(self, todo: dict[TP, tuple[int, int]], destination: Any) -> None:
        """Copy each partition's records after its start offset up to its highwater
        (the last offset, as faust counts) into the table's store."""
        started = time.monotonic()
        deadline = started + self._budget_s()
        reader = self._reader(len(todo))
        copied = {tp: 0 for tp in todo}
        try:
            await reader.start()
            parts = {TopicPartition(tp.topic, tp.partition): tp for tp in todo}
            reader.assign(list(parts))
            for part, tp in parts.items():
                reader.seek(part, max(todo[tp][0] + 1, 0))
            pending = dict(parts)
            while pending and time.monotonic() < deadline:
                if self.signal_recovery_start.is_set():
                    break  # another rebalance: faust restarts recovery
                fetched = await reader.getmany(
                    *pending, timeout_ms=1000, max_records=self.batch_records
                )
                for part, records in fetched.items():
                    if part in pending and records:
                        copied[parts[part]] += self._apply(parts[part], records, todo, destination)
                for part, tp in list(pending.items()):
                    # Compaction leaves gaps: done once the position is past the
                    # highwater, whether or not its last offset still exists.
                    highwater = todo[tp][1]
                    if await reader.position(part) > highwater:
                        del pending[part]
                        reader.pause(part)
                        if destination[tp] < highwater:
                            table: Any = self.tp_to_table[tp]
                            table.data.set_persisted_offset(tp, highwater)
                            destination[tp] = highwater
        except Exception as exc:
            # Not fatal: faust's own pass reads whatever this did not copy.
            log.warning("changelog_bulk_load_failed", error=repr(exc))
        finally:
            await reader.stop()
            log.info(
                "changelog_bulk_loaded",
                records=sum(copied.values()),
                partitions=len(todo),
                unfinished=sorted(
                    f"{tp.topic}:{tp.partition}" for tp in todo if destination[tp] < todo[tp][1]
                ),
                seconds=round(time.monotonic() - started, 2),
            )


class BulkRecoveryTableManager(TableManager):
    """Faust's table manager with `BulkRecovery` (app setting `TableManager`)."""

    min_records = BulkRecovery.min_records

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            recovery = BulkRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
            recovery.min_records = self.min_records
            self._recovery = recovery
        return self._recovery


def table_manager(min_records: int | None) -> type[TableManager]:
    """The app's `TableManager`: bulk recovery from `min_records` records to read in a
    partition, or faust's own (None)."""
    if min_records is None:
        return TableManager
    return type("TableManager", (BulkRecoveryTableManager,), {"min_records": min_records})
