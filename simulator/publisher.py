"""Publishes the simulated shop to Kafka with kafka-python, paced in simulated time."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable

from common.topics import COMPACTED, INPUT_TOPICS, TopicSpec
from simulator.shop import Emission


class Publisher:
    def __init__(self, bootstrap_servers: str, prefix: str = "", partitions: int = 4) -> None:
        from kafka import KafkaProducer

        self.prefix = prefix
        self.bootstrap = bootstrap_servers
        self.partitions = partitions
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers.split(","),
            acks="all",
            linger_ms=5,
            retries=5,
            # Records become visible in the order they were sent, across partitions too
            # (the services' event clock relies on it, docs/architecture.md "Time"): one
            # request at a time on the connection, and each takes the one batch waiting
            # per partition, i.e. everything sent since the request before. A batch is
            # never full before it goes (a second batch of a partition would wait for
            # the next request while later records of the others go now), nor is a
            # request (a partition left for the next one). Several requests in flight,
            # or an idempotent producer, would hold back a partition with a batch in
            # flight while later records of the others go ahead.
            max_in_flight_requests_per_connection=1,
            batch_size=1024 * 1024,
            max_request_size=64 * 1024 * 1024,
        )

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
        (docs/architecture.md, "Time"). One producer, one request in flight per broker:
        the records become visible in the order they are sent."""
        counts: Counter[str] = Counter()
        stamp = 0
        wall_start = time.monotonic()
        sim_start = None
        last_report = wall_start
        for emission in emissions:
            if speed > 0:
                sim_start = sim_start or emission.at
                due = (emission.at - sim_start).total_seconds() / speed
                delay = due - (time.monotonic() - wall_start)
                if delay > 0:
                    self.producer.flush()
                    time.sleep(delay)  # pacing the simulation in wall time is the point
            stamp = max(stamp + 1, int(emission.at.timestamp() * 1000))
            self.producer.send(
                self.prefix + emission.topic,
                key=emission.key.encode(),
                value=emission.value(),
                headers=[("content-type", b"application/cloudevents+json")],
                timestamp_ms=stamp,
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

    def close(self) -> None:
        self.producer.close()
