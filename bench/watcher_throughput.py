"""Benchmark: orders_watcher on the real local broker, side by side with (a) a bare faust
pass-through agent, (b) a naive table-per-event faust agent and (c) a hand-written
aiokafka consumer with the same rules on in-memory state (bench/stages.py).

    python -m bench.watcher_throughput [--quick] [--stages bare,watcher,naive,handwritten,state]
        [--backlog 25000] [--trial-s 15] [--max-trials 5] [--latency-s 30] [--orders 100000]
        [--kafka-port 29392] [--timeout 600] [--stall-s 60] [--json results.json]

Per stage, in one consumer process:
1. drain (closed loop): a backlog of `--backlog` events is published first, then the
   consumer starts; drain rate = events/s between 10 % and 95 % of the backlog.
2. open loop: events are published at a fixed rate R for `--trial-s` seconds while the
   consumer's progress is sampled; R is sustainable when the lag at the end is at most
   2 s of input and the lag grew by less than 5 % of R over the second half. R starts at
   0.9 x the drain rate and steps down by 0.85 until a trial is sustainable, then tries
   once halfway back up to the last failure (`--max-trials` in all).
3. (watcher) detection latency at half the sustainable rate, event in -> incident out.
Then (`state`) the watcher's memory per open order and table recovery time: N open
orders, written straight to the watcher's changelogs, are recovered by a worker with an
empty data dir; a second worker restarts on the data dir the first one left.

Everything is bounded: every load has a fixed count and a deadline, a consumer whose
progress stalls for `--stall-s` seconds or that exits fails the run with its log tail.
"""

from __future__ import annotations

import argparse
import asyncio
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

from aiokafka.errors import KafkaTimeoutError  # noqa: E402

from bench.corpus import INPUTS, Corpus, Record, base_story  # noqa: E402

PARTITIONS = 4
STAGES = ("bare", "watcher", "naive", "handwritten")
STATE = "state"  # the pseudo-stage: the watcher's memory per open order and recovery time
FIRST_STEP = 0.9  # the first open-loop trial runs at this share of the drain rate
STEP_DOWN = 0.85  # the next trial runs at most at this share of the previous one
MIN_RATE = 10.0
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

    def __init__(
        self, stage: str, bootstrap: str, prefix: str, workdir: Path, log_level: str = "WARNING"
    ) -> None:
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
            LOG_LEVEL=log_level,
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
    """Publishes corpus records to a run's topics: all at once, or paced at a fixed rate.

    aiokafka on a private event loop: on two cores the generator competes with the
    consumer under test, and aiokafka costs about a quarter of kafka-python per record.
    """

    def __init__(self, bootstrap: str, prefix: str) -> None:
        from aiokafka import AIOKafkaProducer

        from common.admin import ensure_topics
        from common.topics import TopicSpec

        self.prefix = prefix
        ensure_topics(bootstrap, [TopicSpec(prefix + t, PARTITIONS) for t in INPUTS])
        self.loop = asyncio.new_event_loop()

        async def start() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=64 * 1024
            )
            await producer.start()
            return producer

        self.producer = self.loop.run_until_complete(start())
        self.sent = 0

    async def _send(self, record: Record) -> None:
        while True:
            try:
                await self.producer.send(
                    self.prefix + record.topic, key=record.key, value=record.value
                )
                return
            except KafkaTimeoutError:
                await asyncio.sleep(0.01)  # the accumulator is full: wait for the broker

    def backlog(self, records: list[Record]) -> None:
        async def run() -> None:
            for record in records:
                await self._send(record)
            await asyncio.wait_for(self.producer.flush(), 120)

        self.loop.run_until_complete(run())
        self.sent += len(records)

    def paced(self, records: list[Record], rate: float) -> tuple[list[float], float]:
        """Publish at `rate` records/s (open loop: the consumer does not slow it down).
        Returns each record's send time (monotonic) and the achieved rate."""

        async def run() -> tuple[list[float], float]:
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
                    await self._send(records[sent])
                    times.append(now)
                    sent += 1
                await asyncio.sleep(0.002)
            achieved = sent / (time.monotonic() - start)
            await asyncio.wait_for(self.producer.flush(), 60)
            return times, achieved

        times, achieved = self.loop.run_until_complete(run())
        self.sent += len(records)
        return times, achieved

    def close(self) -> None:
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.producer.stop(), 10))
        finally:
            self.loop.close()


# --- one stage ----------------------------------------------------------------------------


