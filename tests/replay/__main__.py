"""Replay one shop story several times through the whole pipeline and compare.

    python -m tests.replay [--customers N] [--days D] [--rate R] [--speed S]
                           [--runs K] [--watchers W]

Starts its own broker unless KAFKA_BOOTSTRAP_SERVERS names a reachable one. Exit status
1 when the runs differ.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from tests.replay.harness import replay, story


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--days", type=float, default=21)
    parser.add_argument("--rate", type=float, default=3.0, help="orders per event hour")
    parser.add_argument("--speed", default="0", help="event s per wall s, comma-separated per run")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--watchers", default="1", help="watcher instances, comma-separated per run"
    )
    parser.add_argument(
        "--join-at",
        type=float,
        default=None,
        help="the fraction of the story after which watchers beyond the first join",
    )
    args = parser.parse_args(argv)
    emissions = story(customers=args.customers, days=args.days, orders_per_hour=args.rate)
    print(f"story: {len(emissions)} events", flush=True)
    speeds = [float(s) for s in args.speed.split(",")]
    watchers = [int(w) for w in args.watchers.split(",")]
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    work = Path(tempfile.mkdtemp(prefix="outreach-replay-"))
    if not bootstrap:
        from deploy.kafka.local_kafka import LocalKafka

        broker = LocalKafka(port=0, data_dir=str(work / "kafka"))
        broker.start()
        bootstrap = broker.bootstrap
    try:
        results = []
        for n in range(args.runs):
            speed, count = speeds[n % len(speeds)], watchers[n % len(watchers)]
            result = replay(
                bootstrap,
                emissions,
                work / f"run{n}",
                speed=speed,
                watchers=count,
                join_at=args.join_at,
            )
            results.append(result)
            print(
                f"run {n}: speed {speed:g}, {count} watcher(s), {result.seconds:.0f} s:"
                f" {sum(result.incidents.values())} incidents,"
                f" {sum(result.requests.values())} requests,"
                f" {sum(result.decisions.values())} decisions,"
                f" {sum(result.messages.values())} messages,"
                f" {len(result.orphans)} orphan dead letters",
                flush=True,
            )
        same = True
        for n, other in enumerate(results[1:], start=1):
            for name, (here, there) in results[0].differences(other).items():
                same = False
                print(
                    f"run 0 vs run {n}: {name}: {len(here)} only in run 0,"
                    f" {len(there)} only in run {n}"
                )
                for item in here[:5]:
                    print(f"   0: {item}")
                for item in there[:5]:
                    print(f"   {n}: {item}")
        print("identical" if same else "DIFFERENT")
        return 0 if same else 1
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
