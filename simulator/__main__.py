"""python -m simulator: publish a simulated shop to Kafka (docs/simulator.md)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime, timedelta

from common.in_order import RecordsRefused
from simulator.publisher import Publisher
from simulator.shop import DEFAULT_START, Config, Shop


def duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("durations look like 90m, 36h or 7d")
    value, unit = float(match.group(1)), match.group(2)
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def start_time(text: str) -> datetime:
    if text == "now":
        return datetime.now(UTC).replace(microsecond=0)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulator", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=60.0, help="orders per simulated hour")
    parser.add_argument(
        "--duration",
        type=duration,
        default=timedelta(days=7),
        help="simulated window for new orders (e.g. 36h, 7d)",
    )
    parser.add_argument("--max-events", type=int, default=None)
    parser.add_argument(
        "--speed",
        type=float,
        default=3600.0,
        help="simulated seconds per wall second; 0 = as fast as possible",
    )
    parser.add_argument("--no-pace", action="store_true", help="same as --speed 0")
    parser.add_argument(
        "--start",
        type=start_time,
        default=DEFAULT_START,
        help="simulated start (RFC 3339) or 'now'; default fixed for replays",
    )
    parser.add_argument("--malformed-rate", type=float, default=0.0)
    parser.add_argument("--dry-run", action="store_true", help="JSON lines to stdout, no Kafka")
    parser.add_argument("--topic-prefix", default=os.environ.get("OUTREACH_TOPIC_PREFIX", ""))
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    )
    args = parser.parse_args(argv)
    config = Config(
        seed=args.seed,
        customers=args.customers,
        orders_per_hour=args.rate,
        duration=args.duration,
        start=args.start,
        max_events=args.max_events,
        malformed_rate=args.malformed_rate,
    )
    emissions = Shop(config).events()
    if args.dry_run:
        for emission in emissions:
            sys.stdout.write(emission.value().decode() + "\n")
        return 0
    publisher = Publisher(
        args.bootstrap, args.topic_prefix, int(os.environ.get("OUTREACH_TOPIC_PARTITIONS", "4"))
    )
    try:
        publisher.ensure_topics()
        counts = publisher.run(emissions, speed=0 if args.no_pace else args.speed)
        print(f"[simulator] done: {sum(counts.values())} events", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    except RecordsRefused as exc:  # the story has a hole: say so, do not go on quietly
        print(f"[simulator] stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
