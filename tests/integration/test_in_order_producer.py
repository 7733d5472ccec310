"""The in-order producer (common/in_order.py) never loses a record quietly: a record the
broker refuses makes `flush` raise, and the simulator stops with that error.

The refusal used: a topic that takes no record stamped more than a minute before the
broker's clock (`message.timestamp.before.max.ms`, InvalidTimestamp: not retriable)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from common.in_order import InOrderProducer, RecordsRefused
from common.topics import INPUT_TOPICS
from tests.chaos.checker import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


RECENT_ONLY = {"message.timestamp.before.max.ms": "60000"}


def recent_only(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics([NewTopic(n, partitions, 1, topic_configs=RECENT_ONLY) for n in names])
    finally:
        admin.close()


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "batched"])
def test_a_record_the_broker_refuses_makes_flush_raise(kafka_bootstrap: str, strict: bool) -> None:
    topic = f"io{uuid.uuid4().hex[:10]}.recent"
    recent_only(kafka_bootstrap, [topic], 1)
    now_ms = int(time.time() * 1000)
    producer = InOrderProducer(kafka_bootstrap, strict=strict)
    try:
        producer.send(topic, b"a", b"now", now_ms)
        producer.flush()
        producer.send(topic, b"b", b"1970", 1_000)  # refused
        producer.send(topic, b"c", b"now too", now_ms + 1)
        with pytest.raises(RecordsRefused, match=r"of 2 records not published") as refused:
            producer.flush()
    finally:
        producer.close()
    # The broker refuses a batch with an invalid record whole: each record is either on
    # the topic or counted as refused, none lost without a word.
    count = int(str(refused.value).split(" of ")[0])
    on_topic = [r.value for r in read_topic(kafka_bootstrap, topic)]
    assert b"1970" not in on_topic and b"now" in on_topic
    assert count >= 1 and len(on_topic) - 1 + count == 2


def test_the_simulator_stops_with_an_error_when_its_records_are_refused(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Its story is stamped in March 2026 (the default start): topics that take only
    recent records refuse all of it, and the simulator says so and exits 1."""
    prefix = f"io{uuid.uuid4().hex[:10]}."
    recent_only(kafka_bootstrap, [prefix + t for t in INPUT_TOPICS], 4)
    done = subprocess.run(
        [sys.executable, "-m", "simulator", "--bootstrap", kafka_bootstrap,
         "--topic-prefix", prefix, "--no-pace", "--customers", "5", "--max-events", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "[simulator] stopped:" in done.stderr and "records not published" in done.stderr
