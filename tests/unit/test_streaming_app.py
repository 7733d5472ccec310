"""The faust apps the stream services build from their settings."""

from __future__ import annotations

import pytest

from common.settings import ServiceSettings
from common.streaming import create_app


def test_the_consumer_fetches_eight_mebibytes_per_partition_unless_told(monkeypatch, tmp_path):
    monkeypatch.setenv("OUTREACH_DATA_DIR", str(tmp_path))
    app = create_app("svc", ServiceSettings(), store="memory://")
    assert app.conf.consumer_max_fetch_size == 8 * 1024 * 1024  # faust's own: 1 MiB

    monkeypatch.setenv("OUTREACH_CONSUMER_MAX_FETCH_BYTES", str(2 * 1024 * 1024))
    app = create_app("svc2", ServiceSettings(), store="memory://")
    assert app.conf.consumer_max_fetch_size == 2 * 1024 * 1024

    monkeypatch.setenv("OUTREACH_CONSUMER_MAX_FETCH_BYTES", "1000")
    with pytest.raises(ValueError, match="greater than or equal"):
        ServiceSettings()


async def test_batched_input_shapes_the_fetches_of_the_worker_consumer(monkeypatch, tmp_path):
    """The broker holds a fetch back until it has `fetch_min_bytes` or `fetch_max_wait_s`
    has passed (larger batches at moderate rates); faust itself answers at the first byte."""
    from common.batched_input import deliver_in_batches

    monkeypatch.setenv("OUTREACH_DATA_DIR", str(tmp_path))

    async def handler(messages: list, in_flight: object) -> bool:
        return False

    def worker_consumer(app):
        thread = app.consumer._new_consumer_thread()
        return thread._create_worker_consumer(app.transport)

    shaped = create_app("shaped", ServiceSettings(), store="memory://")
    topic = shaped.topic("in", value_serializer="raw")
    deliver_in_batches(shaped, topic, handler, fetch_min_bytes=65_536, fetch_max_wait_s=0.02)
    consumer = worker_consumer(shaped)
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (65_536, 20)

    plain = create_app("plain", ServiceSettings(), store="memory://")
    consumer = worker_consumer(plain)
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (1, 1500)
