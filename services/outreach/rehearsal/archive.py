"""The input a rehearsal replays: the shop's retained records (commerce.*) as they are on
the broker — read, never written — or an archive of them exported before (one JSON
document a line, gzip-compressed when the file's name ends in .gz), and their
publishing into the rehearsal's own topics in the order they were stamped."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from common.in_order import InOrderProducer
from common.topic_reader import records_to_end
from common.topics import INPUT_TOPICS, OPTOUTS

#: What a rehearsal replays: the shop's input, and the customers' opt-outs as they came
#: (unsubscribe links, STOP, bounces: preferences applies them at their moment).
REPLAYED = (*INPUT_TOPICS, OPTOUTS)

POLL_MS = 500


@dataclass(frozen=True)
class Record:
    """One input record: its topic without any prefix, key, value, headers and stamp."""

    topic: str
    key: bytes
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "key": base64.b64encode(self.key).decode(),
            "value": None if self.value is None else base64.b64encode(self.value).decode(),
            "timestamp_ms": self.timestamp_ms,
            "headers": [[k, base64.b64encode(v).decode()] for k, v in self.headers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        if data.get("topic") not in REPLAYED:
            raise ValueError(f"not a topic a rehearsal replays: {data.get('topic')!r}")
        value = data.get("value")
        return cls(
            topic=data["topic"],
            key=base64.b64decode(data["key"]),
            value=None if value is None else base64.b64decode(value),
            timestamp_ms=int(data["timestamp_ms"]),
            headers=tuple((str(k), base64.b64decode(v)) for k, v in data.get("headers") or ()),
        )


def in_story_order(records: Iterable[Record]) -> list[Record]:
    """By stamp; records stamped alike keep the order they were read in."""
    return sorted(records, key=lambda r: r.timestamp_ms)


def read_broker(bootstrap: str, prefix: str, until_ms: int, timeout_s: float = 600) -> list[Record]:
    """Every retained record of the shop's input topics and of the opt-outs (under
    `prefix`) stamped up to `until_ms`, up to the end each partition had when the
    reading began."""
    from kafka import KafkaConsumer, TopicPartition

    from common.kafka_security import client_options

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        group_id=None,
        enable_auto_commit=False,
        **client_options(),
    )
    try:
        partitions = [
            TopicPartition(prefix + topic, p)
            for topic in REPLAYED
            for p in sorted(consumer.partitions_for_topic(prefix + topic) or ())
        ]
        found = [
            Record(m.topic.removeprefix(prefix), m.key or b"", m.value, m.timestamp,
                   tuple(m.headers or ()))
            for m in records_to_end(consumer, partitions, timeout_s, POLL_MS)
            if m.timestamp <= until_ms
        ]  # fmt: skip
        return in_story_order(found)
    finally:
        consumer.close()


def _open(path: Path, mode: str) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "b")  # type: ignore[return-value]
    return path.open(mode + "b")


def write(path: Path, records: Iterable[Record]) -> int:
    n = 0
    with _open(path, "w") as out:
        for record in records:
            out.write(orjson.dumps(record.as_json()) + b"\n")
            n += 1
    return n


def read(path: Path) -> Iterator[Record]:
    with _open(path, "r") as lines:
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield Record.from_json(orjson.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: not an archived record ({exc})") from None


def stamped(records: Iterable[Record]) -> Iterator[tuple[int, Record]]:
    """The records in story order, each with its stamp in a replay: at least a
    millisecond after the one before (the event clock follows the stamps, and records
    stamped alike would have no order)."""
    stamp = 0
    for record in records:
        stamp = max(stamp + 1, record.timestamp_ms)
        yield stamp, record


def publish(bootstrap: str, prefix: str, records: Iterable[Record]) -> int:
    """Into the rehearsal's topics, in story order, each stamped at least a millisecond
    after the one before (the event clock follows the stamps). All of it before any
    service reads: then each partition in order is enough, and it goes in batches."""
    producer = InOrderProducer(bootstrap, strict=False)
    n = 0
    try:
        for stamp, record in stamped(records):
            producer.send(
                prefix + record.topic, record.key, record.value, stamp, list(record.headers) or None
            )
            n += 1
        producer.flush()  # raises RecordsRefused if the broker refused any
    finally:
        producer.close()
    return n


__all__ = ["Record", "in_story_order", "publish", "read", "read_broker", "stamped", "write"]
