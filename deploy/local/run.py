"""`make run`: the whole pipeline on this machine, on embedded defaults.

Starts (or reuses) a local Kafka broker, the four services as separate processes
(SQLite, outbox mode, event clock), and the shop simulator; then prints what happens —
incidents, requests and messages as they flow — until Ctrl-C stops everything it
started, by pid, in reverse order.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [
    ("preferences", "services.preferences", 8084),
    ("orders_watcher", "services.orders_watcher", 8081),
    ("risk_detector", "services.risk_detector", 8082),
    ("outreach", "services.outreach", 8083),
    ("studio", "services.outreach.studio", 8085),
]


def _reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--speed",
        type=float,
        default=1800.0,
        help="simulated seconds per wall second (default 1800: 30 min/s)",
    )
    parser.add_argument("--rate", type=float, default=120.0, help="orders per simulated hour")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", default="14d", help="simulated duration")
    parser.add_argument("--data-dir", default=str(ROOT / "var" / "run"))
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from deploy.kafka.local_kafka import LocalKafka

    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    kafka: LocalKafka | None = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    data_dir = Path(args.data_dir)
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def stop(*_: object) -> None:
        print("\nstopping ...", flush=True)
        for _name, proc in reversed(children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, proc in reversed(children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if kafka is not None:
            kafka.stop()
        print("stopped everything `make run` started.", flush=True)

    try:
        if bootstrap and _reachable(bootstrap):
            print(f"using the Kafka cluster at {bootstrap}")
        else:
            print(
                "starting a local Kafka broker (first run fetches its jars from Maven Central) ...",
                flush=True,
            )
            kafka = LocalKafka(
                port=int(os.environ.get("KAFKA_PORT", "9092")), data_dir=str(data_dir / "kafka")
            )
            kafka.start()
            bootstrap = kafka.bootstrap
            print(f"Kafka is up at {bootstrap}")
        env = dict(os.environ)
        read_token, write_token = local_tokens(data_dir)
        env.update(
            # preferences' RPCs take tokens here as in production (generated once, kept
            # in the data dir): outreach reads with the read token.
            PREFERENCES_READ_TOKEN=read_token,
            PREFERENCES_WRITE_TOKEN=write_token,
            OUTREACH_PREFERENCES_TOKEN=read_token,
            # The simulator stamps its records with its story's time: keep them all.
            OUTREACH_TOPIC_RETENTION_MS=env.get("OUTREACH_TOPIC_RETENTION_MS", "-1"),
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            OUTREACH_CLOCK="event",
            OUTREACH_DATA_DIR=str(data_dir),
            LOG_FORMAT=env.get("LOG_FORMAT", "json"),
            PYTHONPATH=str(ROOT),
            ORDERS_WATCHER_STORE=env.get("ORDERS_WATCHER_STORE", "rocksdb://"),
            RISK_DETECTOR_STORE=env.get("RISK_DETECTOR_STORE", "rocksdb://"),
        )
        subprocess.run(
            [sys.executable, "-m", "common.cli", "topics", "create"], env=env, check=True, cwd=ROOT
        )
        for name, module, port in SERVICES:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            children.append((name, proc))
            print(
                f"started {name:15s} pid {proc.pid:<7d} http://127.0.0.1:{port}/metrics  "
                f"log {logs / (name + '.log')}"
            )
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulator",
                "--seed",
                str(args.seed),
                "--customers",
                str(args.customers),
                "--rate",
                str(args.rate),
                "--speed",
                str(args.speed),
                "--duration",
                args.duration,
                "--start",
                "now",
            ],
            env=env,
            cwd=ROOT,
            stdout=open(logs / "simulator.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        children.append(("simulator", sim))
        print(
            f"started simulator       pid {sim.pid:<7d} {args.speed:.0f}x speed, "
            f"{args.rate:.0f} orders/h, log {logs / 'simulator.log'}"
        )
        studio_sign_in = studio_admin(env, data_dir)
        print(f"\ntemplate studio:        http://127.0.0.1:8085/  {studio_sign_in}")
        print(f"outbox (SQLite ledger): {data_dir / 'outreach' / 'outreach.db'}")
        print("explain a customer:     .venv/bin/outreachctl explain <customer_id>")
        print("Ctrl-C stops everything.\n", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        watch(bootstrap, children)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def local_tokens(data_dir: Path) -> tuple[str, str]:
    """preferences' read and write tokens of this dev data dir, generated on first use."""
    import secrets

    tokens = []
    for name in ("read", "write"):
        keep = data_dir / "preferences" / f".{name}-token"
        if not keep.exists():
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_text(secrets.token_urlsafe(24))
            keep.chmod(0o600)
        tokens.append(keep.read_text().strip())
    return tokens[0], tokens[1]


def studio_admin(env: dict[str, str], data_dir: Path) -> str:
    """A local admin for the studio of this dev data dir, with a password generated on
    the first run (kept, readable only by you, beside the dev database). Production
    admins are created with `python -m services.outreach.studio users add`."""
    import secrets

    keep = data_dir / "outreach" / ".studio-admin-password"
    if not keep.exists():
        password = secrets.token_urlsafe(12)
        done = subprocess.run(
            [sys.executable, "-m", "services.outreach.studio", "users", "add", "admin",
             "--role", "admin", "--password-stdin"],
            env=env, cwd=ROOT, input=password, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            return f"(no admin created: {done.stderr.strip()})"
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.touch(mode=0o600)
        keep.write_text(password)
    return f"sign in as admin / {keep.read_text().strip()}  (kept in {keep})"


def watch(bootstrap: str, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Print incidents, requests and messages as they happen."""
    from kafka import KafkaConsumer

    from common.kafka_security import client_options

    prefix = os.environ.get("OUTREACH_TOPIC_PREFIX", "")
    consumer = KafkaConsumer(
        f"{prefix}outreach.incidents",
        f"{prefix}outreach.requests",
        f"{prefix}outreach.messages",
        f"{prefix}support.handoffs",
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="latest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
        **client_options(),
    )
    counts: dict[str, int] = {}
    while True:
        for name, proc in children:
            if proc.poll() is not None and name != "simulator":
                print(f"!! {name} exited with {proc.returncode}; see its log")
                raise KeyboardInterrupt
        for record in consumer:
            try:
                event = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                continue
            kind = event.get("type", "?")
            data = event.get("data", {})
            counts[kind] = counts.get(kind, 0) + 1
            when = str(event.get("time", ""))[:16]
            if kind.startswith("incident."):
                line = f"{data.get('kind')} ({data.get('severity')}) order {data.get('order_id')}"
            elif kind.startswith("outreach.request"):
                line = (
                    f"{data.get('intent')}/{data.get('message_kind')} for customer "
                    f"{data.get('customer_id')}"
                )
            elif kind.startswith("outreach.message"):
                extra = data.get("reason") or data.get("provider_message_id") or ""
                line = (  # a message suppressed before a channel was chosen has none
                    f"{data.get('channel') or '-'} {data.get('message_kind')} to customer "
                    f"{data.get('customer_id')} {extra}"
                )
            else:
                line = f"customer {data.get('customer_id')} score {data.get('risk_score')}"
            print(f"{when}  {kind:32s} {line}", flush=True)


if __name__ == "__main__":
    main()
