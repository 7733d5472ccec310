"""Benchmark: orders_watcher on the real local broker, side by side with (a) a bare faust
pass-through agent, (b) a naive table-per-event faust agent and (c) a hand-written
aiokafka consumer with the same rules on in-memory state (bench/stages.py).

    python -m bench.watcher_throughput [--quick] [--stages bare,watcher,naive,handwritten,state]
        [--backlog 25000] [--trial-s 15] [--max-trials 5] [--latency-s 90] [--low-rate 100]
        [--orders 100000] [--story burst|steady]
        [--kafka-port 29392] [--timeout 600] [--stall-s 60] [--json results.json]

Per stage, in one consumer process:
1. drain (closed loop): a backlog of `--backlog` events is published first, then the
   consumer starts; drain rate = events/s between 10 % and 95 % of the backlog; the
   drain ends when the deadlines its event time passed are handled too.
2. open loop: events are published at a fixed rate R for `--trial-s` seconds while the
   consumer's progress is sampled; R is sustainable when the lag at the end is at most
   2 s of input and the lag grew by less than 5 % of R over the second half. R starts at
   0.9 x the drain rate and steps down by 0.85 until a trial is sustainable, then tries
   once halfway back up to the last failure (`--max-trials` in all). Between trials the
   consumer catches up on its input and its overdue deadlines; more than 2 s of those
   left makes a trial not sustainable.
3. (watcher) detection latency at half the sustainable rate, event in -> incident out,
   and at a fixed low rate (`--low-rate`, 100 ev/s: the answer time without queueing).
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
import logging
import os
import shutil
import sys
import tempfile
import time
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import INPUTS, STORIES, Corpus, Record, base_story, corpus_for  # noqa: E402
from bench.harness import (  # noqa: E402
    PARTITIONS,
    BenchError,
    Consumer,
    Load,
    Sampler,
    Trial,
    cpu_probe_ms,
    dir_mib,
    drain_cpu_us,
    drain_rate,
    exit_on_sigterm,
    find_sustainable,
    load_average,
    local_broker,
    open_loop_trial,
    opened_text,
    wait_deadlines,
    wait_progress,
)
from common.logs import configure_logging  # noqa: E402

STAGES = ("bare", "watcher", "naive", "handwritten")
STATE = "state"  # the pseudo-stage: the watcher's memory per open order and recovery time


def stage_consumer(
    stage: str, bootstrap: str, prefix: str, workdir: Path, log_level: str = "WARNING"
) -> Consumer:
    """The watcher itself, or one of the comparison consumers of bench/stages.py."""
    if stage == "watcher":
        command = [sys.executable, "-m", "services.orders_watcher"]
        broker_stamped_incidents(bootstrap, prefix)
    else:
        command = [sys.executable, "-m", "bench.stages", stage]
    return Consumer(
        stage,
        command,
        bootstrap,
        prefix,
        workdir,
        port_env="ORDERS_WATCHER_HTTP_PORT",
        log_level=log_level,
    )


def broker_stamped_incidents(bootstrap: str, prefix: str) -> None:
    """The watcher's incidents topic, made before the watcher makes it, with the broker's
    append time as each record's timestamp: on the event clock the watcher stamps an
    incident with the moment it decided it (for the services downstream), and the
    latency is measured from when it reached the broker."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics(
            [
                NewTopic(
                    f"{prefix}outreach.incidents",
                    PARTITIONS,
                    1,
                    topic_configs={"message.timestamp.type": "LogAppendTime"},
                )
            ]
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


# --- one stage ----------------------------------------------------------------------------


@dataclass
class StageResult:
    stage: str
    drain_rate: float = 0.0
    drain_load: str = ""
    drain_overdue: int = 0  # deadlines overdue once the backlog's input was read
    drain_deadlines_s: float = 0.0  # the seconds until they were handled
    drain_with_deadlines: float = 0.0  # the backlog over the time of input and deadlines
    drain_cache_hits: float | None = None  # share of state reads served from memory
    drain_cpu_us: float = 0.0  # the consumer's CPU time per record while draining
    drain_opened: int | None = None  # incidents opened for the backlog, if counted
    sustainable: float = 0.0
    trials: list[Trial] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    low_latency: dict[str, Any] = field(default_factory=dict)


