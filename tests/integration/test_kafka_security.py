"""Kafka security on the real broker (deploy/kafka/local_kafka.py with its TLS, mutual
TLS and SASL_SSL listeners): every kind of client the services use — aiokafka's producer
and group consumer, faust, kafka-python's admin (topics) and outreachctl — connects with
TLS checked against a CA, with a client certificate, and with SASL PLAIN, SCRAM-SHA-256
and SCRAM-SHA-512; refused credentials and certificates fail at once with a message
saying what to fix, and never with the password in it. The e2e suite runs over SASL_SSL
(tests/e2e/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from common import kafka_security
from common.admin import ensure_topics
from common.consumer import aiokafka_consumer
from common.kafka import AiokafkaProducer
from common.topics import TopicSpec
from tests.conftest import kafka_client_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]
WAYS = [
    ("SSL", None),
    ("MTLS", None),
    ("SASL_SSL", "PLAIN"),
    ("SASL_SSL", "SCRAM-SHA-256"),
    ("SASL_SSL", "SCRAM-SHA-512"),
]


@pytest.fixture
def broker(kafka_broker: Any) -> Any:
    if kafka_broker is None:
        pytest.skip("a broker named by KAFKA_BOOTSTRAP_SERVERS has no secure listeners here")
    return kafka_broker


async def round_trip(bootstrap: str, topic: str) -> bytes:
    """Create the topic (kafka-python), produce (aiokafka, idempotent), read it back as a
    group member (aiokafka): the services' three kinds of client."""
    ensure_topics(bootstrap, [TopicSpec(topic, 1)])
    producer = AiokafkaProducer(bootstrap, "security-test")
    await producer.start()
    try:
        await producer.send(topic, b"k", b"over " + topic.encode(), [])
    finally:
        await producer.stop()
    consumer: Any = aiokafka_consumer(bootstrap, f"g-{topic}", "security-test", 10, 10.0)
    consumer.subscribe([topic])
    await consumer.start()
    try:
        for _ in range(40):
            fetched = await consumer.getmany(timeout_ms=500)
            for records in fetched.values():
                return bytes(records[0].value)
        raise AssertionError("nothing read back")
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("listener", "mechanism"), WAYS)
def test_every_client_connects_over_each_secure_listener(
    broker: Any, listener: str, mechanism: str | None
) -> None:
    env = broker.client_env(listener, mechanism or "SCRAM-SHA-512")
    topic = f"secure-{listener.lower()}-{(mechanism or 'tls').lower()}-{uuid.uuid4().hex[:6]}"
    with kafka_client_env(env):
        got = asyncio.run(round_trip(env["KAFKA_BOOTSTRAP_SERVERS"], topic))
    assert got == b"over " + topic.encode()


