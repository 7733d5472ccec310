"""The e2e suite runs over SASL_SSL (SCRAM-SHA-512, the broker's certificate checked
against its CA): the services it starts and its own clients connect as a production
cluster (Strimzi, managed Kafka) would have them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import kafka_client_env


@pytest.fixture
def kafka_bootstrap(kafka_broker: Any) -> Iterator[str]:
    if kafka_broker is None:  # a broker named by KAFKA_BOOTSTRAP_SERVERS: plaintext only
        import os

        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    env = kafka_broker.client_env("SASL_SSL", "SCRAM-SHA-512")
    with kafka_client_env(env):
        yield env["KAFKA_BOOTSTRAP_SERVERS"]
