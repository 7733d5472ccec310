"""Kafka in memory, for unit tests of the consumer loops: topics of partitions of
records, the committed offsets of consumer groups, and a consumer (`ConsumerPort`) that
reads them as aiokafka's does — per partition in offset order, from the group's
committed offset or the earliest record, with seek, pause and hand-made commits.

One consumer per group: it is assigned every partition of its topics at its first fetch
(no rebalancing between members). tests/contract/test_consumer.py holds it to the same
behaviour as aiokafka on the real broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.errors import IllegalStateError
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord, TopicPartition

from common.consumer import ConsumerPort


@dataclass
class LocalBroker:
    partitions: int = 4
    topics: dict[str, list[list[ConsumerRecord[bytes, bytes]]]] = field(default_factory=dict)
    committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    _arrived: asyncio.Event | None = field(default=None, init=False, repr=False)

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        self.topics.setdefault(name, [[] for _ in range(partitions or self.partitions)])

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp_ms: int | None = None,
    ) -> tuple[int, int]:
        """Append a record (to the partition Kafka's default partitioner gives its key);
        returns (partition, offset)."""
        self.create_topic(topic)
        log = self.topics[topic]
        partition = (murmur2(key) & 0x7FFFFFFF) % len(log) if key is not None else 0
        offset = len(log[partition])
        stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        record = ConsumerRecord(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=stamp,
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key or b""),
            serialized_value_size=len(value),
            headers=tuple(headers),
        )
        log[partition].append(record)
        if self._arrived is not None:
            self._arrived.set()
        return partition, offset

    def end(self, tp: TopicPartition) -> int:
        partitions = self.topics.get(tp.topic)
        return len(partitions[tp.partition]) if partitions else 0

    def consumer(
        self,
        bootstrap_servers: str,
        group_id: str,
        client_id: str,
        max_batch: int,
        session_timeout_s: float,
    ) -> LocalConsumer:
        """A `ConsumerFactory`: the group's consumer (the servers are ignored)."""
        return LocalConsumer(self, group_id, max_batch)

    async def wait_for_records(self, timeout_s: float) -> None:
        self._arrived = self._arrived or asyncio.Event()
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return


class LocalConsumer:
    def __init__(self, broker: LocalBroker, group_id: str, max_batch: int) -> None:
        self.broker = broker
        self.group_id = group_id
        self.max_batch = max_batch
        self._topics: list[str] = []
        self._listener: Any = None
        self._positions: dict[TopicPartition, int] = {}
        self._fetched: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._assigned = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._assigned and self._listener is not None:
            await self._listener.on_partitions_revoked(set(self._positions))
        self._positions, self._assigned = {}, False

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self._topics, self._listener = list(topics), listener

    async def _assign(self) -> None:
        for topic in self._topics:
            self.broker.create_topic(topic)
            for partition in range(len(self.broker.topics[topic])):
                tp = TopicPartition(topic, partition)
                self._positions[tp] = self.broker.committed.get((self.group_id, tp), 0)
        self._assigned = True
        if self._listener is not None:
            await self._listener.on_partitions_assigned(set(self._positions))

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[Any]]:
        if not self._assigned:
            await self._assign()
        batch = self._fetch(max_records or self.max_batch)
        if not batch and timeout_ms > 0:
            await self.broker.wait_for_records(timeout_ms / 1000)
            batch = self._fetch(max_records or self.max_batch)
        return batch

    def _fetch(self, limit: int) -> dict[Any, list[Any]]:
        batch: dict[Any, list[Any]] = {}
        for tp, position in self._positions.items():
            if tp in self._paused or limit <= 0:
                continue
            records = self.broker.topics[tp.topic][tp.partition][position : position + limit]
            self._fetched.add(tp)
            if records:
                batch[tp] = records
                self._positions[tp] = position + len(records)
                limit -= len(records)
        return batch

    def highwater(self, tp: Any) -> int | None:
        return self.broker.end(tp) if tp in self._fetched else None

    async def position(self, tp: Any) -> int:
        return self._positions[self._owned(tp)]

    async def commit(self, offsets: dict[Any, int] | None = None) -> None:
        for tp, offset in (offsets if offsets is not None else self._positions).items():
            self.broker.committed[(self.group_id, self._owned(tp))] = offset

    def seek(self, tp: Any, offset: int) -> None:
        self._positions[self._owned(tp)] = offset

    def pause(self, *tps: Any) -> None:
        self._paused |= {self._owned(tp) for tp in tps}

    def resume(self, *tps: Any) -> None:
        self._paused -= set(tps)

    def assignment(self) -> set[Any]:
        return set(self._positions)

    async def end_offsets(self, tps: Sequence[Any]) -> dict[Any, int]:
        return {tp: self.broker.end(tp) for tp in tps}

    def _owned(self, tp: Any) -> TopicPartition:
        if tp not in self._positions:
            raise IllegalStateError(f"{tp} is not assigned")
        return TopicPartition(tp.topic, tp.partition)


if TYPE_CHECKING:
    _contract: ConsumerPort = LocalConsumer(LocalBroker(), "group", 1)

__all__ = ["LocalBroker", "LocalConsumer"]