@dataclass
class Trial:
    rate: float
    events: int
    seconds: float
    achieved: float
    consumed: float
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
    drain_rate: float,
) -> tuple[Trial, list[Record], list[float]]:
    records = corpus.take_laps(corpus.laps_for(rate * seconds))
    base = load.sent
    start = time.monotonic()
    times, achieved = load.paced(records, rate)
    end = time.monotonic()
    lags: list[tuple[float, float]] = []
    window: list[tuple[float, int]] = []
    for t, done in list(sampler.samples):
        if start <= t <= end:
            produced = base + bisect_left(times, t)
            lags.append((t - start, produced - done))
            window.append((t, done))
    # What the consumer got through while loaded: its capacity when it fell behind.
    consumed = (
        (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        if len(window) >= 2 and window[-1][0] > window[0][0]
        else 0.0
    )
    lag_end = int(lags[-1][1]) if lags else load.sent - sampler.latest()
    lag_max = int(max((lag for _, lag in lags), default=lag_end))
    slope = _slope([p for p in lags if p[0] >= (end - start) / 2])
    # Judged on the rate actually sent (the generator shares the 2 cores): flat (at the
    # end at most 2 s of input behind, not growing over the second half) and bounded
    # (never more than 5 s of input behind).
    sustainable = (
        lag_end <= max(2 * achieved, 50)
        and slope <= 0.05 * achieved
        and lag_max <= max(5 * achieved, 100)
    )
    trial = Trial(
        rate,
        len(records),
        end - start,
        achieved,
        consumed,
        lag_end,
        lag_max,
        slope,
        sustainable,
        load_average(),
    )
    # Let it catch up before the next trial: the backlog left is at most one trial's load,
    # read at the drain rate; a stall fails fast anyway.
    backlog = max(0, load.sent - sampler.latest())
    wait_progress(
        consumer, sampler, load.sent, 30 + 3 * backlog / max(drain_rate, 1.0), stall_s, "catch-up"
    )
    return trial, records, times


def measure_stage(
    stage: str, bootstrap: str, stamp: str, corpus: Corpus, args: argparse.Namespace
) -> StageResult:
    prefix = f"bench{stamp}{stage}."
    workdir = Path(args.workdir)
    result = StageResult(stage)
    load = Load(bootstrap, prefix)
    backlog = corpus.take_laps(corpus.laps_for(args.backlog))
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
        # Step down geometrically from just under the drain rate until a trial is
        # sustainable; with a trial to spare, try once halfway back up to the last failure.
        rate = max(MIN_RATE, FIRST_STEP * result.drain_rate)
        failed: float | None = None  # the lowest rate found not sustainable
        refined = False
        for _ in range(args.max_trials):
            trial, _, _ = open_loop_trial(
                load, consumer, sampler, corpus, rate, args.trial_s, args.stall_s, result.drain_rate
            )
            result.trials.append(trial)
            verdict = "sustainable" if trial.sustainable else "NOT sustainable"
            print(
                f"  {stage}: open loop {rate:.0f}/s, {trial.events} events in "
                f"{trial.seconds:.0f}s (sent {trial.achieved:.0f}/s, consumed "
                f"{trial.consumed:.0f}/s): lag end {trial.lag_end}, max {trial.lag_max}, slope "
                f"{trial.lag_slope:+.1f}/s -> {verdict} (load {trial.load})",
                flush=True,
            )
            if trial.sustainable:
                result.sustainable = max(result.sustainable, trial.achieved)
                if failed is None or refined:
                    break
                refined = True
                rate = (rate + failed) / 2
            elif result.sustainable:
                break  # the refinement failed: keep the sustainable rate found
            else:
                failed = rate
                rate = max(MIN_RATE, STEP_DOWN * rate)
        if not result.sustainable:
            print(f"  {stage}: no sustainable rate in {args.max_trials} trials", flush=True)
        if stage == "watcher" and result.sustainable and args.latency_s > 0:
            result.latency = measure_latency(
                load, consumer, sampler, corpus, bootstrap, prefix, result.sustainable / 2, args
            )
            print_latency(result.latency)
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
    from datetime import datetime

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
        load, consumer, sampler, corpus, rate, args.latency_s, args.stall_s, 2 * rate
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
    # Split by what caused the incident: an input of its own order ("event"), or the
    # clock passing a deadline ("deadline", which goes through the watcher's tick topic).
    latencies: dict[str, list[float]] = {"all": [], "event": [], "deadline": []}
    for out, event in incidents:
        data = event.get("data") or {}
        moment = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()
        own = [t for t in last_of_order.get(str(data.get("order_id")), []) if t <= out]
        by_order = own[-1] if own else float("-inf")
        i = bisect_left(running_max, moment)
        by_clock = times[i] if i < len(times) else float("-inf")
        trigger = max(by_order, by_clock)
        if trigger == float("-inf") or trigger > out:
            continue
        millis = (out - trigger) * 1000
        latencies["all"].append(millis)
        latencies["event" if by_order >= by_clock else "deadline"].append(millis)

    summary: dict[str, Any] = {
        "rate": rate,
        "seconds": trial.seconds,
        "events": trial.events,
        "incidents": len(incidents),
        "measured": len(latencies["all"]),
        "lag_end": trial.lag_end,
        "load": trial.load,
    }
    for name, values in latencies.items():
        values.sort()
        if not values:
            continue
        key = "" if name == "all" else f"{name}_"
        summary[f"{key}count"] = len(values)
        summary[f"{key}p50_ms"] = _percentile(values, 0.5)
        summary[f"{key}p99_ms"] = _percentile(values, 0.99)
        summary[f"{key}max_ms"] = values[-1]
    return summary


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_latency(lat: dict[str, Any]) -> None:
    nan = float("nan")
    line = (
        f"  watcher: detection latency at {lat['rate']:.0f} ev/s for {lat['seconds']:.0f}s: "
        f"{lat['measured']}/{lat['incidents']} incidents attributed, "
        f"p50 {lat.get('p50_ms', nan):.0f} ms, p99 {lat.get('p99_ms', nan):.0f} ms, "
        f"max {lat.get('max_ms', nan):.0f} ms"
    )
    for kind in ("event", "deadline"):
        if f"{kind}_count" in lat:
            line += (
                f"; {kind}-triggered {lat[f'{kind}_count']}: p50 {lat[f'{kind}_p50_ms']:.0f}"
                f" / p99 {lat[f'{kind}_p99_ms']:.0f} ms"
            )
    print(line + f" (load {lat['load']})", flush=True)


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
    from aiokafka import AIOKafkaProducer

    from common.admin import ensure_topics
    from common.topics import TopicSpec

    group = f"{prefix}orders_watcher"
    orders, deadlines = f"{group}-orders-changelog", f"{group}-order_deadlines-changelog"
    ensure_topics(
        bootstrap, [TopicSpec(t, PARTITIONS, compacted=True) for t in (orders, deadlines)]
    )
    far = time.time() + 10 * 365 * 86400
    ids = [orjson.loads(t)["order_id"].encode() for t in templates]

    async def write() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=256 * 1024
        )
        await producer.start()
        try:
            for i in range(count):
                template, old = templates[i % len(templates)], ids[i % len(templates)]
                name = b"bench-%d" % i
                key = b'"%s"' % name  # the tables' keys are JSON strings in the changelog
                partition = i % PARTITIONS
                value = orjson.dumps({"at": far + i, "p": partition})
                await producer.send(
                    orders, key=key, value=template.replace(old, name), partition=partition
                )
                await producer.send(deadlines, key=key, value=value, partition=partition)
            await asyncio.wait_for(producer.flush(), 600)
        finally:
            await producer.stop()

    started = time.monotonic()
    asyncio.run(write())
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
    # INFO, so that the log says how many orders the deadline index was rebuilt with.
    consumer = Consumer("watcher", bootstrap, prefix, workdir / label, log_level="INFO")
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
        found = re.findall(r"deadline_index_rebuilt.*?orders=(\d+)", log)
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
            f"  state: {count} open orders written to the changelogs in {written:.1f}s; "
            f"cold recovery ready in {cold['ready_s']:.1f}s "
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
    if watcher and watcher.latency:
        print()
        print_latency(watcher.latency)
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


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join((*STAGES, STATE)))
    parser.add_argument("--backlog", type=int, default=25_000, help="events, rounded to whole laps")
    parser.add_argument("--trial-s", type=float, default=15, help="seconds, rounded to whole laps")
    parser.add_argument(
        "--latency-s", type=float, default=30, help="seconds, rounded to whole laps"
    )
    parser.add_argument(
        "--orders",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[100_000],  # 1M is the target; ~10 min of recovery on 2 cores, so opt-in
        help="open orders for the memory/recovery runs (comma-separated; empty: skip)",
    )
    parser.add_argument("--max-trials", type=int, default=5, help="open-loop trials per stage")
    parser.add_argument("--timeout", type=float, default=600, help="per phase, seconds")
    parser.add_argument("--stall-s", type=float, default=60)
    parser.add_argument("--kafka-port", type=int, default=29392)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few-minute smoke run: small backlog, short trials, 20k orders",
    )
    args = parser.parse_args()
    if args.quick:
        args.backlog, args.trial_s, args.latency_s = 12_000, 8.0, 10.0
        args.orders, args.max_trials = [20_000], 3
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - {*STAGES, STATE}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    # SIGTERM unwinds like Ctrl-C, so that the `finally` blocks stop the broker and the
    # consumer processes this run started.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
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
        for stage in (s for s in stages if s != STATE):
            print(f"stage {stage}:", flush=True)
            results[stage] = measure_stage(stage, bootstrap, stamp, corpus, args)
        if args.orders and STATE in stages:
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
