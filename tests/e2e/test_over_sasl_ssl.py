"""The address the e2e suite gives its services is a SASL_SSL listener: a client that
does not speak TLS and SCRAM gets nothing from it (so the suite passing is the pipeline
passing over SASL_SSL)."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiokafka.conn import create_conn

from common import kafka_security

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


async def plaintext_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        conn = await asyncio.wait_for(create_conn(host, int(port), request_timeout_ms=3000), 5)
    except Exception:
        return False
    conn.close()
    return True


def test_the_suite_runs_over_sasl_ssl(kafka_broker, kafka_bootstrap):
    if kafka_broker is None:
        pytest.skip("a broker named by KAFKA_BOOTSTRAP_SERVERS: plaintext only")
    assert os.environ["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert kafka_security.current().sasl_mechanism == "SCRAM-SHA-512"
    assert kafka_bootstrap == kafka_broker.secure_bootstrap("SASL_SSL")
    assert not asyncio.run(plaintext_answers(kafka_bootstrap))
    kafka_security.check(kafka_bootstrap)  # the suite's own credentials are taken
