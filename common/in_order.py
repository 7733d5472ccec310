"""A producer whose records become visible on the broker in the order they are sent,
across partitions too: what the services' event clock relies on when a story is
published into them (the simulator, a rehearsal: docs/architecture.md, "Time").

A producer does not promise that by itself: its I/O thread drains one partition's batch
after another while `send` keeps appending, and the broker appends a request's
partitions one after another (tens of milliseconds apart under load, hours of a fast
replay's story), so a later record of one partition may be read before an earlier one
of another is on the broker. So the records go in runs of one partition each, and a run
is acknowledged before the next one is sent (about a millisecond a run on a local
broker). Into topics nobody reads yet (a rehearsal publishes its whole input before its
services start), each partition in order is enough: `strict=False` sends in batches.
Partitions are chosen as the shop's producers choose them: murmur2 of the key,
as Kafka's Java clients and the services' co-partitioning expect.

A record the broker does not take is not dropped quietly: the producer retries until its
delivery timeout (one request in flight, so a retry cannot overtake), and `flush` raises
if any record sent since the last flush was refused in the end."""

from __future__ import annotations

from typing import Any

from kafka.partitioner.default import murmur2

CLOUDEVENTS = [("content-type", b"application/cloudevents+json")]


class RecordsRefused(RuntimeError):
    """Records the broker did not take, after the producer's retries."""


class InOrderProducer:
    def __init__(self, bootstrap_servers: str, *, strict: bool = True) -> None:
        from kafka import KafkaProducer

        from common.kafka_security import client_options

        self.producer: Any = KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            acks="all",
            linger_ms=5,
            # Retried until `delivery_timeout_ms` (a partition whose leader is still
            # settling, a broker restarting); one request in flight keeps the order.
            batch_size=256 * 1024,
            max_in_flight_requests_per_connection=1,
            **client_options(),
        )
        self._partition_counts: dict[str, int] = {}
        self._run: tuple[str, int] | None = None
        self._refused: list[BaseException] = []
        self._sent = 0
        self.strict = strict

    def send(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        timestamp_ms: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Sends one record; returns the producer's future of it."""
        partition = self.partition(topic, key)
        if self.strict and self._run is not None and self._run != (topic, partition):
            self.flush()
        self._run = (topic, partition)
        future = self.producer.send(
            topic,
            key=key,
            partition=partition,
            value=value,
            headers=CLOUDEVENTS if headers is None else headers,
            timestamp_ms=timestamp_ms,
        )
        future.add_errback(self._refused.append)
        self._sent += 1
        return future

    def partition(self, topic: str, key: bytes) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._partition_counts[topic] = len(self.producer.partitions_for(topic))
        return int(murmur2(key) & 0x7FFFFFFF) % count

    def flush(self) -> None:
        """Wait until every record sent so far is on the broker; raises RecordsRefused
        if any of those sent since the last flush was refused."""
        self.producer.flush()
        refused, sent = self._refused, self._sent
        self._refused, self._sent = [], 0
        if refused:
            raise RecordsRefused(f"{len(refused)} of {sent} records not published: {refused[0]!r}")

    def close(self) -> None:
        self.producer.close()


__all__ = ["CLOUDEVENTS", "InOrderProducer", "RecordsRefused"]
