"""`outreachctl deadletters` on the real broker: list, show, replay to the original
topic, purge (only with --yes, only what was asked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer

from common.admin import ensure_topics
from common.cli import main as outreachctl
from common.topics import TopicSpec
from tests.chaos.checker import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[2]


def dead_letter(producer: KafkaProducer, topic: str, original: str, n: int) -> None:
    headers = [
        ("dlq.original.topic", original.encode()),
        ("dlq.original.partition", b"0"),
        ("dlq.original.offset", str(100 + n).encode()),
        ("dlq.reason.code", b"bad_data"),
        ("dlq.reason", f"field total: not a decimal ({n})".encode()),
        ("ce_id", f"evt-{n}".encode()),
    ]
    producer.send(topic, key=f"o-{n}".encode(), value=f'{{"n": {n}}}'.encode(), headers=headers)


def printed(capsys) -> str:
    """What the command printed for its user (without log lines, which are JSON)."""
    lines = capsys.readouterr().out.splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith('{"event"'))


def records(bootstrap: str, topic: str) -> list:
    return read_topic(bootstrap, topic)  # up to its end offsets, as they are now


def test_list_show_replay_purge(kafka_bootstrap, topic_prefix, monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("OUTREACH_TOPIC_PREFIX", topic_prefix)
    dlq, orders = topic_prefix + "deadletter.orders_watcher", topic_prefix + "commerce.orders"
    ensure_topics(kafka_bootstrap, [TopicSpec(dlq, 1), TopicSpec(orders, 1)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for n in range(3):
        dead_letter(producer, dlq, orders, n)
    producer.flush()
    producer.close()
    capsys.readouterr()

    assert outreachctl(["deadletters", "list", "orders_watcher"]) == 0
    listed = printed(capsys).splitlines()
    assert len(listed) == 3 and "bad_data: field total: not a decimal (1)" in listed[1]
    assert f"{orders}[0]@101" in listed[1]

    assert outreachctl(["deadletters", "show", "orders_watcher", "2"]) == 0
    shown = json.loads(printed(capsys))
    assert shown["value"] == '{"n": 2}' and shown["headers"]["ce_id"] == "evt-2"
    assert outreachctl(["deadletters", "show", "orders_watcher", "9"]) == 1

    assert outreachctl(["deadletters", "replay", "orders_watcher", "--offset", "1"]) == 0
    assert "replayed 1 dead letter(s)" in printed(capsys)
    (replayed,) = records(kafka_bootstrap, orders)
    headers = dict(replayed.headers)
    assert replayed.value == b'{"n": 1}' and replayed.key == b"o-1"
    assert headers["dlq.replayed_from"] == b"1" and headers["ce_id"] == b"evt-1"
    assert not any(k.startswith("dlq.reason") for k in headers)

    # The replayed ones (offsets 0 and 1) go; nothing is deleted without --yes.
    assert outreachctl(["deadletters", "purge", "orders_watcher", "--before-offset", "2"]) == 1
    assert "would delete 2 dead letter(s)" in printed(capsys)
    assert len(records(kafka_bootstrap, dlq)) == 3
    purge = ["deadletters", "purge", "orders_watcher", "--before-offset", "2", "--yes"]
    assert outreachctl(purge) == 0
    assert "purged 2 dead letter(s)" in printed(capsys)
    assert [r.offset for r in records(kafka_bootstrap, dlq)] == [2]

    # Only those older than a day: none yet.
    assert outreachctl(["deadletters", "purge", "orders_watcher", "--older-than-days", "1"]) == 0
    assert "nothing to purge" in printed(capsys)
    assert outreachctl(["deadletters", "purge", "orders_watcher", "--yes"]) == 0
    assert "purged 1 dead letter(s)" in printed(capsys)
    assert records(kafka_bootstrap, dlq) == []
    assert outreachctl(["deadletters", "list", "orders_watcher"]) == 0
    assert printed(capsys).startswith("no dead letters in ")
    assert outreachctl(["deadletters", "list", "orders_watcher", "--output", "json"]) == 0
    assert json.loads(printed(capsys)) == []


def test_json_output_and_a_missing_topic(kafka_bootstrap, topic_prefix, monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("OUTREACH_TOPIC_PREFIX", topic_prefix)
    dlq, orders = topic_prefix + "deadletter.risk_detector", topic_prefix + "commerce.orders"
    ensure_topics(kafka_bootstrap, [TopicSpec(dlq, 1)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    dead_letter(producer, dlq, orders, 5)
    producer.flush()
    producer.close()
    capsys.readouterr()

    assert outreachctl(["deadletters", "list", "risk_detector", "--output", "json"]) == 0
    (listed,) = json.loads(printed(capsys))
    assert listed["offset"] == 0 and listed["code"] == "bad_data"
    assert listed["original"] == {"topic": orders, "partition": "0", "offset": "105"}
    purge = ["deadletters", "purge", "risk_detector", "--output", "json"]
    assert outreachctl(purge) == 1  # not without --yes
    assert json.loads(printed(capsys)) == {"topic": dlq, "would_purge": 1}

    # A service whose dead-letter topic does not exist: an error, not an empty list.
    for command in (
        ["list", "preferences"],
        ["show", "preferences", "0"],
        ["replay", "preferences"],
    ):
        assert outreachctl(["deadletters", *command]) == 1
        err = capsys.readouterr().err
        assert f"error: no topic {topic_prefix}deadletter.preferences" in err


def test_purge_one_customers_dead_letters_keeps_the_others_in_order(
    kafka_bootstrap, topic_prefix, monkeypatch, capsys
):
    """An erasure: the dead letters naming the customer (by key or in their bytes) go,
    the others stay, in their order, with their headers."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("OUTREACH_TOPIC_PREFIX", topic_prefix)
    dlq = topic_prefix + "deadletter.preferences"
    ensure_topics(kafka_bootstrap, [TopicSpec(dlq, 1)])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    letters = [
        (b"c-7", b'{"data": {"customer_id": "c-7", "email": "ada@example.com"}}'),
        (b"c-8", b'{"data": {"customer_id": "c-8"}}'),
        (b"o-1", b'{"data": {"order_id": "o-1", "customer_id": "c-7"}}'),
        (b"c-9", b'{"data": {"customer_id": "c-9"}}'),
    ]
    for key, value in letters:
        producer.send(dlq, key=key, value=value, headers=[("dlq.reason.code", b"bad_data")])
    producer.flush()
    producer.close()
    capsys.readouterr()
    purge = ["deadletters", "purge", "preferences", "--customer", "c-7"]
    assert outreachctl(purge) == 1 and "would delete 2" in printed(capsys)
    assert outreachctl([*purge, "--yes"]) == 0
    assert "purged 2 dead letter(s) of c-7" in printed(capsys)
    left = records(kafka_bootstrap, dlq)
    assert [(r.key, r.value) for r in left] == [letters[1], letters[3]]
    assert dict(left[0].headers)["dlq.reason.code"] == b"bad_data"
    assert b"ada@example.com" not in b"".join(r.value for r in left)


def test_the_result_alone_is_on_stdout_and_the_logs_on_stderr(kafka_bootstrap, topic_prefix):
    """`outreachctl … --output json | jq` works: what the code it runs logs (here the
    topics it made) goes to stderr."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
               OUTREACH_TOPIC_PREFIX=topic_prefix, LOG_LEVEL="INFO")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "topics", "create", "--output", "json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)["created"]
    assert topic_prefix + "commerce.orders" in created
    assert "topics_created" in done.stderr
