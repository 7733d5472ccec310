"""Benchmark: preferences' GetContactPlan under a real gRPC load tool, against PostgreSQL
holding N customers, and the hit rate of outreach's contact-plan cache.

1. The project's own PostgreSQL (deploy/postgres/local_postgres.py, a throwaway cluster on
   127.0.0.1) gets the Alembic schema and N customers by COPY (a third with a marketing
   consent record, so plans read both tables as in production).
2. Where a call's time goes: the service's store path one call at a time (asyncpg on
   PostgreSQL), next to the same joined SELECT through SQLAlchemy Core with and without
   its pool pre-ping (levers, not the service).
3. `python -m services.preferences` runs against it (and a Kafka broker, which it needs to
   start: KAFKA_BOOTSTRAP_SERVERS if reachable, else the project's local broker): one
   process (with `--replicas 1,2`, then two replicas sharing the gRPC port through
   PREFERENCES_GRPC_REUSE_PORT; each set of runs below against each).
4. ghz (built by `make grpc-tools`) calls GetContactPlan for random customer ids through
   server reflection: a short warm-up, then an open run (as fast as it goes, fixed
   concurrency) and a run at the target rate (2,000 calls/s) whose p99 is the figure the
   target is about, and one at half the open run's rate (latency below saturation);
   each bounded by --duration.
5. outreach's real client (GrpcContactPlans, with its WatchChanges subscription) serves a
   simulated request stream while preferences changes under it; hit rate, invalidations
   and how fast they arrive are reported.

    python -m bench.preferences_grpc [--customers 1000000] [--duration 30s] [--concurrency 50]

Every process it starts is stopped by its pid; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_probe_ms  # noqa: E402
from tests.conftest import stop_process  # noqa: E402

SERVICE = "outreach.preferences.v1.PreferencesService"
TOKEN = "bench-write-token"
READ_TOKEN = "bench-read-token"
TARGET_RPS = 2000
TARGET_P99_MS = 20.0
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
LOCALES: tuple[tuple[str, str], ...] = (
    ("de-DE", "Europe/Berlin"),
    ("en-GB", "Europe/London"),
    ("fr-FR", "Europe/Paris"),
    ("en-US", "America/New_York"),
    ("es-ES", "Europe/Madrid"),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    free = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": os.cpu_count(),
        "free_g": free.strip(),
        "load": os.getloadavg(),
        "cpu_probe_ms": cpu_probe_ms(),
    }


def load_line(label: str) -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    note = "  (measured under load)" if one > 1.5 else ""
    print(f"  uptime load {label}: {one:.2f} {five:.2f} {fifteen:.2f}{note}", flush=True)
    return {"label": label, "load": [one, five, fifteen]}


# --- PostgreSQL --------------------------------------------------------------------


def _customer_rows(count: int, now: str) -> Iterator[str]:
    for i in range(count):
        locale, zone = LOCALES[i % len(LOCALES)]
        yield (
            f"c-{i}\t{FIRST_NAMES[i % len(FIRST_NAMES)]}\tCustomer{i}\tc{i}@example.com\t"
            f"+49151{i:08d}\t{locale}\t{zone}\t21:00\t08:00\temail,sms,whatsapp\t1\t{now}\n"
        )


def _consent_rows(count: int, now: str) -> Iterator[str]:
    for i in range(0, count, 3):
        yield f"c-{i}\t\\N\tmarketing\tt\tsignup\t{now}\tcheckbox\t{now}\n"


def load_customers(url: str, count: int, batch: int = 50_000) -> float:
    """N customers (and a marketing consent for every third) by COPY, in batches of text;
    returns the seconds it took."""
    import psycopg

    started = time.monotonic()
    now = datetime.now(UTC).isoformat()
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            for table, columns, rows in (
                (
                    "customers",
                    "customer_id, first_name, last_name, email, phone, locale, time_zone, "
                    "quiet_start, quiet_end, channel_order, version, updated_at",
                    _customer_rows(count, now),
                ),
                (
                    "consent_records",
                    "customer_id, channel, category, granted, source, occurred_at, evidence, "
                    "recorded_at",
                    _consent_rows(count, now),
                ),
            ):
                with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    chunk: list[str] = []
                    for line in rows:
                        chunk.append(line)
                        if len(chunk) >= batch:
                            copy.write("".join(chunk))
                            chunk.clear()
                    if chunk:
                        copy.write("".join(chunk))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE customers")
        conn.execute("VACUUM ANALYZE consent_records")
    return time.monotonic() - started


# --- where a call's time goes in the store ---------------------------------------------


async def store_costs(url: str, customers: int, calls: int = 2000) -> dict[str, Any]:
    """Wall and CPU time per contact plan, one call at a time, in this process: the
    service's own path (Preferences.plan: one prepared SELECT through asyncpg) next to the
    joined SELECT through SQLAlchemy Core with and without the pre-ping. Levers, not the
    service."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    from services.preferences.adapters.change_feed import ChangeFeed
    from services.preferences.adapters.store import (
        ConsentRow,
        CustomerRow,
        PreferencesStore,
        async_url,
    )
    from services.preferences.handlers import Preferences

    rng = random.Random(3)
    ids = [f"c-{rng.randrange(customers)}" for _ in range(calls)]
    costs: dict[str, Any] = {}

    async def timed(label: str, call: Any) -> None:
        for cid in ids[:100]:
            await call(cid)
        wall, cpu = time.perf_counter(), time.process_time()
        for cid in ids:
            await call(cid)
        costs[label] = {
            "wall_ms": (time.perf_counter() - wall) / calls * 1000,
            "cpu_ms": (time.process_time() - cpu) / calls * 1000,
        }
        print(
            f"  store, one at a time: {label:32s} wall {costs[label]['wall_ms']:.2f} ms"
            f"  cpu {costs[label]['cpu_ms']:.2f} ms per plan",
            flush=True,
        )

    store = PreferencesStore(url, "bench")
    prefs = Preferences(store, ChangeFeed())
    try:
        await timed("Preferences.plan (the service)", lambda cid: prefs.plan(cid, "service"))
    finally:
        await store.close()
    joined = (
        select(
            CustomerRow.__table__,
            ConsentRow.channel,
            ConsentRow.category,
            ConsentRow.granted,
            ConsentRow.source,
            ConsentRow.occurred_at,
        )
        .outerjoin(ConsentRow, ConsentRow.customer_id == CustomerRow.customer_id)
        .order_by(ConsentRow.id)
    )
    for pre_ping in (True, False):
        engine = create_async_engine(async_url(url), pool_pre_ping=pre_ping)

        async def core(cid: str, engine: Any = engine) -> Any:
            async with engine.connect() as conn:
                result = await conn.execute(joined.where(CustomerRow.customer_id == cid))
                return result.all()

        try:
            await timed(f"SQLAlchemy Core SELECT, pre-ping {'on' if pre_ping else 'off'}", core)
        finally:
            await engine.dispose()
    return costs