def test_a_faust_app_reads_and_writes_a_changelogged_table_over_sasl_ssl(
    broker: Any, tmp_path: Path
) -> None:
    """faust takes the same settings (`broker_credentials`): an agent over SASL_SSL."""
    env = broker.client_env("SASL_SSL", "SCRAM-SHA-512")
    topic = f"secure-faust-{uuid.uuid4().hex[:6]}"
    script = f"""
import asyncio, os, faust
from common import kafka_security
from common.admin import ensure_topics
from common.topics import TopicSpec
ensure_topics({env["KAFKA_BOOTSTRAP_SERVERS"]!r}, [TopicSpec({topic!r}, 1)])
app = faust.App({topic!r}, broker="kafka://{env["KAFKA_BOOTSTRAP_SERVERS"]}",
                broker_credentials=kafka_security.faust_credentials(), store="memory://",
                web_enabled=False, datadir={str(tmp_path)!r}, topic_replication_factor=1,
                topic_partitions=1)
source = app.topic({topic!r}, value_serializer="raw")
seen = app.Table("seen", default=int)
@app.agent(source)
async def count(stream):
    async for value in stream:
        seen[value.decode()] += 1
        with open({str(tmp_path / "seen.txt")!r}, "w") as out:  # faust takes over print
            out.write(f"seen {{value.decode()}} {{seen[value.decode()]}}")
        asyncio.get_running_loop().call_later(2.0, os._exit, 0)  # the changelog sent
@app.task
async def send():
    await source.send(value=b"hello")
app.main()
"""
    result = subprocess.run(
        [sys.executable, "-c", script, "worker", "--loglevel", "warn"],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    seen = tmp_path / "seen.txt"
    assert seen.exists(), result.stdout[-2000:] + result.stderr[-3000:]
    assert seen.read_text() == "seen hello 1"


def outreachctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_outreachctl_makes_topics_and_reads_dead_letters_over_sasl_ssl(broker: Any) -> None:
    prefix = f"ctl{uuid.uuid4().hex[:6]}."
    env = broker.client_env("SASL_SSL", "SCRAM-SHA-512") | {"OUTREACH_TOPIC_PREFIX": prefix}
    made = outreachctl(env, "topics", "create", "--output", "json")
    assert made.returncode == 0, made.stderr[-2000:]
    assert f"{prefix}outreach.requests" in made.stdout
    listed = outreachctl(env, "deadletters", "list", "outreach", "--output", "json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    refused = outreachctl(env | {"KAFKA_SASL_PASSWORD": "wrong-one"}, "topics", "create")
    assert refused.returncode == 1
    assert "KAFKA_SASL_PASSWORD" in refused.stderr and "wrong-one" not in refused.stderr


def denied(env: dict[str, str]) -> str:
    with kafka_client_env(env), pytest.raises(kafka_security.KafkaAccessDenied) as refused:
        ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], [TopicSpec("never-made", 1)])
    return str(refused.value)


def test_a_wrong_password_fails_at_once_saying_what_to_check_never_the_password(
    broker: Any,
) -> None:
    env = broker.client_env("SASL_SSL", "SCRAM-SHA-512") | {"KAFKA_SASL_PASSWORD": "hunter2x"}
    message = denied(env)
    assert "authentication of user 'outreach' with SCRAM-SHA-512 failed" in message
    assert "KAFKA_SASL_PASSWORD" in message and "hunter2x" not in message
    assert "hunter2x" not in repr(kafka_security.KafkaSecurity(**_fields(env)))


def test_an_untrusted_broker_and_a_missing_client_certificate_are_named(broker: Any) -> None:
    without_ca = broker.client_env("SSL")
    without_ca.pop("KAFKA_SSL_CAFILE")  # the system's trust store does not know our CA
    assert "certificate is not trusted" in denied(without_ca)
    without_cert = broker.client_env("SSL")
    without_cert["KAFKA_BOOTSTRAP_SERVERS"] = broker.secure_bootstrap("MTLS")
    assert "KAFKA_SSL_CERTFILE" in denied(without_cert)


def test_settings_that_cannot_work_are_refused_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME"):
        kafka_security.KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="KAFKA_SSL_CAFILE: no such file"):
        kafka_security.KafkaSecurity(protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="has no TLS"):
        kafka_security.KafkaSecurity(protocol="PLAINTEXT", ssl_cafile=tmp_path)
    with pytest.raises(ValueError, match="go together"):
        kafka_security.KafkaSecurity(protocol="SSL", ssl_certfile=tmp_path)


def _fields(env: dict[str, str]) -> dict[str, Any]:
    names = {
        "KAFKA_SECURITY_PROTOCOL": "protocol",
        "KAFKA_SSL_CAFILE": "ssl_cafile",
        "KAFKA_SASL_MECHANISM": "sasl_mechanism",
        "KAFKA_SASL_USERNAME": "sasl_username",
        "KAFKA_SASL_PASSWORD": "sasl_password",
    }
    return {names[k]: v for k, v in env.items() if k in names}
