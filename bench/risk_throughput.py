"""Benchmark: risk_detector on the real local broker with a profile table of 100,000
customers: how fast it recovers that table, the memory it takes, and how many input
events a second it handles.

    python -m bench.risk_throughput [--quick] [--customers 100000] [--backlog 30000]
        [--trial-s 15] [--max-trials 4] [--tables profiles,rhythm_deadlines,...]
        [--kafka-port 0] [--timeout 600] [--stall-s 60] [--workdir DIR] [--json results.json]

The customers are copies of a simulated shop of 1,000 (bench/risk_corpus.py): their
history folded into profiles by risk_detector's own domain, their future as the load.

1. state: the four tables of N customers (profiles, rhythm deadlines, order -> customer,
   the spend estimates) are written straight into the service's changelog topics, in the
   service's own format. An empty service (own prefix, no changelog) gives the baseline;
   then `python -m services.risk_detector` starts on an empty data dir and is timed until
   /readyz answers (every table recovered, the rhythm index rebuilt: its size is checked
   in the log); RSS from /proc 3 s later. Sampled customers' /explain must equal what the
   domain says about the profile written for them (the format check).
2. drain (closed loop): a backlog of `--backlog` input events (orders, returns, incidents,
   feedback, customers, over all N customers) is published while the service is stopped,
   then it restarts on the data dir it left (timed until ready); drain rate = input events
   per second while it goes from 10 % to 95 % of the work: every input, plus the order
   facts `rekey` forwards to `assess`, which the service handles a second time.
3. open loop: inputs at a fixed rate R for `--trial-s` seconds, R stepped down from 0.9 x
   the drain rate until the lag stays flat (bench/harness.py), `--max-trials` in all.
Then RSS again after all that load.

Every load has a fixed count and a deadline; a service that exits, or whose progress
stalls for `--stall-s` seconds, fails the run with the tail of its log. The broker (a
throwaway single-node KRaft broker on 127.0.0.1, or $KAFKA_BOOTSTRAP_SERVERS) and every
process started here are stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    PARTITIONS,
    BenchError,
    Consumer,
    Load,
    Sampler,
    Trial,
    cpu_probe_ms,
    dir_mib,
    drain_rate,
    exit_on_sigterm,
    find_sustainable,
    load_average,
    local_broker,
    open_loop_trial,
    rss_mib,
    wait_progress,
)
from bench.risk_corpus import (  # noqa: E402
    BASE_CUSTOMERS,
    INPUTS,
    Fact,
    LoadStream,
    Story,
    copies_of,
    rename,
    renamed,
    story,
)

SERVICE = "risk_detector"
TABLES = ("profiles", "rhythm_deadlines", "order_customers", "spend_quantiles")
EXPLAIN_SAMPLES = 12
DOMAIN_EVENTS = 10_000  # inputs timed in-process (no Kafka), from the start of the backlog


def service(
    name: str, bootstrap: str, prefix: str, workdir: Path, data_dir: Path | None = None
) -> Consumer:
    # INFO, so that the log says how many keys the rhythm index was rebuilt with; the
    # service logs nothing per event at INFO.
    return Consumer(
        name,
        [sys.executable, "-m", "services.risk_detector"],
        bootstrap,
        prefix,
        workdir,
        port_env="RISK_DETECTOR_HTTP_PORT",
        log_level="INFO",
        data_dir=data_dir,
    )


# --- the tables, straight into the changelogs ----------------------------------------------


def _json(value: Any) -> bytes:
    from faust.serializers import codecs

    return bytes(codecs.dumps("json", value))


def _partition(key: str) -> int:
    from services.risk_detector.runtime import customer_partition

    return customer_partition(key.encode(), PARTITIONS)


def write_changelogs(
    bootstrap: str, prefix: str, base: Story, copies: int, tables: tuple[str, ...] = TABLES
) -> dict[str, Any]:
    """N customers' tables as the service stores them: keys and values in the tables' JSON,
    each record on the partition the service's own write would have used (the partition
    of the input it was handling: murmur2 of the customer id, of the order id for
    `order_customers`, the partition itself for `spend_quantiles`)."""
    from aiokafka import AIOKafkaProducer

    from common.admin import ensure_topics
    from common.topics import TopicSpec
    from services.risk_detector.domain.quantile import P2Quantile

    group = f"{prefix}{SERVICE}"
    topic = {t: f"{group}-{t}-changelog" for t in TABLES}
    ensure_topics(bootstrap, [TopicSpec(t, PARTITIONS, compacted=True) for t in topic.values()], 60)
    partitions = {
        (t.customer_id, k): _partition(renamed(t.customer_id, k))
        for k in range(copies)
        for t in base.profiles
    }
    # The spend estimates: every order of the history, in order, fed to the estimate of
    # its customer's partition, copy after copy (P2Quantile as the service keeps it).
    estimates = {p: P2Quantile(0.9) for p in range(PARTITIONS)}
    for customer_id, spend in base.spend_samples:
        for k in range(copies):
            estimates[partitions[customer_id, k]].add(spend)
    counts = dict.fromkeys(TABLES, 0)
    size = 0

    async def write() -> None:
        nonlocal size
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=256 * 1024
        )
        await producer.start()

        async def send(table: str, key: bytes, value: bytes, partition: int) -> None:
            nonlocal size
            if table not in tables:
                return
            await producer.send(topic[table], key=key, value=value, partition=partition)
            counts[table] += 1
            size += len(key) + len(value)

        try:
            for k in range(copies):
                for t in base.profiles:
                    name = renamed(t.customer_id, k)
                    key, p = _json(name), partitions[t.customer_id, k]
                    await send("profiles", key, rename(t.value, k), p)
                    if t.rhythm_at is not None:
                        await send("rhythm_deadlines", key, _json({"at": t.rhythm_at, "p": p}), p)
                for order_id, customer_id in base.orders:
                    order = renamed(order_id, k)
                    p = _partition(order)
                    # As the service stores it: the customer, the order's latest fact
                    # (here: the end of the history) and the partition.
                    entry = {"c": renamed(customer_id, k), "at": base.split.timestamp(), "p": p}
                    await send("order_customers", _json(order), _json(entry), p)
            for p, estimate in estimates.items():
                await send("spend_quantiles", _json(str(p)), _json(estimate.to_dict()), p)
            await asyncio.wait_for(producer.flush(), 600)
        finally:
            await producer.stop()

    started = time.monotonic()
    asyncio.run(write())
    return {
        "records": counts,
        "mib": size / 2**20,
        "seconds": time.monotonic() - started,
        "rhythm_keys": counts["rhythm_deadlines"],
    }


def check_explain(consumer: Consumer, base: Story, copies: int) -> int:
    """The recovered profiles read back through the service's /explain equal what the
    domain says about the profiles written (so the format is the service's own)."""
    import orjson

    from common.topics import Topics
    from services.risk_detector.config import Settings
    from services.risk_detector.domain.profile import Profile
    from services.risk_detector.handlers import RiskDetector

    detector = RiskDetector(Settings().policy(), Topics(""))
    rnd = random.Random(7)
    picks = [(rnd.randrange(copies), rnd.choice(base.profiles)) for _ in range(EXPLAIN_SAMPLES)]
    for copy, template in picks:
        name = renamed(template.customer_id, copy)
        url = f"http://127.0.0.1:{consumer.port}/customers/{name}/explain"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                served = json.loads(response.read())
        except OSError as exc:
            raise BenchError(f"explain of {name}: {exc}\n{consumer.log_tail()}") from exc
        profile = Profile.model_validate(orjson.loads(rename(template.value, copy)))
        assert profile.last_event_at is not None
        expected = json.loads(json.dumps(detector.explain(profile, profile.last_event_at)))
        if served != expected:
            raise BenchError(
                f"explain of {name} differs from the profile written for it:\n"
                f"served   {json.dumps(served)[:600]}\nexpected {json.dumps(expected)[:600]}"
            )
    return len(picks)


# --- where an event's time goes, without Kafka -------------------------------------------


def domain_cost(base: Story, copies: int, facts: list[Fact], warmup: int = 200) -> dict[str, Any]:
    """What the service does per input with its profile, in this process, one event at a
    time and without Kafka or RocksDB: decode the event (twice for a forwarded order fact,
    as `rekey` and `assess` each do), read the profile as the table gives it (JSON ->
    Profile), run the rules (`RiskDetector.handle`), write it back (Profile -> JSON).
    Microseconds per input event, by step; the sum bounds what one core can do. The first
    `warmup` events are not timed (lazy imports, first allocations)."""
    import orjson

    from common.envelope import CloudEvent, InvalidEvent
    from common.topics import Topics
    from services.risk_detector.config import Settings
    from services.risk_detector.domain.profile import Profile
    from services.risk_detector.handlers import RiskDetector

    detector = RiskDetector(Settings().policy(), Topics(""))
    templates = {t.customer_id: t.value for t in base.profiles}
    owners = dict(base.orders)
    stored: dict[str, bytes] = {}
    quantiles: dict[int, Any] = {}
    spent = dict.fromkeys(("decode", "load", "rules", "store"), 0.0)
    clock = time.perf_counter

    def profile_bytes(customer_id: str) -> bytes | None:
        if customer_id in stored:
            return stored[customer_id]
        name, _, copy = customer_id.rpartition(".")
        template = templates.get(name)
        return rename(template, int(copy)) if template is not None else None

    for n, fact in enumerate(facts):
        if n == warmup:
            spent = dict.fromkeys(spent, 0.0)
        t0 = clock()
        event = CloudEvent.from_bytes(fact.value)
        if fact.units == 2:
            event = CloudEvent.from_bytes(fact.value)
        t1 = clock()
        spent["decode"] += t1 - t0
        data = event.data if isinstance(event.data, dict) else {}
        customer_id = data.get("customer_id")
        if not customer_id and "order_id" in data:
            name, _, copy = str(data["order_id"]).rpartition(".")
            customer_id = renamed(owners[name], int(copy)) if name in owners else None
        if fact.topic in ("commerce.orders", "commerce.returns") and fact.units == 1:
            continue  # `rekey` reads it and forwards nothing
        customer_id = customer_id or fact.key.decode()
        quantile = quantiles.setdefault(_partition(customer_id), detector.new_quantile())
        raw = profile_bytes(customer_id)  # the bench's copy of a template: not timed
        t1 = clock()
        profile = Profile.model_validate(orjson.loads(raw)) if raw else None
        t2 = clock()
        try:
            outcome = detector.handle(profile, customer_id, event, quantile)
        except InvalidEvent:
            continue
        t3 = clock()
        if outcome.state is not None and not outcome.duplicate:
            stored[customer_id] = _json(outcome.state.model_dump(mode="json"))
        t4 = clock()
        spent["load"] += t2 - t1
        spent["rules"] += t3 - t2
        spent["store"] += t4 - t3
    timed = len(facts) - warmup
    per_event = {k: v / timed * 1e6 for k, v in spent.items()}
    total = sum(per_event.values())
    return {"events": timed, "us_per_event": per_event, "rate": 1e6 / total if total else 0}


# --- the run ------------------------------------------------------------------------------


def requests_emitted(consumer: Consumer) -> int:
    text = consumer.metrics() or ""
    return int(
        sum(float(v) for v in re.findall(r"^outreach_requests_total\{[^}]*\} (\S+)$", text, re.M))
    )


def measure(
    bootstrap: str, stamp: str, base: Story, copies: int, args: argparse.Namespace
) -> dict[str, Any]:
    workdir = Path(args.workdir)
    out: dict[str, Any] = {
        "customers": copies * BASE_CUSTOMERS,
        "copies": copies,
        "profile_json_bytes_median": sorted(len(t.value) for t in base.profiles)[
            len(base.profiles) // 2
        ],
    }

    # The baseline: the same service with nothing to recover.
    empty = service("empty", bootstrap, f"bench{stamp}riskempty.", workdir)
    try:
        ready = empty.wait_ready(args.timeout, "empty service")
        rss, peak = empty.settled_rss()
        out["empty"] = {
            "ready_s": ready,
            "rss_mib": rss,
            "peak_rss_mib": peak,
            "load": load_average(),
        }
    finally:
        empty.stop()
    print(
        f"  empty service: ready in {ready:.1f}s, RSS {rss:.0f} MiB (load {load_average()})",
        flush=True,
    )

    prefix = f"bench{stamp}risk."
    written = write_changelogs(bootstrap, prefix, base, copies, args.tables)
    out["changelogs"] = written
    records = written["records"]
    print(
        f"  changelogs: {records['profiles']} profiles, {records['rhythm_deadlines']} rhythm "
        f"deadlines, {records['order_customers']} order -> customer, "
        f"{records['spend_quantiles']} spend estimates ({sum(records.values())} records, "
        f"{written['mib']:.0f} MiB) written in {written['seconds']:.1f}s",
        flush=True,
    )

    cold = service("cold", bootstrap, prefix, workdir)
    try:
        ready = cold.wait_ready(args.timeout, f"recovery of {copies * BASE_CUSTOMERS} customers")
        recovered_load = load_average()
        rss, peak = cold.settled_rss()
        keys = cold.index_keys("rhythm_deadlines")
        if keys != written["rhythm_keys"]:
            raise BenchError(
                f"the rhythm index was rebuilt with {keys} keys, {written['rhythm_keys']} "
                f"were written:\n{cold.log_tail()}"
            )
        checked = check_explain(cold, base, copies) if "profiles" in args.tables else 0
        out["cold"] = {
            "ready_s": ready,
            "rss_mib": rss,
            "peak_rss_mib": peak,
            "rhythm_indexed": keys,
            "explain_checked": checked,
            "load": recovered_load,
        }
    finally:
        cold.stop()
    out["cold"]["data_dir_mib"] = dir_mib(cold.data_dir)
    print(
        f"  cold recovery: ready in {ready:.1f}s (rhythm index {keys} keys, {checked} "
        f"profiles checked through /explain), RSS {rss:.0f} MiB (peak {peak:.0f}), RocksDB "
        f"{out['cold']['data_dir_mib']:.0f} MiB (load {recovered_load})",
        flush=True,
    )

    if args.tables != TABLES:
        return out  # a recovery of some tables only: the load needs all four

    stream = LoadStream(base.load, copies)
    load = Load(bootstrap, prefix, INPUTS, units=lambda fact: fact.units)
    backlog: list[Fact] = stream.take(args.backlog)
    load.backlog(backlog)
    mix: dict[str, int] = {}
    for fact in backlog:
        mix[fact.type] = mix.get(fact.type, 0) + 1
    per_event = load.sent_units / load.sent
    cost = domain_cost(base, copies, backlog[:DOMAIN_EVENTS])
    out["domain"] = cost
    steps = ", ".join(f"{k} {v:.0f}" for k, v in cost["us_per_event"].items())
    print(
        f"  in-process, no Kafka: {cost['events']} events, us per event: {steps} -> "
        f"{cost['rate']:.0f} ev/s on one core (load {load_average()})",
        flush=True,
    )
    warm = service("warm", bootstrap, prefix, workdir, data_dir=cold.data_dir)
    sampler = Sampler(warm, every=0.2, rss_every=2.0)
    try:
        ready = warm.wait_ready(args.timeout, "restart on its own data dir")
        rss_ready, _ = rss_mib(warm.proc.pid)
        out["warm"] = {"ready_s": ready, "rss_at_ready_mib": rss_ready, "load": load_average()}
        print(
            f"  restart on its own data dir: ready in {ready:.1f}s, RSS {rss_ready:.0f} MiB "
            f"at ready (load {load_average()})",
            flush=True,
        )
        sampler.start()
        started = time.monotonic()
        wait_progress(warm, sampler, load.sent_units, args.timeout, args.stall_s, "drain")
        rate = drain_rate(sampler.samples, load.sent_units) / per_event
        rss_drained, peak_drained = rss_mib(warm.proc.pid)
        consumed = warm.consumed() or {}
        out["drain"] = {
            "events": len(backlog),
            "work_units": load.sent_units,
            "mix": mix,
            "rate": rate,
            "whole_s": time.monotonic() - started,
            "requests": requests_emitted(warm),
            "consumed": consumed,
            "outcomes": warm.outcomes(),
            "rss_mib": rss_drained,
            "peak_rss_mib": peak_drained,
            "load": load_average(),
        }
        print(
            f"  drain: {len(backlog)} events ({load.sent_units} with the re-keyed order facts) "
            f"at {rate:.0f} ev/s (10-95 %), all in {out['drain']['whole_s']:.0f}s; "
            f"{out['drain']['requests']} outreach requests; RSS {rss_drained:.0f} MiB "
            f"(load {load_average()})",
            flush=True,
        )

        def trial_at(at: float) -> Trial:
            records = stream.take(max(1, int(at * args.trial_s)))
            trial, _ = open_loop_trial(load, warm, sampler, records, at, args.stall_s, rate)
            return trial

        sustainable, trials = 0.0, list[Trial]()
        if args.max_trials > 0:
            sustainable, trials = find_sustainable(trial_at, rate, args.max_trials, SERVICE)
        out["open_loop"] = {"sustainable": sustainable, "trials": [asdict(t) for t in trials]}
        rss, peak = warm.settled_rss()
        out["after_load"] = {
            "rss_mib": rss,
            "peak_rss_mib": peak,
            "requests": requests_emitted(warm),
            "outcomes": warm.outcomes(),
            "events": load.sent,
            "story_position": stream.position / copies,
            "story_steady": base.steady,
            "rss_series": [(round(t - started, 1), done, rss) for t, done, rss in sampler.rss],
            "load": load_average(),
        }
    finally:
        sampler.stop()
        warm.stop()
        load.close()
    out["after_load"]["data_dir_mib"] = dir_mib(warm.data_dir)
    dead = out["after_load"]["outcomes"].get("dead_lettered", 0)
    if dead:
        print(f"  WARNING: {dead} inputs were dead-lettered (see {warm.log_path})", flush=True)
    return out


def report(out: dict[str, Any]) -> None:
    n = out["customers"]
    empty, cold = out["empty"], out["cold"]
    print(f"\nrisk_detector, {n:,} customers; {os.cpu_count()} cores, load now {load_average()}")
    print(f"changelog records written: {out['changelogs']['records']}")
    print(f"{'':44s} {'ready':>8s} {'RSS':>9s} {'peak RSS':>9s} {'RocksDB':>9s}")
    print(f"{'empty service':44s} {empty['ready_s']:7.1f}s {empty['rss_mib']:5.0f} MiB")
    print(
        f"{'cold recovery (empty data dir)':44s} {cold['ready_s']:7.1f}s "
        f"{cold['rss_mib']:5.0f} MiB {cold['peak_rss_mib']:5.0f} MiB "
        f"{cold['data_dir_mib']:5.0f} MiB"
    )
    if "warm" in out:
        warm, after = out["warm"], out["after_load"]
        print(
            f"{'restart on its own data dir (RSS at ready)':44s} {warm['ready_s']:7.1f}s "
            f"{warm['rss_at_ready_mib']:5.0f} MiB"
        )
        drain = out["drain"]
        print(
            f"{'after the drain':44s} {'':8s} {drain['rss_mib']:5.0f} MiB "
            f"{drain['peak_rss_mib']:5.0f} MiB"
        )
        print(
            f"{'after drain and open loop':44s} {'':8s} {after['rss_mib']:5.0f} MiB "
            f"{after['peak_rss_mib']:5.0f} MiB {after['data_dir_mib']:5.0f} MiB"
        )
    extra = (cold["rss_mib"] - empty["rss_mib"]) * 2**20 / n
    recover = cold["ready_s"] - empty["ready_s"]
    print(
        f"per customer after cold recovery: {extra:.0f} B of RSS above the empty service; "
        f"recovery {recover:.1f}s above the empty service's start"
    )
    if "drain" not in out:
        return
    drain, after = out["drain"], out["after_load"]
    print(
        f"drain: {drain['rate']:.0f} input events/s ({drain['events']} events, "
        f"{drain['requests']} outreach requests, load {drain['load']}); open loop: "
        + (
            f"{out['open_loop']['sustainable']:.0f} ev/s sustained"
            if out["open_loop"]["sustainable"]
            else "no sustainable rate found"
        )
    )
    domain = out["domain"]
    print(
        f"the same work in-process without Kafka: {domain['rate']:.0f} ev/s on one core ("
        + ", ".join(f"{k} {v:.0f} us" for k, v in domain["us_per_event"].items())
        + " per event)"
    )
    if after["story_position"] > after["story_steady"]:
        print("note: the load ran past day 12 of the story (no new orders, the tail only)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000, help="rounded to 1,000s")
    parser.add_argument("--backlog", type=int, default=30_000, help="input events to drain")
    parser.add_argument("--trial-s", type=float, default=15.0)
    parser.add_argument("--max-trials", type=int, default=4, help="open-loop trials (0: none)")
    parser.add_argument("--timeout", type=float, default=600, help="per phase, seconds")
    parser.add_argument("--stall-s", type=float, default=60)
    parser.add_argument(
        "--tables",
        type=lambda text: tuple(t for t in TABLES if t in text.split(",")),
        default=TABLES,
        help="changelogs to write (default all four); with fewer, the run ends after the "
        "recovery (what one table costs)",
    )
    parser.add_argument("--kafka-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10,000 customers, short trials"
    )
    args = parser.parse_args()
    if args.quick:
        args.customers, args.backlog, args.trial_s, args.max_trials = 10_000, 5_000, 8.0, 2
    exit_on_sigterm()
    own_workdir = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="outreach-risk-bench-")
    from deploy.kafka.local_kafka import cache_dir

    probe = cpu_probe_ms()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_average()}, cpu probe {probe:.0f} ms",
        flush=True,
    )
    started = time.monotonic()
    base = story(cache_dir() / "bench")
    copies = copies_of(args.customers)
    print(
        f"story: {len(base.profiles)} customers, {base.history_facts} facts of history, "
        f"{len(base.load)} of load ({time.monotonic() - started:.1f}s); {copies} copies; "
        f"work dir {args.workdir}",
        flush=True,
    )
    bootstrap, broker = local_broker("KAFKA_BOOTSTRAP_SERVERS", args.kafka_port)
    stamp = str(int(time.time()))
    out: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_probe_ms": probe,
        "load_at_start": load_average(),
    }
    try:
        out.update(measure(bootstrap, stamp, base, copies, args))
    except BenchError as exc:
        print(f"\nBENCH FAILED: {exc}\n(logs in {args.workdir})", file=sys.stderr, flush=True)
        return 1
    finally:
        if broker is not None:
            broker.stop()
        out["seconds"] = time.monotonic() - started
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
    report(out)
    print(f"\nwhole run {out['seconds']:.0f}s", flush=True)
    if own_workdir:  # the data dirs of 100k customers are a few hundred MiB
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
