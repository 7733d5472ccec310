"""Benchmark: orders_watcher on the real local broker, side by side with (a) a bare faust
pass-through agent, (b) a naive table-per-event faust agent and (c) a hand-written
aiokafka consumer with the same rules on in-memory state (bench/stages.py).

    python -m bench.watcher_throughput [--stages watcher,bare,naive,handwritten]
        [--backlog 20000] [--trial-s 20] [--latency-s 30] [--orders 100000]
        [--kafka-port 29392] [--timeout 900] [--json results.json]

Per stage, in one consumer process:
1. drain: a backlog of `--backlog` events is published first, then the consumer starts;
   drain rate = events/s between 10 % and 95 % of the backlog (an upper bound).
2. open loop: events are published at a fixed rate R for `--trial-s` seconds while the
   consumer's progress is sampled; R is sustainable when the lag at the end is at most
   2 s of input and the lag grew by less than 5 % of R over the second half. R starts at
   0.95 x the drain rate and steps down until a trial is sustainable.
3. (watcher) detection latency at half the sustainable rate, event in -> incident out.
Then (watcher) memory per open order and table recovery time: N open orders, written
to the watcher's changelogs, are recovered by a worker with an empty data dir.

Everything is bounded: every load has a fixed count and a deadline, a consumer whose
progress stalls for `--stall-s` seconds or that exits fails the run with its log tail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import INPUTS, Corpus, Record, base_story  # noqa: E402

PARTITIONS = 4
STAGES = ("bare", "watcher", "naive", "handwritten")
STEPS = (0.95, 0.8, 0.65, 0.5, 0.35, 0.2)
_METRIC = re.compile(r"^outreach_events_consumed_total\{([^}]*)\} ([0-9.e+]+)$", re.MULTILINE)


class BenchError(RuntimeError):
    pass


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# --- consumers ---------------------------------------------------------------------------


class Consumer:
    """One consumer process under test, with its progress read from its /metrics."""

    def __init__(self, stage: str, bootstrap: str, prefix: str, workdir: Path) -> None:
        self.stage = stage
        self.port = free_port()
        self.data_dir = workdir / f"{stage}-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{stage}.log"
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            BOOTSTRAP=bootstrap,
            PREFIX=prefix,
            PORT=str(self.port),
            DATA_DIR=str(self.data_dir),
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            OUTREACH_TOPIC_PREFIX=prefix,
            OUTREACH_CLOCK="event",
            OUTREACH_DATA_DIR=str(self.data_dir),
            OUTREACH_TOPIC_PARTITIONS=str(PARTITIONS),
            ORDERS_WATCHER_HTTP_PORT=str(self.port),
            LOG_LEVEL="WARNING",
            LOG_FORMAT="console",
        )
        if stage == "watcher":
            cmd = [sys.executable, "-m", "services.orders_watcher"]
        else:
            cmd = [sys.executable, "-m", "bench.stages", stage]
        self.started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )

    def metrics(self) -> str | None:
        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def progress(self) -> int:
        """Input records handled (processed + dead-lettered). The watcher also counts a
        duplicate as outcome="duplicate" *and* "processed", so "duplicate" is left out."""
        text = self.metrics()
        if text is None:
            return -1
        total = 0.0
        for labels, value in _METRIC.findall(text):
            if 'outcome="duplicate"' not in labels:
                total += float(value)
        return int(total)

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.stage} exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Sampler(threading.Thread):
    """Samples a consumer's progress every `every` seconds in the background."""

    def __init__(self, consumer: Consumer, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.consumer = consumer
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            done = self.consumer.progress()
            if done >= 0:
                self.samples.append((time.monotonic(), done))
            self._halt.wait(self.every)

    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def wait_progress(
    consumer: Consumer, sampler: Sampler, target: int, timeout: float, stall_s: float, what: str
) -> None:
    """Wait until the consumer has handled `target` records; fail fast when it stalls."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while True:
        consumer.check_alive()
        done = sampler.latest()
        now = time.monotonic()
        if done >= target:
            return
        if done != last:
            last, last_change = done, now
        if now - last_change > stall_s:
            raise BenchError(
                f"{consumer.stage}: {what} stalled at {done}/{target} records for {stall_s:.0f}s"
                f" (load {load_average()}):\n{consumer.log_tail()}"
            )
        if now > deadline:
            raise BenchError(
                f"{consumer.stage}: {what} not done within {timeout:.0f}s ({done}/{target}, "
                f"load {load_average()}):\n{consumer.log_tail()}"
            )
        time.sleep(0.1)


# --- load ---------------------------------------------------------------------------------


class Load:
    """Publishes corpus records to a run's topics: all at once, or paced at a fixed rate."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        from kafka import KafkaProducer

        from common.admin import ensure_topics
        from common.topics import TopicSpec

        self.prefix = prefix
        ensure_topics(bootstrap, [TopicSpec(prefix + t, PARTITIONS) for t in INPUTS])
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=2, retries=5
        )
        self.sent = 0

    def _send(self, record: Record) -> None:
        self.producer.send(self.prefix + record.topic, key=record.key, value=record.value)

    def backlog(self, records: list[Record]) -> None:
        for record in records:
            self._send(record)
        self.producer.flush(timeout=120)
        self.sent += len(records)

    def paced(self, records: list[Record], rate: float) -> tuple[list[float], float]:
        """Publish at `rate` records/s (open loop: the consumer does not slow it down).
        Returns each record's send time (monotonic) and the achieved rate."""
        times: list[float] = []
        start = time.monotonic()
        deadline = start + len(records) / rate * 1.5 + 5
        sent = 0
        while sent < len(records):
            now = time.monotonic()
            if now > deadline:
                raise BenchError(
                    f"the load generator could not keep {rate:.0f}/s "
                    f"({sent}/{len(records)} sent, load {load_average()})"
                )
            due = min(len(records), int((now - start) * rate) + 1)
            while sent < due:
                self._send(records[sent])
                times.append(now)
                sent += 1
            time.sleep(0.002)
        self.producer.flush(timeout=60)
        self.sent += sent
        return times, sent / (time.monotonic() - start)

    def close(self) -> None:
        self.producer.close(timeout=10)


