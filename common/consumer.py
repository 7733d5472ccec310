"""The consumer as the plain consumer loops use it (common.kafka.ConsumerLoop,
common.aligned_consumer): the part of aiokafka's `AIOKafkaConsumer` they call, as a
port, so that a loop can run on the in-memory `LocalBroker` in unit tests
(common/local_broker.py). tests/contract/test_consumer.py runs one suite on both, the
local one and aiokafka on the real broker.

Partitions are aiokafka's `TopicPartition` and records its `ConsumerRecord`, whichever
side: the loops build and compare them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from common import kafka_security


class ConsumerPort(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        """Join the group for `topics`; `listener` (aiokafka's ConsumerRebalanceListener)
        hears of every assignment and revocation."""

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[Any]]:
        """The records fetched since the last call, per partition in offset order; waits
        up to `timeout_ms` for some."""

    def highwater(self, tp: Any) -> int | None:
        """The partition's end offset as the last fetch saw it (None: not fetched yet)."""

    async def position(self, tp: Any) -> int: ...
    async def commit(self, offsets: dict[Any, int] | None = None) -> None:
        """Commit `offsets` for the group (None: every assigned partition's position)."""

    def seek(self, tp: Any, offset: int) -> None: ...
    def pause(self, *tps: Any) -> None: ...
    def resume(self, *tps: Any) -> None: ...
    def assignment(self) -> set[Any]: ...
    async def end_offsets(self, tps: Sequence[Any]) -> dict[Any, int]: ...


#: Makes a group's consumer: (bootstrap servers, group id, client id, max records a
#: fetch, session timeout in seconds).
ConsumerFactory = Callable[[str, str, str, int, float], ConsumerPort]


def aiokafka_consumer(
    bootstrap_servers: str, group_id: str, client_id: str, max_batch: int, session_timeout_s: float
) -> ConsumerPort:
    """aiokafka's consumer as the loops run it: offsets committed by hand, from the
    earliest record of a partition the group never committed, committed records only."""
    from aiokafka import AIOKafkaConsumer

    consumer: ConsumerPort = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=max_batch,
        session_timeout_ms=int(session_timeout_s * 1000),
        heartbeat_interval_ms=int(max(1000, session_timeout_s * 100)),
        **kafka_security.client_options(),
    )
    return consumer


__all__ = ["ConsumerFactory", "ConsumerPort", "aiokafka_consumer"]
