"""The benchmarks' harness on the real broker: a consumer process under test with its
progress read from its /metrics, a background sampler of that progress, bounded waits that
fail with the consumer's log tail, a load generator (aiokafka), and the open-loop trials
and search for a sustainable rate. Used by bench/watcher_throughput.py and
bench/risk_throughput.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Protocol

from aiokafka.errors import KafkaTimeoutError

from tests.conftest import stop_process

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
FIRST_STEP = 0.9  # the first open-loop trial runs at this share of the drain rate
STEP_DOWN = 0.85  # the next trial runs at most at this share of the previous one
MIN_RATE = 10.0
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} ([0-9.e+-]+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
# A record counts once it has its final outcome. Services count some records twice
# (a duplicate or an order of unknown customer also as "processed"): those labels are left out.
_FINAL = ("processed", "dead_lettered")


class BenchError(RuntimeError):
    pass


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_probe_ms(rounds: int = 5) -> float:
    """Milliseconds one core takes for a fixed pure-Python loop (best of `rounds`): how
    fast this machine is today. The same kind of 2-core VM runs at different speeds on
    different days, so figures of runs on different days compare only with this beside
    them."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of every live descendant (a service's render pool,
    PostgreSQL's backends); children that have exited and were waited for are in their
    parent's own cutime/cstime, which this adds too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        todo.extend(children.get(current, ()))
    return total


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that `finally` blocks stop what the run started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def local_broker(env: str, port: int) -> tuple[str, Any]:
    """The broker named by the environment variable `env`, else a local one started on
    `port` (returned, for the caller to stop; None when the environment named one)."""
    from deploy.kafka.local_kafka import LocalKafka

    # The corpus stamps its records with its story's moments (months back, years ahead):
    # the topics the benchmark creates keep every record (common.admin.ensure_topics).
    os.environ.setdefault("OUTREACH_TOPIC_RETENTION_MS", "-1")
    bootstrap = os.environ.get(env)
    if bootstrap:
        return bootstrap, None
    broker = LocalKafka(port=port, partitions=PARTITIONS, heap="1g").start()
    print(f"kafka: {broker.bootstrap} (pid {broker.proc.pid if broker.proc else '?'})", flush=True)
    return broker.bootstrap, broker


# --- the consumer under test -------------------------------------------------------------


