"""Publishes the simulated shop to Kafka with kafka-python, paced in simulated time."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable

from common.in_order import InOrderProducer
from common.topics import COMPACTED, INPUT_TOPICS, TopicSpec
from simulator.shop import Emission


class Publisher:
    def __init__(self, bootstrap_servers: str, prefix: str = "", partitions: int = 4) -> None:
        self.prefix = prefix
        self.bootstrap = bootstrap_servers
        self.partitions = partitions
        self.producer = InOrderProducer(bootstrap_servers)
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
        """Publish in order (common/in_order.py: visible on the broker in that order,
        across partitions too); with speed > 0, `speed` simulated seconds per wall
        second.

        Each record is stamped with the moment of the story it is published at (strictly
        increasing, a millisecond apart at least), as a shop's systems stamp a record
        when they publish it: the services' event clock follows these stamps
        (docs/architecture.md, "Time")."""
        counts: Counter[str] = Counter()
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
            self._stamp = max(self._stamp + 1, int(emission.at.timestamp() * 1000))
            self.producer.send(
                self.prefix + emission.topic, emission.key.encode(), emission.value(), self._stamp
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