# --- one stage ----------------------------------------------------------------------------


@dataclass
class Trial:
    rate: float
    achieved: float
    lag_end: int
    lag_max: int
    lag_slope: float
    sustainable: bool
    load: str


@dataclass
class StageResult:
    stage: str
    drain_rate: float = 0.0
    drain_load: str = ""
    sustainable: float = 0.0
    trials: list[Trial] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def open_loop_trial(
    load: Load,
    consumer: Consumer,
    sampler: Sampler,
    corpus: Corpus,
    rate: float,
    seconds: float,
    stall_s: float,
) -> tuple[Trial, list[Record], list[float]]:
    records = corpus.take(max(1, int(rate * seconds)))
    base = load.sent
    start = time.monotonic()
    times, achieved = load.paced(records, rate)
    end = time.monotonic()
    sent_at = [t for t in times]
    lags: list[tuple[float, float]] = []
    for t, done in list(sampler.samples):
        if start <= t <= end:
            produced = base + bisect_left(sent_at, t)
            lags.append((t - start, produced - done))
    lag_end = int(lags[-1][1]) if lags else load.sent - sampler.latest()
    lag_max = int(max((lag for _, lag in lags), default=lag_end))
    slope = _slope([p for p in lags if p[0] >= seconds / 2])
    # Judged on the rate actually sent (the generator shares the 2 cores).
    sustainable = lag_end <= max(2 * achieved, 50) and slope <= 0.05 * achieved
    trial = Trial(rate, achieved, lag_end, lag_max, slope, sustainable, load_average())
    # Let it catch up before the next trial (bounded: the backlog is at most the trial).
    wait_progress(consumer, sampler, load.sent, 30 + 2 * seconds, stall_s, "catch-up")
    return trial, records, times


def measure_stage(
    stage: str, bootstrap: str, stamp: str, corpus: Corpus, args: argparse.Namespace
) -> StageResult:
    prefix = f"bench{stamp}{stage}."
    workdir = Path(args.workdir)
    result = StageResult(stage)
    load = Load(bootstrap, prefix)
    backlog = corpus.take(args.backlog)
    load.backlog(backlog)
    consumer = Consumer(stage, bootstrap, prefix, workdir)
    sampler = Sampler(consumer, every=0.1)
    sampler.start()
    try:
        wait_progress(consumer, sampler, len(backlog), args.timeout, args.stall_s, "drain")
        lo, hi = 0.10 * len(backlog), 0.95 * len(backlog)
        window = [(t, d) for t, d in sampler.samples if lo <= d <= hi]
        if len(window) < 2:
            window = [(t, d) for t, d in sampler.samples if d > 0]
        (t0, d0), (t1, d1) = window[0], window[-1]
        result.drain_rate = (d1 - d0) / (t1 - t0) if t1 > t0 else float("nan")
        result.drain_load = load_average()
        print(
            f"  {stage}: drained {len(backlog)} in backlog at {result.drain_rate:.0f} ev/s "
            f"(load {result.drain_load})",
            flush=True,
        )
        for step in STEPS:
            rate = max(10.0, step * result.drain_rate)
            trial, _, _ = open_loop_trial(
                load, consumer, sampler, corpus, rate, args.trial_s, args.stall_s
            )
            result.trials.append(trial)
            verdict = "sustainable" if trial.sustainable else "NOT sustainable"
            print(
                f"  {stage}: open loop {rate:.0f}/s (sent {trial.achieved:.0f}/s): lag end "
                f"{trial.lag_end}, max {trial.lag_max}, slope {trial.lag_slope:+.1f}/s "
                f"-> {verdict} (load {trial.load})",
                flush=True,
            )
            if trial.sustainable:
                result.sustainable = trial.achieved
                break
        if stage == "watcher" and result.sustainable and args.latency_s > 0:
            result.latency = measure_latency(
                load, consumer, sampler, corpus, bootstrap, prefix, result.sustainable / 2, args
            )
    finally:
        sampler.stop()
        consumer.stop()
        load.close()
    return result


