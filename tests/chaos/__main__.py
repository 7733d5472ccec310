"""`make chaos`: the whole fault matrix on the project's own broker and PostgreSQL
(started here, on loopback, so that scenarios may restart them), then the table.

    python -m tests.chaos [--only NAME,...] [--size N] [--json FILE]

Exit status 1 when any scenario shows a duplicate, a loss, a message after an opt-out,
one in quiet hours, a status going backwards, a dead letter or lag left over.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from deploy.kafka.local_kafka import LocalKafka
from deploy.postgres.local_postgres import LocalPostgres
from tests.chaos.scenarios import Infra, matrix, run, table
from tests.chaos.world import Databases

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="scenario names, comma-separated")
    parser.add_argument("--size", type=int, default=0, help="customers per scenario")
    parser.add_argument("--json", default=str(ROOT / "var" / "chaos" / "last.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="outreach-chaos-"))
    work.chmod(0o755)  # PostgreSQL runs as its own user (as root: postgres)
    broker = LocalKafka(port=0, data_dir=work / "kafka")
    postgres = LocalPostgres(data_dir=str(work / "postgres"))
    broker.start()
    postgres.start()
    print(f"broker {broker.bootstrap}, PostgreSQL {postgres.url}, work {work}", flush=True)

    def restart_postgres() -> None:
        postgres.stop()
        postgres.start()

    def restart_broker() -> None:
        broker.stop()
        broker.start()

    def databases() -> Databases:
        name = uuid.uuid4().hex[:8]
        return Databases(
            postgres.create_database(f"o_{name}"),
            postgres.create_database(f"p_{name}"),
            restart=restart_postgres,
        )

    infra = Infra(broker.bootstrap, databases, work, restart_broker=restart_broker)
    scenarios = matrix(infra)
    if args.only:
        wanted = set(args.only.split(","))
        scenarios = [s for s in scenarios if s.name in wanted]
    if args.size:
        scenarios = [replace(s, size=args.size) for s in scenarios]
    verdicts = []
    try:
        for scenario in scenarios:
            print(f"-- {scenario.name}: {scenario.fault}", flush=True)
            verdict = run(scenario, infra)
            verdicts.append(verdict)
            print(f"   {'ok' if verdict.ok else 'VIOLATED'} in {verdict.seconds:.0f} s", flush=True)
            print(f"   outcomes: {verdict.outcomes}", flush=True)
            for note in verdict.notes:
                print(f"   {note}", flush=True)
    finally:
        postgres.stop()
        broker.stop()
    faults = {s.name: s.fault for s in scenarios}
    print()
    print(table(verdicts, faults))
    machine = f"{platform.node()}, {_cpus()} CPUs, Python {platform.python_version()}"
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "verdicts": [asdict(v) | {"ok": v.ok, "fault": faults[v.scenario]} for v in verdicts],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\n{report['date']} on {machine}; {args.json}")
    return 0 if all(v.ok for v in verdicts) else 1


def _cpus() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"{time.monotonic() - started:.0f} s")
    sys.exit(code)