class Consumer:
    """One consumer process under test, with its progress read from its /metrics.

    `command` runs with the project's settings in its environment (broker, topic prefix,
    event clock, data dir) and its ops port in `port_env`; `data_dir` reuses the data
    dir another process left (a restart), default a new, empty one under `workdir` (a
    reused `--workdir` must not hand a fresh broker the stores of an earlier run).
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        bootstrap: str,
        prefix: str,
        workdir: Path,
        *,
        port_env: str,
        log_level: str = "WARNING",
        data_dir: Path | None = None,
    ) -> None:
        self.stage = name
        self.port = free_port()
        if data_dir is None:
            data_dir = workdir / f"{name}-data"
            shutil.rmtree(data_dir, ignore_errors=True)
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
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
            LOG_LEVEL=log_level,
            LOG_FORMAT="console",
        )
        env[port_env] = str(self.port)
        self.started = time.monotonic()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )

    def _get(self, path: str) -> str | None:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def metrics(self) -> str | None:
        return self._get("/metrics")

    def series(self, name: str, text: str | None = None) -> list[tuple[dict[str, str], float]]:
        """Every sample of the metric `name` (from `text`, else a fresh scrape)."""
        text = self.metrics() if text is None else text
        return [
            (dict(_LABEL.findall(labels)), float(value))
            for metric, labels, value in _SAMPLE.findall(text or "")
            if metric == name
        ]

    def consumed(self) -> dict[str, int] | None:
        """Records with their final outcome (processed or dead-lettered), by topic."""
        text = self.metrics()
        if text is None:
            return None
        out: dict[str, int] = {}
        for named, value in self.series("outreach_events_consumed_total", text):
            if named.get("outcome") in _FINAL:
                topic = named.get("topic", "")
                out[topic] = out.get(topic, 0) + int(float(value))
        return out

    def outcomes(self) -> dict[str, int]:
        """Every outcome the service counted (processed, duplicate, dead_lettered, ...)."""
        out: dict[str, int] = {}
        for named, value in self.series("outreach_events_consumed_total"):
            outcome = named.get("outcome", "")
            out[outcome] = out.get(outcome, 0) + int(float(value))
        return out

    def progress(self) -> int:
        """Records handled, over every topic it reads (-1: no answer)."""
        counts = self.consumed()
        return -1 if counts is None else sum(counts.values())

    def overdue(self) -> int | None:
        """Deadlines the consumer's clock has passed and it has not handled yet (None: it
        reports none, as the comparison stages, or did not answer)."""
        found = self.series("outreach_deadlines_overdue")
        return int(sum(v for _, v in found)) if found else None

    def incidents_opened(self) -> int | None:
        """Incidents the consumer's rules have opened so far (None: it has no rules, as
        the faust comparison stages, or did not answer). Per input event, the same in
        every whole lap of a story when the rules see the events as the shop sent them:
        more says the consumer's event clock ran ahead of records it had not read."""
        found = self.series("outreach_incidents_total")
        opened = [v for named, v in found if named.get("transition") == "opened"]
        return int(sum(opened)) if opened else None

    def state_cache_hits(self) -> float | None:
        """The share of state reads served from memory so far (None: no such cache)."""
        counts = {named.get("result"): v for named, v in self.series("outreach_state_cache_total")}
        total = sum(counts.values())
        return counts.get("hit", 0.0) / total if total else None

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float, what: str) -> float:
        """Seconds from the start of the process until /readyz answers 200."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.stage}: {what} not ready within {timeout:.0f}s "
                    f"(load {load_average()}):\n{self.log_tail()}"
                )
            time.sleep(0.1)
        return time.monotonic() - self.started

    def settled_rss(self, settle_s: float = 3.0) -> tuple[float, float]:
        """(RSS, peak RSS) in MiB, read `settle_s` after now: a fixed pause on purpose, so
        that the allocations of a recovery that just finished have settled (there is no
        event to wait for: the process is idle and its memory still moving)."""
        time.sleep(settle_s)
        self.check_alive()
        return rss_mib(self.proc.pid)

    def index_keys(self, table: str) -> int | None:
        """How many keys the deadline index over `table` was last rebuilt with (its log)."""
        log = self.log_path.read_text(errors="replace")
        found = re.findall(rf"deadline_index_rebuilt\s+keys=(\d+).*table={table}\b", log)
        return int(found[-1]) if found else None

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
        stop_process(self.proc)


class Sampler(threading.Thread):
    """Samples a consumer's progress and CPU time every `every` seconds in the
    background, and with `rss_every` its resident memory (MiB) with the progress at that
    moment."""

    def __init__(self, consumer: Consumer, every: float = 0.25, rss_every: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.consumer = consumer
        self.every = every
        self.rss_every = rss_every
        self.samples: list[tuple[float, int]] = []
        self.rss: list[tuple[float, int, float]] = []
        self.cpu: list[tuple[float, int]] = []  # (CPU seconds, records handled)
        self._halt = threading.Event()

    def run(self) -> None:
        next_rss = 0.0
        while not self._halt.is_set():
            done = self.consumer.progress()
            now = time.monotonic()
            if done >= 0:
                self.samples.append((now, done))
                with contextlib.suppress(OSError):
                    self.cpu.append((cpu_seconds(self.consumer.proc.pid), done))
                if self.rss_every and now >= next_rss and self.consumer.proc.poll() is None:
                    with contextlib.suppress(OSError):
                        self.rss.append((now, done, rss_mib(self.consumer.proc.pid)[0]))
                    next_rss = now + self.rss_every
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


def wait_deadlines(consumer: Consumer, timeout: float, what: str) -> tuple[int, float]:
    """Wait until the consumer has handled every deadline its clock has passed: input
    read is not work done while ticks still wait behind it (at once for a consumer with
    no deadlines). Returns (overdue when called, seconds it took)."""
    started = time.monotonic()
    first = consumer.overdue()
    left = first
    while left:
        consumer.check_alive()
        if time.monotonic() - started > timeout:
            raise BenchError(
                f"{consumer.stage}: {what}: {left} deadlines still overdue after "
                f"{timeout:.0f}s (load {load_average()}):\n{consumer.log_tail()}"
            )
        time.sleep(0.1)
        left = consumer.overdue()
    return first or 0, time.monotonic() - started


def _drain_window(samples: list[tuple[float, int]], total: int) -> list[tuple[float, int]]:
    lo, hi = 0.10 * total, 0.95 * total
    window = [(t, d) for t, d in samples if lo <= d <= hi]
    return window if len(window) >= 2 else [(t, d) for t, d in samples if d > 0]


def drain_rate(samples: list[tuple[float, int]], total: int) -> float:
    """Records/s between 10 % and 95 % of a backlog of `total` (start-up excluded)."""
    window = _drain_window(samples, total)
    if len(window) < 2:
        return float("nan")
    (t0, d0), (t1, d1) = window[0], window[-1]
    return (d1 - d0) / (t1 - t0) if t1 > t0 else float("nan")


def drain_cpu_us(cpu: list[tuple[float, int]], total: int) -> float:
    """The consumer's CPU time per record (µs) over the same part of the backlog as
    `drain_rate`: what the consumer itself costs, less sensitive than the rate to what
    else runs on the machine (the broker, the load generator, other work)."""
    window = _drain_window(cpu, total)
    if len(window) < 2:
        return float("nan")
    (s0, d0), (s1, d1) = window[0], window[-1]
    return (s1 - s0) / (d1 - d0) * 1e6 if d1 > d0 else float("nan")


# --- load ---------------------------------------------------------------------------------


class Publishable(Protocol):
    @property
    def topic(self) -> str: ...  # without the run's prefix

    @property
    def key(self) -> bytes: ...

    @property
    def value(self) -> bytes: ...


class Load:
    """Publishes records to a run's topics: all at once, or paced at a fixed rate.

    aiokafka on a private event loop: on two cores the generator competes with the
    consumer under test, and aiokafka costs about a quarter of kafka-python per record.
    `units` says how many records the consumer will count for one published record (a
    service that forwards some inputs to itself counts those twice); `sent_units` is the
    progress a consumer must reach to have handled everything sent.
    """

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        topics: Sequence[str],
        units: Callable[[Any], int] | None = None,
    ) -> None:
        from aiokafka import AIOKafkaProducer

        from common.admin import ensure_topics
        from common.topics import TopicSpec

        self.prefix = prefix
        self.units = units or (lambda record: 1)
        ensure_topics(bootstrap, [TopicSpec(prefix + t, PARTITIONS) for t in topics])
        self.loop = asyncio.new_event_loop()

        async def start() -> AIOKafkaProducer:
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=64 * 1024
            )
            await producer.start()
            return producer

        self.producer = self.loop.run_until_complete(start())
        self.sent = 0
        self.sent_units = 0
        self.stamp = 0

    async def _send(self, record: Publishable) -> None:
        # Stamped as the shop would have published it: at its event time, never before
        # a record published earlier (the services' event clock follows the stamps).
        moment = getattr(record, "time", None)
        stamp = None
        if moment is not None:
            self.stamp = stamp = max(self.stamp, int(moment * 1000))
        while True:
            try:
                await self.producer.send(
                    self.prefix + record.topic,
                    key=record.key,
                    value=record.value,
                    timestamp_ms=stamp,
                )
                return
            except KafkaTimeoutError:
                await asyncio.sleep(0.01)  # the accumulator is full: wait for the broker

    def _count(self, records: Sequence[Publishable]) -> None:
        self.sent += len(records)
        self.sent_units += sum(self.units(r) for r in records)

    def backlog(self, records: Sequence[Publishable]) -> None:
        async def run() -> None:
            for record in records:
                await self._send(record)
            await asyncio.wait_for(self.producer.flush(), 120)

        self.loop.run_until_complete(run())
        self._count(records)

    def paced(self, records: Sequence[Publishable], rate: float) -> tuple[list[float], float]:
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
        self._count(records)
        return times, achieved

    def close(self) -> None:
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.producer.stop(), 10))
        finally:
            self.loop.close()


# --- open loop ----------------------------------------------------------------------------


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
    # Deadlines overdue once the trial's input was read, and the seconds until handled.
    overdue_end: int = 0
    deadlines_s: float = 0.0
    # Incidents opened for the trial's input (its deadlines included), if the consumer
    # counts them.
    opened: int | None = None

    def opened_text(self) -> str:
        return opened_text(self.opened, self.events)


def opened_text(opened: int | None, events: int) -> str:
    """The ", N incidents opened per 1,000 events" of a report line ("" when not counted)."""
    if opened is None or not events:
        return ""
    return f", {opened * 1000 / events:.0f} incidents opened per 1,000 events"


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 for fewer than three)."""
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
    records: Sequence[Publishable],
    rate: float,
    stall_s: float,
    drain_rate: float,
) -> tuple[Trial, list[float]]:
    """Publish `records` at `rate`/s while sampling the consumer; then let it catch up.
    Returns the trial and each record's send time (monotonic). Lags and the consumed rate
    are in published records (a record the consumer counts twice is one record)."""
    base = load.sent_units
    opened_before = consumer.incidents_opened()
    units = list(accumulate(load.units(r) for r in records))
    per_record = units[-1] / len(records) if records else 1.0
    start = time.monotonic()
    times, achieved = load.paced(records, rate)
    end = time.monotonic()
    lags: list[tuple[float, float]] = []
    window: list[tuple[float, int]] = []
    for t, done in list(sampler.samples):
        if start <= t <= end:
            sent = bisect_left(times, t)
            produced = base + (units[sent - 1] if sent else 0)
            lags.append((t - start, (produced - done) / per_record))
            window.append((t, done))
    # What the consumer got through while loaded: its capacity when it fell behind.
    consumed = (
        (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]) / per_record
        if len(window) >= 2 and window[-1][0] > window[0][0]
        else 0.0
    )
    lag_end = int(lags[-1][1]) if lags else int((load.sent_units - sampler.latest()) / per_record)
    lag_max = int(max((lag for _, lag in lags), default=lag_end))
    growth = slope([p for p in lags if p[0] >= (end - start) / 2])
    # Judged on the rate actually sent (the generator shares the 2 cores): flat (at the
    # end at most 2 s of input behind, not growing over the second half) and bounded
    # (never more than 5 s of input behind).
    sustainable = (
        lag_end <= max(2 * achieved, 50)
        and growth <= 0.05 * achieved
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
        growth,
        sustainable,
        load_average(),
    )
    # Let it catch up before the next trial: the backlog left is at most one trial's load,
    # read at the drain rate; a stall fails fast anyway.
    backlog = max(0.0, (load.sent_units - sampler.latest()) / per_record)
    wait_progress(
        consumer,
        sampler,
        load.sent_units,
        30 + 3 * backlog / max(drain_rate, 1.0),
        stall_s,
        "catch-up",
    )
    # ...and the deadlines its clock passed meanwhile: time is input too. Sustainable
    # also means at most 2 s of them left once the input is read.
    trial.overdue_end, trial.deadlines_s = wait_deadlines(
        consumer, 30 + 3 * trial.seconds, "catch-up"
    )
    trial.sustainable = trial.sustainable and trial.deadlines_s <= 2.0
    opened_after = consumer.incidents_opened()
    if opened_after is not None:
        trial.opened = opened_after - (opened_before or 0)
    return trial, times


