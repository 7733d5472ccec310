"""Benchmark: a rehearsal of a week of a shop with `--orders-per-day` orders a day
(docs/rehearsal.md; the target: 10,000 a day in under 60 s on this machine).

    python -m bench.rehearsal [--orders-per-day 10000] [--days 7] [--customers 20000]

The simulator writes the week as an archive (its own mix: late, stalled, lost and
returned parcels, duplicates, events out of order); the rehearsal replays it in one
process (replay/: the four services' handlers on one event clock, no broker), or with
`--through-services` on the real local broker (started and stopped here) in its own
namespace — the four services as processes on the event clock — until the pipeline is
at rest, and reports. Printed: the records, how long each stage took, the time each
service took in one process, the peak memory, and the report's totals.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.outreach.rehearsal import archive  # noqa: E402
from services.outreach.rehearsal.run import Options, rehearse  # noqa: E402
from simulator.shop import Config, Shop  # noqa: E402


def week(orders_per_day: float, days: float, customers: int, seed: int) -> list[archive.Record]:
    shop = Shop(Config(seed=seed, customers=customers, orders_per_hour=orders_per_day / 24,
                       duration=timedelta(days=days)))  # fmt: skip
    return [
        archive.Record(e.topic, e.key.encode(), e.value(), int(e.at.timestamp() * 1000))
        for e in shop.events()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders-per-day", type=float, default=10_000)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--through-services", action="store_true")
    args = parser.parse_args()
    from common.logs import configure_logging

    configure_logging("bench", "WARNING", "console", stream="stderr")
    # Stopped, it still stops its broker and the rehearsal's services (their clean-up).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.monotonic()
    records = week(args.orders_per_day, args.days, args.customers, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-rehearsal-"))
    archived = work / "week.jsonl.gz"
    archive.write(archived, records)
    made = time.monotonic() - started
    print(f"[bench] {len(records)} records of {args.days:g} days archived in {made:.1f} s",
          flush=True)  # fmt: skip
    first, last = records[0].timestamp_ms, max(r.timestamp_ms for r in records)
    options = Options(
        bootstrap="", work=work / "run", archive=archived, since=_at(first), until=_at(last),
        timeout_s=args.timeout, progress=lambda line: print(f"[bench]   {line}", flush=True),
    )  # fmt: skip
    broker = None
    if args.through_services:
        from deploy.kafka.local_kafka import LocalKafka

        broker = LocalKafka(port=0, data_dir=str(work / "kafka")).start()
        options.bootstrap = broker.bootstrap
    else:
        from replay.engine import in_process

        options.replayer = in_process
    try:
        began = time.monotonic()
        found = rehearse(options)
        took = time.monotonic() - began
    finally:
        if broker is not None:
            broker.stop()
    print(f"[bench] rehearsal: {took:.1f} s (target < 60 s); peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")  # fmt: skip
    for note in found.notes:
        print(f"[bench]   {note}")
    print(f"[bench] customers reached {found.customers_reached}, messages {found.messages}, "
          f"held back {sum(found.suppressed.values())}, storms {len(found.storms)}")  # fmt: skip
    return 0


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


if __name__ == "__main__":
    sys.exit(main())