# --- the preferences process ----------------------------------------------------------


class PreferencesProcess:
    def __init__(
        self,
        database_url: str,
        bootstrap: str,
        data_dir: Path,
        *,
        grpc_port: int | None = None,
        reuse_port: bool = False,
        topic_prefix: str | None = None,
    ) -> None:
        self.grpc_port = grpc_port or free_port()
        self.http_port = free_port()
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "preferences.log"
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(ROOT),
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            OUTREACH_TOPIC_PREFIX=topic_prefix or f"bench{int(time.time())}.",
            OUTREACH_TOPIC_PARTITIONS="1",
            OUTREACH_DATA_DIR=str(data_dir),
            OUTREACH_HTTP_HOST="127.0.0.1",
            PREFERENCES_DATABASE_URL=database_url,
            PREFERENCES_GRPC_HOST="127.0.0.1",
            PREFERENCES_GRPC_PORT=str(self.grpc_port),
            PREFERENCES_HTTP_PORT=str(self.http_port),
            PREFERENCES_WRITE_TOKEN=TOKEN,
            PREFERENCES_READ_TOKEN=READ_TOKEN,
            PREFERENCES_GRPC_REUSE_PORT="true" if reuse_port else "false",
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.preferences"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"preferences exited with {self.proc.returncode}:\n{tail}")
            try:
                url = f"http://127.0.0.1:{self.http_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"preferences not ready after {timeout}s (log: {self.log_path})")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        stop_process(self.proc)