# --- detection latency --------------------------------------------------------------------


def measure_latency(
    load: Load,
    consumer: Consumer,
    sampler: Sampler,
    corpus: Corpus,
    bootstrap: str,
    prefix: str,
    rate: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Open loop at `rate`; for each incident, latency = its record's timestamp minus the
    send time of the last input that could have caused it: the latest input of the same
    order sent before it, or (deadline incidents) the first input whose event time reached
    the incident's moment — whichever came later."""
    from kafka import KafkaConsumer, TopicPartition

    topic = f"{prefix}outreach.incidents"
    reader = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    reader.assign(tps)
    reader.seek_to_end(*tps)
    for tp in tps:
        reader.position(tp)
    wall_minus_mono = time.time() - time.monotonic()
    trial, records, times = open_loop_trial(
        load, consumer, sampler, corpus, rate, args.latency_s, args.stall_s
    )
    incidents: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        polled = reader.poll(timeout_ms=500)
        if not polled and time.monotonic() > deadline - 8:
            break
        for batch in polled.values():
            for r in batch:
                incidents.append((r.timestamp / 1000 - wall_minus_mono, json.loads(r.value)))
    reader.close()
    last_of_order: dict[str, list[float]] = {}
    for record, sent in zip(records, times, strict=True):
        last_of_order.setdefault(record.order_id, []).append(sent)
    running_max: list[float] = []
    highest = float("-inf")
    for record in records:
        highest = max(highest, record.time)
        running_max.append(highest)
    from datetime import datetime

    latencies: list[float] = []
    for out, event in incidents:
        data = event.get("data") or {}
        moment = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()
        candidates = []
        same = [t for t in last_of_order.get(str(data.get("order_id")), []) if t <= out]
        if same:
            candidates.append(same[-1])
        i = bisect_left(running_max, moment)
        if i < len(times):
            candidates.append(times[i])
        if candidates:
            trigger = max(candidates)
            if trigger <= out:
                latencies.append((out - trigger) * 1000)
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    summary: dict[str, Any] = {
        "rate": rate,
        "seconds": args.latency_s,
        "incidents": len(incidents),
        "measured": len(latencies),
        "lag_end": trial.lag_end,
        "load": trial.load,
    }
    if latencies:
        summary.update(p50_ms=pct(0.5), p99_ms=pct(0.99), max_ms=latencies[-1])
    return summary


# --- memory and recovery ------------------------------------------------------------------


def open_order_states(base: list[Record]) -> list[bytes]:
    """Real states of open orders: the base story run through the watcher's rules up to
    its middle, where orders are in every stage of their life (serialized like the table)."""
    import orjson

    from common.clock import EventClock
    from common.envelope import CloudEvent, InvalidEvent
    from common.kafka import InputMessage
    from common.topics import Topics
    from services.orders_watcher.domain.model import OrderState
    from services.orders_watcher.domain.rules import DetectionConfig
    from services.orders_watcher.handlers import OrdersWatcher

    watcher = OrdersWatcher(DetectionConfig(), Topics(""))
    clock = EventClock()
    states: dict[str, OrderState] = {}
    open_: set[str] = set()
    for record in base[: len(base) // 2]:
        msg = InputMessage(record.topic, 0, 0, record.key, record.value)
        try:
            event = CloudEvent.from_bytes(record.value)
            clock.observe(0, event.time, caught_up=True)
            outcome = watcher.handle_event(states.get(record.order_id), msg, event, clock.now())
        except InvalidEvent:
            continue
        if outcome.state is not None:
            states[record.order_id] = outcome.state
        (open_.add if outcome.deadline else open_.discard)(record.order_id)
    return [orjson.dumps(states[o].model_dump(mode="json")) for o in sorted(open_)]


def write_changelogs(bootstrap: str, prefix: str, templates: list[bytes], count: int) -> float:
    """N open orders straight into the watcher's two changelog topics (what N events
    would have written), keys `bench-<i>`; deadlines far in the future (no tick fires)."""
    import orjson
    from kafka import KafkaProducer

    from common.admin import ensure_topics
    from common.topics import TopicSpec

    group = f"{prefix}orders_watcher"
    orders, deadlines = f"{group}-orders-changelog", f"{group}-order_deadlines-changelog"
    ensure_topics(
        bootstrap, [TopicSpec(t, PARTITIONS, compacted=True) for t in (orders, deadlines)]
    )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap.split(","),
        acks=1,
        linger_ms=20,
        batch_size=256 * 1024,
        compression_type=None,
    )
    started = time.monotonic()
    far = time.time() + 10 * 365 * 86400
    for i in range(count):
        template = templates[i % len(templates)]
        old = orjson.loads(template)["order_id"].encode()
        name = b"bench-%d" % i
        key = b'"%s"' % name  # the tables' keys are JSON strings in the changelog
        partition = i % PARTITIONS
        producer.send(orders, key=key, value=template.replace(old, name), partition=partition)
        producer.send(
            deadlines,
            key=key,
            value=orjson.dumps({"at": far + i, "p": partition}),
            partition=partition,
        )
    producer.flush(timeout=600)
    producer.close()
    return time.monotonic() - started


def recovery_run(
    bootstrap: str,
    prefix: str,
    workdir: Path,
    label: str,
    count: int,
    timeout: float,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Start a watcher and time it until ready (tables recovered, deadline index rebuilt)."""
    consumer = Consumer("watcher", bootstrap, prefix, workdir / label)
    if data_dir is not None:
        shutil.rmtree(consumer.data_dir)
        shutil.copytree(data_dir, consumer.data_dir)
    try:
        deadline = time.monotonic() + timeout
        while not consumer.ready():
            consumer.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"watcher did not recover {count} orders within {timeout:.0f}s "
                    f"(load {load_average()}):\n{consumer.log_tail()}"
                )
            time.sleep(0.1)
        seconds = time.monotonic() - consumer.started
        log = consumer.log_path.read_text(errors="replace")
        found = re.findall(r"deadline_index_rebuilt\s+orders=(\d+)", log)
        time.sleep(3)  # let allocations settle after the rebuild
        rss, peak = rss_mib(consumer.proc.pid)
        return {
            "orders": count,
            "indexed": int(found[-1]) if found else None,
            "ready_s": seconds,
            "rss_mib": rss,
            "peak_rss_mib": peak,
            "data_dir_mib": dir_mib(consumer.data_dir),
            "data_dir": str(consumer.data_dir),
            "load": load_average(),
        }
    finally:
        consumer.stop()


def measure_state(
    bootstrap: str, stamp: str, base: list[Record], args: argparse.Namespace
) -> dict[str, Any]:
    workdir = Path(args.workdir)
    templates = open_order_states(base)
    sizes = sorted(len(t) for t in templates)
    print(
        f"  state: {len(templates)} open-order templates, JSON {sizes[len(sizes) // 2]} B "
        f"median, {sizes[-1]} B max",
        flush=True,
    )
    empty = recovery_run(bootstrap, f"bench{stamp}empty.", workdir, "empty", 0, args.timeout)
    print(
        f"  state: empty watcher ready in {empty['ready_s']:.1f}s, "
        f"RSS {empty['rss_mib']:.0f} MiB (load {empty['load']})",
        flush=True,
    )
    out: dict[str, Any] = {
        "templates": len(templates),
        "median_state_bytes": sizes[len(sizes) // 2],
        "empty": empty,
        "runs": [],
    }
    for count in args.orders:
        prefix = f"bench{stamp}state{count}."
        written = write_changelogs(bootstrap, prefix, templates, count)
        cold = recovery_run(bootstrap, prefix, workdir, f"cold{count}", count, args.timeout)
        warm = recovery_run(
            bootstrap,
            prefix,
            workdir,
            f"warm{count}",
            count,
            args.timeout,
            data_dir=Path(cold["data_dir"]),
        )
        run = {"orders": count, "write_s": written, "cold": cold, "warm": warm}
        out["runs"].append(run)
        print(
            f"  state: {count} open orders: cold recovery ready in {cold['ready_s']:.1f}s "
            f"(indexed {cold['indexed']}), RSS {cold['rss_mib']:.0f} MiB (peak "
            f"{cold['peak_rss_mib']:.0f}), RocksDB {cold['data_dir_mib']:.0f} MiB; restart "
            f"with its data dir ready in {warm['ready_s']:.1f}s (load {cold['load']})",
            flush=True,
        )
    return out


# --- report -------------------------------------------------------------------------------


def report(results: dict[str, StageResult], state: dict[str, Any] | None) -> None:
    bare = results.get("bare")
    labels = {
        "bare": "(a) bare faust pass-through agent",
        "watcher": "orders_watcher (faust, RocksDB tables)",
        "naive": "(b) naive faust agent, table write/event",
        "handwritten": "(c) aiokafka + same rules, dict state",
    }
    print(f"\nmachine: {os.cpu_count()} cores; load average now {load_average()}")
    print(f"{'consumer':42s} {'drain ev/s':>10s} {'sustained ev/s':>14s} {'ratio (a)':>9s}")
    for name, result in results.items():
        ratio = result.sustainable / bare.sustainable if bare and bare.sustainable else float("nan")
        print(
            f"{labels[name]:42s} {result.drain_rate:10.0f} {result.sustainable:14.0f} {ratio:9.2f}"
        )
    watcher = results.get("watcher")
    nan = float("nan")
    if watcher and watcher.latency:
        lat = watcher.latency
        print(
            f"\ndetection latency at {lat['rate']:.0f} ev/s for {lat['seconds']:.0f}s: "
            f"{lat['measured']} incidents, p50 {lat.get('p50_ms', nan):.0f} ms, "
            f"p99 {lat.get('p99_ms', nan):.0f} ms, max {lat.get('max_ms', nan):.0f} ms"
        )
    if state and state["runs"]:
        empty = state["empty"]
        for run in state["runs"]:
            cold, n = run["cold"], run["orders"]
            per_order = (cold["rss_mib"] - empty["rss_mib"]) * 2**20 / n
            recover = cold["ready_s"] - empty["ready_s"]
            print(
                f"\n{n} open orders: RSS +{cold['rss_mib'] - empty['rss_mib']:.0f} MiB "
                f"({per_order:.0f} B/order -> {per_order * 1e6 / 2**30:.2f} GiB per million, "
                f"linear), RocksDB {cold['data_dir_mib'] / n * 2**20:.0f} B/order on disk; "
                f"recovery {recover:.1f}s ({n / recover if recover > 0 else float('nan'):.0f} "
                f"orders/s -> {1e6 / (n / recover) if recover > 0 else float('nan'):.0f}s per "
                "million, linear)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--trial-s", type=float, default=20)
    parser.add_argument("--latency-s", type=float, default=30)
    parser.add_argument(
        "--orders",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[100_000],
        help="open orders for the memory/recovery runs (comma-separated; empty: skip)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per phase, seconds")
    parser.add_argument("--stall-s", type=float, default=60)
    parser.add_argument("--kafka-port", type=int, default=29392)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="outreach-bench-")
    from deploy.kafka.local_kafka import LocalKafka, cache_dir

    print(f"machine: {os.cpu_count()} cores, load average {load_average()}", flush=True)
    base = base_story(cache_dir() / "bench")
    corpus = Corpus(base)
    print(f"corpus: {len(base)} events per lap; work dir {args.workdir}", flush=True)
    bootstrap = os.environ.get("BENCH_KAFKA_BOOTSTRAP")
    broker = None
    if not bootstrap:
        broker = LocalKafka(port=args.kafka_port, partitions=PARTITIONS, heap="1g").start()
        bootstrap = broker.bootstrap
        print(f"kafka: {bootstrap} (pid {broker.proc.pid if broker.proc else '?'})", flush=True)
    stamp = str(int(time.time()))
    results: dict[str, StageResult] = {}
    state = None
    try:
        for stage in stages:
            print(f"stage {stage}:", flush=True)
            results[stage] = measure_stage(stage, bootstrap, stamp, corpus, args)
        if args.orders and "watcher" in stages:
            print("watcher state (memory, recovery):", flush=True)
            state = measure_state(bootstrap, stamp, base, args)
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if broker is not None:
            broker.stop()
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "cores": os.cpu_count(),
                        "stages": {k: asdict(v) for k, v in results.items()},
                        "state": state,
                    },
                    indent=2,
                )
            )
    report(results, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
