"""Publishes the simulated shop to Kafka with kafka-python, paced in simulated time."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable

from kafka.partitioner.default import murmur2

from common.topics import COMPACTED, INPUT_TOPICS, TopicSpec
from simulator.shop import Emission


class Publisher:
    def __init__(self, bootstrap_servers: str, prefix: str = "", partitions: int = 4) -> None:
        from kafka import KafkaProducer

        from common.kafka_security import client_options

        self.prefix = prefix
        self.bootstrap = bootstrap_servers
        self.partitions = partitions
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            acks="all",
            linger_ms=5,
            retries=5,
            batch_size=256 * 1024,
            max_in_flight_requests_per_connection=1,
            **client_options(),
        )
        self._partition_counts: dict[str, int] = {}
        self._stamp = 0  # the last record's, over every run

    def ensure_topics(self) -> None:
        from common.admin import ensure_topics

        ensure_topics(
            self.bootstrap,
            [
                TopicSpec(self.prefix + t, self.partitions, compacted=t in COMPACTED)
                for t in INPUT_TOPICS
            ],
        )

    def run(
        self,
        emissions: Iterable[Emission],
        *,
        speed: float,
        report_every_s: float = 5.0,
        out: object = sys.stderr,
    ) -> Counter[str]:
        """Publish in order; with speed > 0, `speed` simulated seconds per wall second.

        Each record is stamped with the moment of the story it is published at (strictly
        increasing, a millisecond apart at least), as a shop's systems stamp a record
        when they publish it: the services' event clock follows these stamps
        (docs/architecture.md, "Time").

        The records become visible on the broker in the order they are sent, across
        partitions too, which the event clock relies on. A producer does not promise
        that by itself: its I/O thread drains one partition's batch after another while
        `send` keeps appending, and the broker appends a request's partitions one after
        another (tens of milliseconds apart under load, hours of a fast replay's story),
        so a later record of one partition may be read before an earlier one of
        another is on the broker. So the records go in runs of one partition each, and
        a run is acknowledged before the next one is sent (about a millisecond a run
        on a local broker)."""
        counts: Counter[str] = Counter()
        wall_start = time.monotonic()
        sim_start = None
        last_report = wall_start
        run: tuple[str, int] | None = None
        for emission in emissions:
            topic, key = self.prefix + emission.topic, emission.key.encode()
            partition = self._partition(topic, key)
            if run is not None and run != (topic, partition):
                self.producer.flush()
            run = (topic, partition)
            if speed > 0:
                sim_start = sim_start or emission.at
                due = (emission.at - sim_start).total_seconds() / speed
                delay = due - (time.monotonic() - wall_start)
                if delay > 0:
                    self.producer.flush()
                    time.sleep(delay)  # pacing the simulation in wall time is the point
            self._stamp = max(self._stamp + 1, int(emission.at.timestamp() * 1000))
            self.producer.send(
                topic,
                key=key,
                partition=partition,
                value=emission.value(),
                headers=[("content-type", b"application/cloudevents+json")],
                timestamp_ms=self._stamp,
            )
            counts[emission.event.type if emission.event else "malformed"] += 1
            now = time.monotonic()
            if now - last_report >= report_every_s:
                last_report = now
                print(
                    f"[simulator] {emission.at:%Y-%m-%d %H:%M} simulated, "
                    f"{sum(counts.values())} events: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                    file=out,
                    flush=True,
                )  # type: ignore[call-overload]
        self.producer.flush()
        return counts

    def _partition(self, topic: str, key: bytes) -> int:
        """The partition the producer's default partitioner gives `key` (murmur2, as
        Kafka's Java clients and the services' co-partitioning expect)."""
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._partition_counts[topic] = len(self.producer.partitions_for(topic))
        return int(murmur2(key) & 0x7FFFFFFF) % count

    def close(self) -> None:
        self.producer.close()