def measure_stage(
    stage: str, bootstrap: str, stamp: str, corpus: Corpus, args: argparse.Namespace
) -> StageResult:
    prefix = f"bench{stamp}{stage}."
    workdir = Path(args.workdir)
    result = StageResult(stage)
    load = Load(bootstrap, prefix, INPUTS)
    corpus.restart()  # a fresh consumer on fresh topics: no order begun for another stage
    backlog = corpus.take_laps(corpus.laps_for(args.backlog))
    load.backlog(backlog)
    consumer = stage_consumer(stage, bootstrap, prefix, workdir)
    sampler = Sampler(consumer, every=0.1)
    sampler.start()
    try:
        wait_progress(consumer, sampler, len(backlog), args.timeout, args.stall_s, "drain")
        result.drain_rate = drain_rate(sampler.samples, len(backlog))
        result.drain_load = load_average()
        # The deadlines the backlog's event time passed wait behind its input (ticks take
        # their turn with input records): the drain is done when they are handled too.
        result.drain_overdue, result.drain_deadlines_s = wait_deadlines(
            consumer, args.timeout, "drain"
        )
        result.drain_with_deadlines = len(backlog) / (
            len(backlog) / max(result.drain_rate, 1.0) + result.drain_deadlines_s
        )
        result.drain_cache_hits = consumer.state_cache_hits()
        result.drain_cpu_us = drain_cpu_us(sampler.cpu, len(backlog))
        result.drain_opened = consumer.incidents_opened()
        cache = (
            f", state cache hits {result.drain_cache_hits:.1%}"
            if result.drain_cache_hits is not None
            else ""
        )
        deadlines = (
            f"; then {result.drain_overdue} deadlines overdue, handled in "
            f"{result.drain_deadlines_s:.1f}s: {result.drain_with_deadlines:.0f} ev/s with them"
            if result.drain_overdue
            else ""
        )
        print(
            f"  {stage}: drained {len(backlog)} in backlog at {result.drain_rate:.0f} ev/s"
            f" ({result.drain_cpu_us:.0f} µs CPU a record)"
            f"{deadlines}{cache}{opened_text(result.drain_opened, len(backlog))}"
            f" (load {result.drain_load})",
            flush=True,
        )

        def trial_at(rate: float) -> Trial:
            records = corpus.take_laps(corpus.laps_for(rate * args.trial_s))
            trial, _ = open_loop_trial(
                load, consumer, sampler, records, rate, args.stall_s, result.drain_rate
            )
            return trial

        result.sustainable, result.trials = find_sustainable(
            trial_at, result.drain_rate, args.max_trials, stage
        )
        if stage == "watcher" and result.sustainable and args.latency_s > 0:
            result.latency = measure_latency(
                load, consumer, sampler, corpus, bootstrap, prefix, result.sustainable / 2, args
            )
            print_latency(result.latency)
        if stage == "watcher" and 0 < args.low_rate < result.drain_rate and args.latency_s > 0:
            result.low_latency = measure_latency(
                load, consumer, sampler, corpus, bootstrap, prefix, args.low_rate, args
            )
            print_latency(result.low_latency)
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
    the moment the watcher could decide — whichever came later. That moment is the
    incident's own, plus the allowed lateness for the opening of what is judged on settled
    facts (`SETTLED_KINDS`: a late event within it may still show otherwise, so the watcher
    waits it out by design). The same latencies from the incident's moment alone (the wait
    included; in the compressed replay its length in wall time varies with the density of
    events) are reported beside them."""
    from datetime import datetime

    from kafka import KafkaConsumer, TopicPartition

    from services.orders_watcher.config import Settings as WatcherSettings
    from services.orders_watcher.domain.rules import SETTLED_KINDS

    lateness = WatcherSettings().allowed_lateness_s

    topic = f"{prefix}outreach.incidents"
    reader = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    reader.assign(tps)
    reader.seek_to_end(*tps)
    for tp in tps:
        reader.position(tp)
    wall_minus_mono = time.time() - time.monotonic()
    records = corpus.take_laps(corpus.laps_for(rate * args.latency_s))
    trial, times = open_loop_trial(load, consumer, sampler, records, rate, args.stall_s, 2 * rate)
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
    latencies: dict[str, list[float]] = {"all": [], "event": [], "deadline": [], "moment": []}

    def reached(moment: float) -> float:
        """Send time of the first input whose event time reached `moment`."""
        i = bisect_left(running_max, moment)
        return times[i] if i < len(times) else float("-inf")

    for out, event in incidents:
        data = event.get("data") or {}
        moment = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()
        own = [t for t in last_of_order.get(str(data.get("order_id")), []) if t <= out]
        by_order = own[-1] if own else float("-inf")
        # Only openings are counted as waiting: an update or a resolution may be told at
        # once (the newest estimate, a delivery), and measuring those from the moment
        # can only overstate their latency.
        settles = data.get("kind") in SETTLED_KINDS and event.get("type") == "incident.opened"
        by_clock = reached(moment + lateness if settles else moment)
        trigger = max(by_order, by_clock)
        if trigger == float("-inf") or trigger > out:
            continue
        millis = (out - trigger) * 1000
        latencies["all"].append(millis)
        latencies["event" if by_order >= by_clock else "deadline"].append(millis)
        since_moment = max(by_order, reached(moment))
        if since_moment != float("-inf"):
            latencies["moment"].append((out - since_moment) * 1000)

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
    if "moment_count" in lat:
        line += (
            f"; from the incidents' moments (the allowed lateness included): p50"
            f" {lat['moment_p50_ms']:.0f} / p99 {lat['moment_p99_ms']:.0f} ms"
        )
    print(line + f" (load {lat['load']})", flush=True)


# --- memory and recovery ------------------------------------------------------------------


def open_order_states(base: list[Record]) -> list[bytes]:
    """Real states of open orders: the base story run through the watcher's rules up to
    its middle, where orders are in every stage of their life (serialized like the table)."""
    from common.clock import EventClock
    from common.envelope import CloudEvent, InvalidEvent
    from common.kafka import InputMessage
    from common.topics import Topics
    from services.orders_watcher.domain.model import OrderState, encode_state
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
    return [encode_state(states[o]) for o in sorted(open_)]


def write_changelogs(bootstrap: str, prefix: str, templates: list[bytes], count: int) -> float:
    """N open orders straight into the watcher's changelog topic (what N events would
    have written), keys `bench-<i>`; deadlines far in the future (no tick fires)."""
    import orjson
    from aiokafka import AIOKafkaProducer

    from common.admin import ensure_topics
    from common.topics import TopicSpec
    from services.orders_watcher.adapters import order_table

    orders = f"{prefix}orders_watcher-orders-changelog"
    ensure_topics(bootstrap, [TopicSpec(orders, PARTITIONS, compacted=True)])
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
                value = order_table.encode(template.replace(old, name), (far + i, partition))
                await producer.send(orders, key=key, value=value, partition=partition)
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
    consumer = stage_consumer("watcher", bootstrap, prefix, workdir / label, log_level="INFO")
    if data_dir is not None:
        shutil.rmtree(consumer.data_dir)
        shutil.copytree(data_dir, consumer.data_dir)
    try:
        seconds = consumer.wait_ready(timeout, f"recovery of {count} orders")
        indexed = consumer.index_keys("orders")
        rss, peak = consumer.settled_rss()
        return {
            "orders": count,
            "indexed": indexed,
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
    print(
        f"{'consumer':42s} {'drain ev/s':>10s} {'with deadlines':>14s} {'sustained ev/s':>14s}"
        f" {'ratio (a)':>9s}"
    )
    for name, result in results.items():
        ratio = result.sustainable / bare.sustainable if bare and bare.sustainable else float("nan")
        full = f"{result.drain_with_deadlines:14.0f}" if result.drain_overdue else f"{'-':>14s}"
        print(
            f"{labels[name]:42s} {result.drain_rate:10.0f} {full} {result.sustainable:14.0f}"
            f" {ratio:9.2f}"
        )
    watcher = results.get("watcher")
    for measured in (watcher.latency, watcher.low_latency) if watcher else ():
        if measured:
            print()
            print_latency(measured)
    if state and state["runs"]:
        empty = state["empty"]
        for run in state["runs"]:
            cold, n = run["cold"], run["orders"]
            per_order = (cold["rss_mib"] - empty["rss_mib"]) * 2**20 / n
            recover = cold["ready_s"] - empty["ready_s"]
            print(
                f"\n{n} open orders: RSS +{cold['rss_mib'] - empty['rss_mib']:.0f} MiB "
                f"({per_order:.0f} B/order -> {per_order * 1e6 / 2**30:.2f} GiB per million if "
                f"linear{'' if n >= 1_000_000 else ', an upper bound: RocksDB buffers are fixed'})"
                f", RocksDB {cold['data_dir_mib'] / n * 2**20:.0f} B/order on disk; "
                f"recovery {recover:.1f}s ({n / recover if recover > 0 else float('nan'):.0f} "
                f"orders/s -> {1e6 / (n / recover) if recover > 0 else float('nan'):.0f}s per "
                "million, linear)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default=",".join((*STAGES, STATE)))
    parser.add_argument(
        "--story",
        choices=sorted(STORIES),
        default="continuous",
        help="the lap: 1,800 orders placed within 3 hours (burst) or over 3 weeks (steady); "
        "continuous (default): steady laps starting every 3 weeks, overlapping, as a shop in "
        "steady state (burst and steady bring a lap's deadlines due in waves at its seams, an "
        "artefact of compressing event time: docs/performance.md, runs Q and S)",
    )
    parser.add_argument("--backlog", type=int, default=25_000, help="events, rounded to whole laps")
    parser.add_argument("--trial-s", type=float, default=15, help="seconds, rounded to whole laps")
    parser.add_argument(
        "--latency-s",
        type=float,
        default=90,
        help="seconds, rounded to whole laps (a p99 over 30 s spanned 22-205 ms, run R)",
    )
    parser.add_argument(
        "--orders",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[100_000, 1_000_000],  # 1M is the target: ~35 s to write, ~20 s to recover
        help="open orders for the memory/recovery runs (comma-separated; empty: skip)",
    )
    parser.add_argument(
        "--low-rate", type=float, default=100, help="ev/s of the low-load latency run (0: none)"
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
    # the benchmark prints its own figures; the watcher's rules, replayed in this process
    # for the state stage's open orders, would log every incident of the story, and
    # kafka-python warns when decoding a large fetch of incidents after the latency run
    # holds its reader's loop for more than 0.1 s (the latencies come from the records'
    # timestamps, not from when they are read)
    configure_logging("bench", level="WARNING", fmt="console")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    if args.quick:
        args.backlog, args.trial_s, args.latency_s = 12_000, 8.0, 10.0
        args.orders, args.max_trials = [20_000], 3
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - {*STAGES, STATE}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    # SIGTERM unwinds like Ctrl-C, so that the `finally` blocks stop the broker and the
    # consumer processes this run started.
    exit_on_sigterm()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="outreach-bench-")
    from deploy.kafka.local_kafka import cache_dir

    probe = cpu_probe_ms()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_average()}, cpu probe {probe:.0f} ms",
        flush=True,
    )
    base = base_story(cache_dir() / "bench", args.story)
    corpus = corpus_for(args.story, base)
    overlap = f", a lap every {corpus.shift.total_seconds() / 86400:.0f} days" * bool(corpus.period)
    print(
        f"corpus: {args.story} story, {len(base)} events per lap over "
        f"{corpus.span.total_seconds() / 86400:.0f} days of event time{overlap}; "
        f"work dir {args.workdir}",
        flush=True,
    )
    bootstrap, broker = local_broker("BENCH_KAFKA_BOOTSTRAP", args.kafka_port)
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
                        "cpu_probe_ms": probe,
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
