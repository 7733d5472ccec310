"""The project's own broker (deploy/kafka/local_kafka.py) with the clients we pin.

Starts its own single-node KRaft broker on free ports in a temporary folder (the version
pinned in local_kafka.py, or OUTREACH_KAFKA_VERSION), then checks kafka-python (admin,
producer, consumer with commits), aiokafka (producer, consumer with commits) and a
faust-streaming worker (one agent, one table with a changelog, committed offsets).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.kafka.local_kafka import LocalKafka, free_port, probe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]


def unique(name: str) -> str:
    return f"lk{uuid.uuid4().hex[:10]}.{name}"


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = LocalKafka(port=0, data_dir=tmp_path_factory.mktemp("local-kafka"))
    kafka.start()
    pid = kafka.running_pid()
    assert pid is not None
    try:
        yield kafka
    finally:
        kafka.stop()
    assert not Path(f"/proc/{pid}").exists() or kafka.running_pid() is None
    assert not kafka.pid_file.exists()


def test_broker_answers_the_kafka_protocol_and_the_cli_sees_it(broker: LocalKafka) -> None:
    ready, reason = probe(broker.port)
    assert ready, reason
    # A second handle on the same data dir adopts the running broker and its ports.
    again = LocalKafka(port=0, data_dir=broker.data_dir)
    assert again.running_pid() == broker.running_pid()
    assert again.bootstrap == broker.bootstrap
    again.start()  # idempotent: waits, starts nothing
    status = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy/kafka/local_kafka.py"),
            "status",
            "--data-dir",
            str(broker.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "running" in status.stdout and broker.bootstrap in status.stdout


def test_kafka_python_admin_produce_consume_commit(broker: LocalKafka) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    topic, group = unique("kp"), unique("kp-group")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="lk-admin")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        wait_until(lambda: topic in admin.list_topics(), 15, "the new topic in list_topics")
        [described] = admin.describe_topics([topic])
        assert len(described["partitions"]) == 3

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
        for i in range(30):
            producer.send(topic, key=f"k{i % 5}".encode(), value=f"v{i}".encode())
        producer.flush(timeout=20)
        producer.close()

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(seen) < 30 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen += [r.value for r in records]
        consumer.commit()
        consumer.close()
        assert sorted(seen) == sorted(f"v{i}".encode() for i in range(30))

        offsets = admin.list_group_offsets(group)[group]  # kafka-python 3.x name
        assert sum(o.offset for tp, o in offsets.items() if tp.topic == topic) == 30
        assert {tp for tp in offsets} == {TopicPartition(topic, p) for p in range(3)}
        admin.delete_topics([topic])
    finally:
        admin.close()


async def test_aiokafka_produce_consume_commit(broker: LocalKafka) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic, group = unique("aio"), unique("aio-group")  # created on first use (auto-create)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(50):
            await producer.send(topic, key=f"k{i % 7}".encode(), value=f"m{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(seen) < 50 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            seen += [r.value for records in batch.values() for r in records]
        await consumer.commit()
        assert sorted(seen) == sorted(f"m{i}".encode() for i in range(50))
        partitions = consumer.assignment()
        assert len(partitions) == broker.partitions
        committed = [await consumer.committed(tp) or 0 for tp in partitions]
        assert sum(committed) == 50
        assert all(isinstance(tp, TopicPartition) for tp in partitions)
    finally:
        await consumer.stop()


FAUST_APP = textwrap.dedent(
    """
    import os

    import faust

    app = faust.App(
        os.environ["LK_APP_ID"],
        broker="kafka://" + os.environ["LK_BOOTSTRAP"],
        store="memory://",
        datadir=os.environ["LK_DATADIR"],
        web_enabled=False,
        web_bind="127.0.0.1",
        web_port=int(os.environ["LK_WEB_PORT"]),
        topic_partitions=2,
        topic_replication_factor=1,
        broker_commit_every=10,
        broker_commit_interval=0.5,
    )
    source = app.topic(os.environ["LK_TOPIC"], key_type=str, value_type=int, partitions=2)
    totals = app.Table("totals", default=int, partitions=2)


    @app.agent(source)
    async def count(stream):
        async for key, value in stream.items():
            totals[key] += value


    if __name__ == "__main__":
        app.main()
    """
)


def test_faust_agent_with_changelog_table_consumes_and_commits(
    broker: LocalKafka, tmp_path: Path
) -> None:
    import json

    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic
    from kafka.errors import CoordinatorNotAvailableError

    app_id, topic = unique("faustapp"), unique("faust-in")
    changelog = f"{app_id}-totals-changelog"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])

    script = tmp_path / "lk_faust_app.py"
    script.write_text(FAUST_APP)
    env = dict(
        os.environ,
        LK_APP_ID=app_id,
        LK_BOOTSTRAP=broker.bootstrap,
        LK_TOPIC=topic,
        LK_DATADIR=str(tmp_path / "faust-data"),
        LK_WEB_PORT=str(free_port()),
        PYTHONPATH=str(tmp_path),
    )
    log_path = tmp_path / "faust.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, str(script), "worker", "-l", "info"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        expected: dict[str, int] = {}
        for i in range(40):
            key = f"c{i % 4}"
            producer.send(topic, key=key.encode(), value=json.dumps(i).encode())
            expected[key] = expected.get(key, 0) + i
        producer.flush(timeout=20)
        producer.close()

        def committed() -> bool:
            assert worker.poll() is None, log_path.read_text()[-4000:]
            try:
                offsets = admin.list_group_offsets(app_id).get(app_id, {})
            except CoordinatorNotAvailableError:  # a fresh broker's offsets topic
                return False
            return bool(sum(o.offset for tp, o in offsets.items() if tp.topic == topic) == 40)

        wait_until(committed, 45, "the faust worker to commit all 40 source offsets")

        # The table's changelog holds the final total for every key.
        reader = KafkaConsumer(
            changelog,
            bootstrap_servers=broker.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        latest: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while latest != expected and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=500).values():
                for r in records:
                    latest[json.loads(r.key)] = json.loads(r.value)
        reader.close()
        assert latest == expected, log_path.read_text()[-4000:]
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        admin.close()


def test_our_topics_keep_the_timestamps_their_producers_give(kafka_bootstrap: str) -> None:
    """The event clock follows record timestamps: a simulation runs ahead of the wall
    clock and a replay stamps records months back; the topics we create take both
    (Kafka 4 refuses records stamped over an hour ahead by default)."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from common.admin import ensure_topics
    from common.topics import TopicSpec

    topic = f"stamps-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, 1)])
    now = int(time.time() * 1000)
    stamps = [now - 200 * 86_400_000, now + 3 * 86_400_000]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for stamp in stamps:
        producer.send(topic, b"x", timestamp_ms=stamp).get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    found: list[int] = []
    deadline = time.monotonic() + 20
    while len(found) < 2 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            found += [r.timestamp for r in records]
    consumer.close()
    assert found == stamps


def test_a_consumer_subscribing_right_after_ensure_topics_is_assigned_every_topic(
    kafka_bootstrap: str,
) -> None:
    """A service makes its topics, then joins its group at once. A topic the broker does
    not list yet would be left out of the assignment until the consumer's next metadata
    refresh (five minutes) and its records unread meanwhile: ensure_topics returns when
    every partition it made has a leader."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from common.admin import ensure_topics
    from common.topics import TopicSpec

    async def first_assignment(topics: list[str]) -> set[str]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=f"g-{uuid.uuid4().hex[:8]}"
        )
        await consumer.start()
        try:
            consumer.subscribe(topics)
            deadline = time.monotonic() + 30
            while not consumer.assignment() and time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=200)
            return {tp.topic for tp in consumer.assignment()}
        finally:
            await consumer.stop()

    topics = [f"fresh-{uuid.uuid4().hex[:8]}" for _ in range(16)]
    assert ensure_topics(kafka_bootstrap, [TopicSpec(t, 3) for t in topics]) == topics
    assert asyncio.run(first_assignment(topics)) == set(topics)
