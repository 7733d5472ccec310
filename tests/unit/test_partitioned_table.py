"""common.tables.PartitionedTable: a faust table written by partition, a batch at a time,
into the store and the changelog as faust itself writes them, and its changelog offset
persisted only once every earlier write of the partition is in the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from common.tables import PartitionedTable


class Metadata:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Producer:
    """Records sends; each acknowledgement is a future the test completes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.acks: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, key: Any, value: Any, partition: Any, **_: Any) -> Any:
        self.sent.append((topic, key, value, partition))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


def table_of(store: str, tmp_path: Path) -> tuple[faust.App, Any]:
    app = faust.App("t", broker="memory://", store=store, datadir=str(tmp_path))
    table = app.Table(
        "orders",
        default=None,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
        value_type=bytes,
        partitions=4,
    )
    return app, table


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
async def test_writes_land_in_the_store_and_the_changelog_of_their_partition(
    store: str, tmp_path: Path
) -> None:
    app, table = table_of(store, tmp_path)
    producer = Producer()
    app.producer = producer  # type: ignore[assignment]
    writer = PartitionedTable(app, table)
    acks = await writer.write(2, [("o-1", b'{"a":1}'), ("o-2", b'{"b":2}')])
    await writer.write(2, [("o-2", None)])
    assert len(acks) == 2
    assert writer.get(2, "o-1") == b'{"a":1}'
    assert writer.get(2, "o-2") is None
    key = b'"o-1"' if store == "rocksdb://" else b"o-1"  # faust's own key encoding
    assert producer.sent[0] == ("t-orders-changelog", key, b'{"a":1}', 2)
    assert producer.sent[2][2:] == (None, 2)  # a delete is a tombstone
    for ack in producer.acks:
        ack.cancel()
    await asyncio.sleep(0)


async def test_the_changelog_offset_is_persisted_once_every_earlier_write_is_in(
    tmp_path: Path,
) -> None:
    app, table = table_of("rocksdb://", tmp_path)
    producer = Producer()
    app.producer = producer  # type: ignore[assignment]
    writer = PartitionedTable(app, table)
    tp = TP("t-orders-changelog", 1)
    await writer.write(1, [("o-1", b"1")])
    await writer.write(1, [("o-2", b"2"), ("o-3", b"3")])
    first, second, third = producer.acks
    # The later batch is acknowledged first: its offsets must wait for the earlier one.
    second.set_result(Metadata(11))
    third.set_result(Metadata(12))
    for _ in range(5):
        await asyncio.sleep(0)
    assert table.data.persisted_offset(tp) is None
    first.set_result(Metadata(10))
    for _ in range(5):
        await asyncio.sleep(0)
    assert table.data.persisted_offset(tp) == 12


async def test_a_failed_changelog_write_persists_nothing_after_it(tmp_path: Path) -> None:
    app, table = table_of("rocksdb://", tmp_path)
    producer = Producer()
    app.producer = producer  # type: ignore[assignment]
    writer = PartitionedTable(app, table)
    await writer.write(3, [("o-1", b"1")])
    await writer.write(3, [("o-2", b"2")])
    producer.acks[0].set_exception(RuntimeError("broker gone"))
    producer.acks[1].set_result(Metadata(5))
    for _ in range(5):
        await asyncio.sleep(0)
    assert table.data.persisted_offset(TP("t-orders-changelog", 3)) is None
