"""The watcher writes its table itself, by partition and a batch at a time
(common/tables.py), not through faust's per-key table writes. What it leaves in RocksDB
must be what its changelog says: a worker recovering the changelog with faust's own
pass builds the same store, key for key, and the offsets the writer persisted never run
ahead of the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.integration.orders_watcher.test_bulk_recovery import (
    OFFSET_KEY,
    ready,
    recovered_store,
)
from tests.integration.orders_watcher.test_watcher_on_kafka import (
    Watchers,
    incidents,
    publish,
    record_stream,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_the_store_a_watcher_writes_is_the_one_its_changelog_rebuilds(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    watchers = Watchers(kafka_bootstrap, topic_prefix, tmp_path)
    try:
        watchers.start("live")
        publish(kafka_bootstrap, topic_prefix, record_stream())
        events = incidents(kafka_bootstrap, topic_prefix + "outreach.incidents")
        assert len(events) > 20
    finally:
        watchers.stop()
    live = recovered_store(tmp_path / "live")

    port = free_port()
    watchers = Watchers(kafka_bootstrap, topic_prefix, tmp_path)
    try:
        watchers.start(
            "rebuilt",
            ORDERS_WATCHER_HTTP_PORT=str(port),
            # faust's own pass over the changelog; the inputs were read and committed
            OUTREACH_BULK_RECOVERY="false",
        )
        wait_for(lambda: ready(port), timeout=180, interval=0.5, message="rebuilt ready")
    finally:
        watchers.stop()
    rebuilt = recovered_store(tmp_path / "rebuilt")

    def data(stores: dict[int, dict[bytes, bytes]]) -> dict[bytes, bytes]:
        return {k: v for s in stores.values() for k, v in s.items() if k != OFFSET_KEY}

    assert data(live), "the watcher wrote nothing"
    assert all(key.startswith(b'"') for key in data(live)), "keys as faust encodes them"
    assert data(live) == data(rebuilt)
    for partition, store in live.items():
        if OFFSET_KEY in store:
            assert int(store[OFFSET_KEY]) <= int(rebuilt[partition][OFFSET_KEY])