class PreferencesReplicas:
    """`count` preferences processes on one gRPC port (PREFERENCES_GRPC_REUSE_PORT: the
    kernel hands each new connection to one of them), as replicas behind a Kubernetes
    Service would share the load; one consumer group, one database."""

    def __init__(self, database_url: str, bootstrap: str, data_dir: Path, count: int) -> None:
        port = free_port()
        prefix = f"bench{int(time.time())}r{count}."
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[PreferencesProcess] = []
        try:
            for i in range(count):
                self.processes.append(
                    PreferencesProcess(
                        database_url,
                        bootstrap,
                        data_dir / f"replica-{i}",
                        grpc_port=port,
                        reuse_port=count > 1,
                        topic_prefix=prefix,
                    )
                )
        except BaseException:
            self.stop()
            raise
        self.target = f"127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        for process in self.processes:
            process.wait_ready(timeout)

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


# --- ghz --------------------------------------------------------------------------------


def parse_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    for unit in ("ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def call_data(path: Path, customers: int, count: int, seed: int) -> Path:
    """`count` GetContactPlan requests for uniformly random customers, as the JSON array
    ghz sends round-robin (one per call). Cheaper for ghz than a template evaluated on
    every call (`{{randomInt}}`: ~0.06 ms of ghz's CPU per call here), which is CPU the
    server shares."""
    rng = random.Random(seed)
    requests = [
        {"customer_id": f"c-{rng.randrange(customers)}", "category": "CATEGORY_SERVICE"}
        for _ in range(count)
    ]
    path.write_text(json.dumps(requests))
    return path


def run_ghz(
    ghz: str,
    target: str,
    data_file: Path,
    *,
    duration: str,
    concurrency: int,
    connections: int,
    cpus: int = 0,
    rate: int | None = None,
) -> dict[str, Any]:
    """One ghz run over server reflection; the report as ghz's JSON."""
    args = [
        ghz,
        "--insecure",
        "--call",
        f"{SERVICE}.GetContactPlan",
        "--data-file",
        str(data_file),
        "--disable-template-functions",
        "--disable-template-data",
        "-z",
        duration,
        "-c",
        str(concurrency),
        "--connections",
        str(connections),
        "--timeout",
        "5s",
        "--metadata",
        json.dumps({"authorization": f"Bearer {READ_TOKEN}"}),
        # in-flight calls finish when the duration is up (the default closes the
        # connections under them and counts them as Unavailable)
        "--duration-stop",
        "wait",
        "-O",
        "json",
    ]
    if rate:
        args += ["-r", str(rate)]
    if cpus:
        args += ["--cpus", str(cpus)]
    result = subprocess.run(
        [*args, target],
        capture_output=True,
        text=True,
        timeout=parse_seconds(duration) + 60,
        check=False,
    )
    if not result.stdout.strip():
        raise RuntimeError(f"ghz failed ({result.returncode}): {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout))


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    percentiles = {
        int(p["percentage"]): p["latency"] / 1e6 for p in report.get("latencyDistribution") or []
    }
    codes = report.get("statusCodeDistribution") or {}
    count = int(report.get("count", 0))
    ok = int(codes.get("OK", 0))
    return {
        "calls": count,
        "calls_per_s": float(report.get("rps", 0.0)),
        "p50_ms": percentiles.get(50, float("nan")),
        "p90_ms": percentiles.get(90, float("nan")),
        "p99_ms": percentiles.get(99, float("nan")),
        "average_ms": float(report.get("average", 0)) / 1e6,
        "error_rate": (count - ok) / count if count else float("nan"),
        "status_codes": codes,
        "errors": report.get("errorDistribution") or {},
    }


def measure(
    label: str, server: PreferencesReplicas, ghz: str, customers: int, **kwargs: Any
) -> dict[str, Any]:
    # distinct random customers per run, enough that a run does not cycle through them
    # (at most 300,000: ids repeat only in runs longer than that many calls)
    count = min(
        300_000, max(10_000, int((kwargs.get("rate") or 3_000) * parse_seconds(kwargs["duration"])))
    )
    data = call_data(server.data_dir / "calls.json", customers, count, zlib.crc32(label.encode()))
    cpu_before = server.cpu_seconds()
    wall_before = time.monotonic()
    figures = summarise(run_ghz(ghz, server.target, data, **kwargs))
    wall = time.monotonic() - wall_before
    figures["server_cores_busy"] = (server.cpu_seconds() - cpu_before) / wall
    figures["label"] = label
    figures.update(
        {k: v for k, v in kwargs.items() if k != "duration"}, duration=kwargs["duration"]
    )
    print(
        f"  {label:22s} {figures['calls_per_s']:8.0f} calls/s  p50 {figures['p50_ms']:6.2f} ms"
        f"  p99 {figures['p99_ms']:6.2f} ms  errors {figures['error_rate']:.2%}"
        f"  server {figures['server_cores_busy']:.2f} cores",
        flush=True,
    )
    return figures


def service_runs(
    server: PreferencesReplicas, count: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Warm-up, open, the target rate, half the open rate: one set of runs against
    `count` replicas. Replicas sharing a port get their connections from the kernel by a
    hash, so ghz opens more of them (--shared-port-connections) for an even spread."""
    connections = args.connections if count == 1 else args.shared_port_connections
    common = {"concurrency": args.concurrency, "connections": connections, "cpus": args.ghz_cpus}
    print(f"  {count} replica(s), {connections} connection(s):", flush=True)
    figures: dict[str, Any] = {"replicas": count, "connections": connections}

    def run(label: str, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("duration", args.duration)
        return measure(label, server, args.ghz, args.customers, **common, **kwargs)

    run("warm-up", duration=args.warmup)
    figures["load_before"] = load_line("before the runs")
    figures["open"] = run("open (max)")
    figures["fixed"] = run(f"fixed {args.rate}/s", rate=args.rate)
    # the latency a caller sees below saturation: half of what the open run reached
    half = max(1, int(figures["open"]["calls_per_s"] / 2))
    figures["half"] = run(f"fixed {half}/s (half)", rate=half)
    figures["load_after"] = load_line("after the runs")
    return figures


# --- outreach's cache under a changing population ------------------------------------


async def cache_workload(
    target: str,
    customers: int,
    *,
    requests: int,
    repeat_share: float,
    recent_window: int,
    change_share: float,
    time_limit_s: float,
    seed: int = 7,
) -> dict[str, Any]:
    """outreach's GrpcContactPlans (TTL 300 s, WatchChanges) asked for plans as outreach
    asks: a share of requests are for a customer asked about recently (follow-ups, several
    incidents of one order), the rest for someone new; meanwhile preferences changes
    (quiet hours) for recently asked customers, which must drop their cached plans."""
    import grpc
    from google.protobuf import field_mask_pb2

    from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
    from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
    from services.outreach.adapters.contact_plans import GrpcContactPlans

    rng = random.Random(seed)
    plans = GrpcContactPlans(target, cache_ttl_s=300.0, timeout_s=5.0, token=READ_TOKEN)
    await plans.start()
    writer_channel = grpc.aio.insecure_channel(target)
    writer = pb_grpc.PreferencesServiceStub(writer_channel)  # type: ignore[no-untyped-call]
    auth = [("authorization", f"Bearer {TOKEN}")]
    recent: list[str] = []
    changes = dropped = uncached = 0
    drop_latencies: list[float] = []
    cached = plans._cache  # the benchmark looks inside to time invalidations

    async def change(cid: str) -> None:
        nonlocal changes, dropped, uncached
        start = f"{rng.randrange(19, 23):02d}:{rng.choice(('00', '30'))}"
        held = any(key[0] == cid for key in list(cached))
        await writer.UpdatePreferences(
            pb.UpdatePreferencesRequest(
                preferences=pb.Preferences(customer_id=cid, quiet_hours=pb.QuietHours(start=start)),
                update_mask=field_mask_pb2.FieldMask(paths=["quiet_hours.start"]),
            ),
            metadata=auth,
            timeout=5.0,
        )
        changes += 1
        if not held:  # nothing to drop: no invalidation to time
            uncached += 1
            return
        began = time.perf_counter()
        for _ in range(2000):  # polled every ms, at most ~2 s
            if not any(key[0] == cid for key in list(cached)):
                dropped += 1
                drop_latencies.append((time.perf_counter() - began) * 1000)
                return
            if time.perf_counter() - began > 2.0:
                return
            await asyncio.sleep(0.001)

    try:
        # plans are cached only once the change stream is up
        await asyncio.wait_for(plans.until_watching(), 30)
        started = time.monotonic()
        done = 0
        for done in range(1, requests + 1):  # noqa: B007 - done counts after the loop
            if recent and rng.random() < repeat_share:
                cid = rng.choice(recent)
            else:
                cid = f"c-{rng.randrange(customers)}"
                recent.append(cid)
                if len(recent) > recent_window:
                    recent.pop(0)
            category = "service" if rng.random() < 0.8 else "marketing"
            await plans.get(cid, category)
            if rng.random() < change_share:
                await change(rng.choice(recent))
            if time.monotonic() - started > time_limit_s:
                break
        elapsed = time.monotonic() - started
    finally:
        await writer_channel.close()
        await plans.stop()
    drop_latencies.sort()
    lookups = plans.hits + plans.misses
    return {
        "requests": done,
        "seconds": elapsed,
        "hit_rate": plans.hits / lookups if lookups else float("nan"),
        "hits": plans.hits,
        "misses": plans.misses,
        "changes": changes,
        "changes_of_uncached_customers": uncached,
        "changes_seen_within_2s": dropped,
        "invalidation_p50_ms": drop_latencies[len(drop_latencies) // 2]
        if drop_latencies
        else float("nan"),
        "invalidation_max_ms": drop_latencies[-1] if drop_latencies else float("nan"),
        "repeat_share": repeat_share,
        "recent_window": recent_window,
        "change_share": change_share,
    }


# --- main -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--duration", default="30s", help="each measured ghz run (ghz -z)")
    parser.add_argument("--warmup", default="5s")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--connections", type=int, default=2, help="ghz's, to one replica")
    parser.add_argument(
        "--shared-port-connections",
        type=int,
        default=16,
        help="ghz's, to several replicas on one port (the kernel spreads connections, not calls)",
    )
    parser.add_argument(
        "--replicas",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[1],
        help="comma-separated, e.g. 1,2: a set of runs against each count of replicas "
        "sharing the gRPC port (on 2 cores a second one adds ~15 %%: docs/performance-"
        "preferences.md, run 7)",
    )
    parser.add_argument(
        "--ghz-cpus",
        type=int,
        default=1,
        help="ghz's GOMAXPROCS (0: all cores); on 2 cores shared with the server, one "
        "leaves the server the most (docs/performance-preferences.md, run 6)",
    )
    parser.add_argument("--rate", type=int, default=TARGET_RPS, help="the fixed-rate run")
    parser.add_argument("--ghz", default=shutil.which("ghz") or "ghz")
    parser.add_argument("--postgres-url", default=os.environ.get("OUTREACH_BENCH_POSTGRES_URL"))
    parser.add_argument("--cache-requests", type=int, default=10_000)
    parser.add_argument("--cache-repeat-share", type=float, default=0.5)
    parser.add_argument("--cache-window", type=int, default=2_000)
    parser.add_argument("--cache-change-share", type=float, default=0.02)
    parser.add_argument("--cache-time-limit", type=float, default=90.0)
    parser.add_argument("--output", default=str(ROOT / "var" / "bench" / "preferences_grpc.json"))
    args = parser.parse_args()
    if not args.replicas or min(args.replicas) < 1:
        parser.error("--replicas needs at least one count, each at least 1")
    if not Path(args.ghz).exists() and shutil.which(args.ghz) is None:
        print(f"ghz not found ({args.ghz}): `make grpc-tools` builds it", file=sys.stderr)
        return 2

    from deploy.kafka.local_kafka import LocalKafka
    from deploy.postgres.local_postgres import LocalPostgres
    from services.preferences.adapters.store import migrate

    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "loads": [], "runs": []}
    print(
        f"preferences gRPC benchmark: {args.customers} customers, {os.cpu_count()} cores, "
        f"cpu probe {results['machine']['cpu_probe_ms']:.0f} ms"
    )
    results["loads"].append(load_line("at start"))
    work = Path(tempfile.mkdtemp(prefix="outreach-prefs-bench-"))
    postgres = broker = server = None
    try:
        url = args.postgres_url
        if not url:
            postgres = LocalPostgres(database="prefs_bench").start()
            url = postgres.url
        migrate(url)
        seconds = load_customers(url, args.customers)
        results["load_seconds"] = seconds
        print(f"  loaded {args.customers} customers by COPY in {seconds:.1f} s", flush=True)
        results["store_costs"] = asyncio.run(store_costs(url, args.customers))

        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = LocalKafka(port=0, data_dir=str(work / "kafka")).start()
            bootstrap = broker.bootstrap
        for count in args.replicas:
            if server is not None:  # the previous set's replicas
                server.stop()
            server = PreferencesReplicas(url, bootstrap, work / f"replicas-{count}", count)
            server.wait_ready()
            results["runs"].append(service_runs(server, count, args))
        assert server is not None
        # outreach's cache against the last set's replicas (its change stream comes from
        # whichever replica a subscription lands on; changes reach it through PostgreSQL)
        cache = asyncio.run(
            cache_workload(
                server.target,
                args.customers,
                requests=args.cache_requests,
                repeat_share=args.cache_repeat_share,
                recent_window=args.cache_window,
                change_share=args.cache_change_share,
                time_limit_s=args.cache_time_limit,
            )
        )
        results["cache"] = cache
        print(
            f"  outreach cache: hit rate {cache['hit_rate']:.1%} over {cache['requests']} "
            f"requests; {cache['changes_seen_within_2s']} of "
            f"{cache['changes'] - cache['changes_of_uncached_customers']} changes to a cached "
            f"customer dropped the plan (p50 {cache['invalidation_p50_ms']:.1f} ms, "
            f"max {cache['invalidation_max_ms']:.1f} ms)",
            flush=True,
        )
    finally:
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\ntarget ≥ {TARGET_RPS} calls/s with p99 < {TARGET_P99_MS:.0f} ms:")
    for figures in results["runs"]:
        fixed, opened = figures["fixed"], figures["open"]
        figures["target_met"] = (
            opened["calls_per_s"] >= TARGET_RPS
            and fixed["p99_ms"] < TARGET_P99_MS
            and fixed["error_rate"] == 0
        )
        print(
            f"  {figures['replicas']} replica(s): {'met' if figures['target_met'] else 'NOT met'}"
            f" (open {opened['calls_per_s']:.0f} calls/s; p99 at {args.rate}/s offered "
            f"{fixed['p99_ms']:.1f} ms, achieved {fixed['calls_per_s']:.0f} calls/s)"
        )
    results["target"] = {
        "calls_per_s": TARGET_RPS,
        "p99_ms": TARGET_P99_MS,
        "met_with_replicas": [f["replicas"] for f in results["runs"] if f["target_met"]],
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    print(f"figures in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