def find_sustainable(
    run_trial: Callable[[float], Trial], drain_rate: float, max_trials: int, label: str
) -> tuple[float, list[Trial]]:
    """Step down geometrically from just under the drain rate until a trial is sustainable;
    with a trial to spare, try once halfway back up to the last failure. Returns the
    highest sustainable rate found (0: none) and every trial."""
    trials: list[Trial] = []
    sustainable = 0.0
    rate = max(MIN_RATE, FIRST_STEP * drain_rate)
    failed: float | None = None  # the lowest rate found not sustainable
    refined = False
    for _ in range(max_trials):
        trial = run_trial(rate)
        trials.append(trial)
        verdict = "sustainable" if trial.sustainable else "NOT sustainable"
        deadlines = (
            f", then {trial.overdue_end} deadlines overdue, handled in {trial.deadlines_s:.1f}s"
            if trial.overdue_end
            else ""
        )
        print(
            f"  {label}: open loop {rate:.0f}/s, {trial.events} events in "
            f"{trial.seconds:.0f}s (sent {trial.achieved:.0f}/s, consumed "
            f"{trial.consumed:.0f}/s): lag end {trial.lag_end}, max {trial.lag_max}, slope "
            f"{trial.lag_slope:+.1f}/s{deadlines}{trial.opened_text()} -> {verdict} "
            f"(load {trial.load})",
            flush=True,
        )
        if trial.sustainable:
            sustainable = max(sustainable, trial.achieved)
            if failed is None or refined:
                break
            refined = True
            rate = (rate + failed) / 2
        elif sustainable:
            break  # the refinement failed: keep the sustainable rate found
        else:
            failed = rate
            rate = max(MIN_RATE, STEP_DOWN * rate)
    if not sustainable:
        print(f"  {label}: no sustainable rate in {max_trials} trials", flush=True)
    return sustainable, trials
