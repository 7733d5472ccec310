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
