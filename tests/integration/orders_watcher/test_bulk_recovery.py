"""Cold recovery of orders_watcher's table on the real broker: the bulk copy of the
changelog (common/recovery.py) leaves RocksDB exactly as faust's own record-by-record
pass does, and a restart after it reads nothing again."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from rocksdict import AccessType, Options, Rdict

from common.admin import ensure_topics
from common.topics import TopicSpec
from services.orders_watcher.adapters import order_table
from tests.conftest import free_port, wait_for
from tests.integration.orders_watcher.test_watcher_on_kafka import Watchers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
PARTITIONS = 4
OFFSET_KEY = b"__faust\0offset__"


def changelog_records(orders: int) -> list[tuple[int, bytes, bytes | None]]:
    """(partition, key, value) as the watcher writes them: every order written three
    times (its later versions must win), every seventh one deleted at the end."""
    far = 4_000_000_000.0  # deadlines in 2096: no tick fires
    records: list[tuple[int, bytes, bytes | None]] = []
    for version in range(3):
        for i in range(orders):
            partition = i % PARTITIONS
            state = json.dumps({"order_id": f"o-{i}", "version": version}).encode()
            value = order_table.encode(state, (far + i + version, partition))
            records.append((partition, b'"o-%d"' % i, value))
    records += [(i % PARTITIONS, b'"o-%d"' % i, None) for i in range(0, orders, 7)]
    return records


def write_changelog(bootstrap: str, topic: str, records: list) -> None:
    from aiokafka import AIOKafkaProducer

    ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, compacted=True)])

    async def write() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1, linger_ms=10)
        await producer.start()
        try:
            for partition, key, value in records:
                await producer.send(topic, key=key, value=value, partition=partition)
            await asyncio.wait_for(producer.flush(), 60)
        finally:
            await producer.stop()

    asyncio.run(write())


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
            return bool(json.load(reply)["ready"])
    except OSError:
        return False


def recovered_store(data_dir: Path) -> dict[int, dict[bytes, bytes]]:
    """Every partition's RocksDB of the `orders` table, as key → value."""
    stores: dict[int, dict[bytes, bytes]] = {}
    paths = sorted(data_dir.rglob("orders-*.db"))
    assert paths, f"no RocksDB under {data_dir}"
    for path in paths:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            stores[int(path.stem.rsplit("-", 1)[1])] = dict(db.items())
        finally:
            db.close()
    return stores


def logged(log: str, event: str) -> list[dict]:
    """The JSON log lines of `event`."""
    found = []
    for line in log.splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            doc = json.loads(line)
            if doc.get("event") == event:
                found.append(doc)
    return found


def recover(watchers: Watchers, name: str, **env: str) -> tuple[dict, str]:
    port = free_port()
    watchers.start(name, ORDERS_WATCHER_HTTP_PORT=str(port), **env)
    wait_for(lambda: ready(port), timeout=180, interval=0.5, message=f"{name} ready")
    watchers.stop()
    log = (watchers.tmp / f"{name}.log").read_text()
    return recovered_store(watchers.tmp / name), log


def test_bulk_recovery_leaves_the_table_as_fausts_own_pass_does(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    orders = 2_000
    records = changelog_records(orders)
    write_changelog(kafka_bootstrap, f"{topic_prefix}orders_watcher-orders-changelog", records)
    live = orders - len(range(0, orders, 7))
    watchers = Watchers(kafka_bootstrap, topic_prefix, tmp_path)
    try:
        bulk, bulk_log = recover(watchers, "bulk", OUTREACH_BULK_RECOVERY_MIN_RECORDS="100")
        faust, faust_log = recover(watchers, "faust", OUTREACH_BULK_RECOVERY="false")
        # the bulk store again, started on its own data dir: nothing left to read
        again, again_log = recover(watchers, "bulk", OUTREACH_BULK_RECOVERY_MIN_RECORDS="100")
    finally:
        watchers.stop()

    [loaded] = logged(bulk_log, "changelog_bulk_loaded")
    assert loaded["records"] == len(records) and loaded["unfinished"] == []
    assert not logged(faust_log, "changelog_bulk_loaded")
    assert live in [e["keys"] for e in logged(bulk_log, "deadline_index_rebuilt")]
    assert live in [e["keys"] for e in logged(faust_log, "deadline_index_rebuilt")]
    assert bulk == faust
    assert sum(len(s) - 1 for s in bulk.values()) == live  # less each partition's offset key
    for partition, store in bulk.items():
        written = [r for r in records if r[0] == partition]
        assert store[OFFSET_KEY] == str(len(written) - 1).encode()
    # the latest version of a key won, a deleted key is gone
    latest = {key: value for _, key, value in records}
    expected = {key: value for key, value in latest.items() if value is not None}
    assert {k: v for s in bulk.values() for k, v in s.items() if k != OFFSET_KEY} == expected
    assert again == bulk
    assert len(logged(again_log, "changelog_bulk_loaded")) == 1  # the first run's line only
