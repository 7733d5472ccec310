"""Benchmark: a carrier storm through the whole system — how long until every affected
customer has been reached.

    python -m bench.storm [--orders 20000] [--provider-latency-ms 80] [--provider-rate 100]
        [--outreach-workers 1] [--timeout 3600]

The four services as processes on the real local broker, on the wall clock, with
PostgreSQL (its own, started and stopped here) for outreach's ledger and preferences'
store; the provider doubles answer after `--provider-latency-ms` and enforce
`--provider-rate` messages a second each, answering 429 with Retry-After beyond it
(tests/doubles/base.py `rate_limited`), and outreach is configured with the same rate
(OUTREACH_PROVIDER_RATE_PER_S).

1. Setup: `--orders` customers (half by email, half by SMS, in a time zone where it is
   day), each with one order placed, shipped and in transit, on time; the run waits until
   every service has read them.
2. The storm: one carrier exception (`carrier_delay`, a hub outage) for every parcel at
   once. orders_watcher opens a `carrier_exception` incident for each, risk_detector asks
   for a status update, outreach decides and sends one message per customer.

It reports the time from the storm's first event until the last affected customer's
provider call; outreach's sustained messages a second (provider calls, first to last);
p50/p99 from a parcel's storm event to its customer's provider call; the 429s the
doubles answered; each service's peak memory; orders_watcher's sustained detection rate
(the incidents' broker timestamps, first to last) and the ratio of the send rate to it;
and where the machine's CPU went from the storm's first event to the last provider call:
the CPU time of each service (with its child processes), the broker, PostgreSQL and this
process (the provider doubles and the shop) a message, and the send rate the machine's
cores would allow at that total.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_probe_ms, rss_mib, tree_cpu_seconds  # noqa: E402
from bench.outreach_delivery import (  # noqa: E402
    RUN,
    Publisher,
    TimedSendGrid,
    TimedTwilio,
    address,
    customer,
    daytime_zone,
    print_log_tails,
    quantile,
)
from common.envelope import CloudEvent, new_event  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.doubles.base import rate_limited  # noqa: E402
from tests.doubles.twilio import provider_env  # noqa: E402
from tests.e2e.stack import PIPELINE, Stack  # noqa: E402

PROCESSED = re.compile(r"outreach_events_consumed_total\{([^}]*)\} ([0-9.e+]+)")


def shop_event(type_: str, order: str, at: datetime, data: dict[str, Any]) -> CloudEvent:
    return new_event(
        type=type_, source="/bench/storm", subject=order, time=at, id=f"{type_}/{order}", data=data
    )


def order_story(n: int, now: datetime) -> list[tuple[str, CloudEvent]]:
    """Customer n's order, placed an hour ago, shipped and in transit: on time."""
    order = f"o{RUN}-{n}"
    shipment = {"shipment_id": f"s{RUN}-{n}", "order_id": order}
    placed = {
        "order_id": order,
        "customer_id": f"c{RUN}-{n}",
        "currency": "EUR",
        "total": "89.90",
        "items": [{"sku": "LAMP-1", "name": "Reading lamp", "quantity": 1, "unit_price": "89.90"}],
        "shipping_method": "standard",
        "promised_ship_by": (now + timedelta(hours=23)).isoformat(),
        "promised_delivery_by": (now + timedelta(hours=72)).isoformat(),
        "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
    }
    created = {
        **shipment,
        "carrier": "DHL",
        "tracking_number": f"JJD{n:014d}",
        "items": [{"sku": "LAMP-1", "quantity": 1}],
        "estimated_delivery_at": (now + timedelta(hours=48)).isoformat(),
    }
    moving = {
        **shipment,
        "status": "in_transit",
        "checkpoint_at": (now - timedelta(minutes=40)).isoformat(),
        "location": "Leipzig",
        "estimated_delivery_at": (now + timedelta(hours=48)).isoformat(),
    }
    return [
        ("commerce.orders", shop_event("order.placed", order, now - timedelta(hours=1), placed)),
        (
            "commerce.shipments",
            shop_event("shipment.created", order, now - timedelta(minutes=50), created),
        ),
        (
            "commerce.shipments",
            shop_event("shipment.tracking_updated", order, now - timedelta(minutes=40), moving),
        ),
    ]


def storm_event(n: int, now: datetime) -> CloudEvent:
    """The hub outage, as customer n's parcel's carrier reports it."""
    order = f"o{RUN}-{n}"
    data = {
        "shipment_id": f"s{RUN}-{n}",
        "order_id": order,
        "status": "exception",
        "substatus": "carrier_delay",
        "checkpoint_at": now.isoformat(),
        "location": "Leipzig hub",
    }
    return new_event(
        type="shipment.tracking_updated",
        source="/bench/storm",
        subject=order,
        time=now,
        id=f"storm/{order}",
        data=data,
    )


def processed(stack: Stack, service: str) -> float:
    """Records the service has handled (every topic, outcome `processed`)."""
    return sum(
        float(value)
        for labels, value in PROCESSED.findall(stack.metrics(service))
        if 'outcome="processed"' in labels
    )


def settled(stack: Stack, services: tuple[str, ...], at_least: dict[str, float]) -> bool:
    """Every service has handled at least what is asked, and nothing more for 3 s."""
    first = {s: processed(stack, s) for s in services}
    if any(first[s] < at_least.get(s, 0) for s in services):
        return False
    time.sleep(3)
    return all(processed(stack, s) == first[s] for s in services)


def incident_times(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[float]:
    """The broker timestamps (s) of the `incident.opened` records on `topic`."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    times: list[float] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(times) < expected and time.monotonic() < deadline:
            for record in consumer:
                if b'"incident.opened"' in record.value:
                    times.append(record.timestamp / 1000)
    finally:
        consumer.close()
    return sorted(times)


def cpu_by_part(stack: Stack, broker_pid: int, postgres_pid: int) -> dict[str, float]:
    """CPU seconds used so far by each part of the run."""
    parts = {name: tree_cpu_seconds(proc.pid) for name, proc in stack.procs.items()}
    parts["kafka"] = tree_cpu_seconds(broker_pid)
    parts["postgresql"] = tree_cpu_seconds(postgres_pid)
    own = os.times()
    parts["doubles and shop (this process)"] = own.user + own.system
    return parts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=20_000)
    p.add_argument("--provider-latency-ms", type=float, default=80.0)
    p.add_argument("--provider-rate", type=float, default=100.0, help="messages/s per provider")
    p.add_argument("--outreach-workers", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600.0)
    args = p.parse_args()
    from deploy.kafka.local_kafka import LocalKafka
    from deploy.postgres.local_postgres import LocalPostgres

    n = args.orders
    broker = LocalKafka(port=0).start()
    postgres = LocalPostgres(port=0).start()
    latency = args.provider_latency_ms / 1000
    doubles = (TimedTwilio(latency_s=latency), TimedSendGrid(latency_s=latency))
    for d in doubles:
        d.arrivals, d.latency_s = {}, latency
        d.set_policy(rate_limited(args.provider_rate))
        d.start()
    twilio, sendgrid = doubles
    workers = ("outreach", *(f"outreach-{i}" for i in range(2, args.outreach_workers + 1)))
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        env = {
            "OUTREACH_CLOCK": "wall",
            "LOG_LEVEL": "WARNING",
            "OUTREACH_PROVIDER_RATE_PER_S": str(args.provider_rate),
            "OUTREACH_DATABASE_URL": postgres.create_database("ledger"),
            "PREFERENCES_DATABASE_URL": postgres.create_database("preferences"),
            **provider_env(twilio, sendgrid),
        }
        stack = Stack(broker.bootstrap, f"storm{RUN}.", Path(tmp), extra_env=env)
        shop = Publisher(broker.bootstrap, stack.prefix)
        try:
            stack.start(*PIPELINE)
            for name in workers[1:]:
                stack.launch(name)
                wait_for(partial(stack.ready, name), timeout=90, message=f"{name} ready")
            zone = daytime_zone()
            now = datetime.now(UTC)
            setup_started = time.time()
            for i in range(n):
                shop.publish("commerce.customers", f"c{RUN}-{i}", customer(i, zone))
                for topic, event in order_story(i, now):
                    shop.publish(topic, f"o{RUN}-{i}", event)
            shop.flush()
            wait_for(
                lambda: settled(
                    stack,
                    ("preferences", "orders_watcher", "risk_detector"),
                    {"preferences": n, "orders_watcher": 3 * n, "risk_detector": 2 * n},
                ),
                timeout=args.timeout,
                interval=1.0,
                message="the services to read the setup",
            )
            setup_s = time.time() - setup_started

            assert broker.proc is not None
            postgres_pid = int((postgres.data / "postmaster.pid").read_text().split()[0])
            cpu_before = cpu_by_part(stack, broker.proc.pid, postgres_pid)
            storm_at: dict[str, float] = {}
            started = time.time()
            for i in range(n):
                storm_at[address(i)[1]] = time.time()
                shop.publish("commerce.shipments", f"o{RUN}-{i}", storm_event(i, datetime.now(UTC)))
            shop.flush()
            published_s = time.time() - started
            wait_for(
                lambda: sum(len(d.arrivals) for d in doubles) >= n,
                timeout=args.timeout,
                interval=1.0,
                message=f"{n} messages at the providers",
            )
            cpu_after = cpu_by_part(stack, broker.proc.pid, postgres_pid)
            arrivals = {**twilio.arrivals, **sendgrid.arrivals}
            per_provider = {"twilio": twilio.arrivals, "sendgrid": sendgrid.arrivals}
            memory = {
                name: rss_mib(proc.pid)[1]
                for name, proc in stack.procs.items()
                if proc.poll() is None
            }
            incidents = incident_times(
                broker.bootstrap, f"{stack.prefix}outreach.incidents", n, timeout_s=120
            )
        except AssertionError:
            print_log_tails(stack, (*PIPELINE, *workers[1:]))
            raise
        finally:
            shop.close()
            stack.stop()
            for d in doubles:
                d.stop()
            postgres.stop()
            broker.stop()
    calls = sorted(arrivals.values())
    waits = [(arrivals[a] - t) * 1000 for a, t in storm_at.items() if a in arrivals]
    sending = (len(calls) - 1) / max(calls[-1] - calls[0], 1e-9)
    detecting = (len(incidents) - 1) / max(incidents[-1] - incidents[0], 1e-9)
    throttled = sum(a["outcome"] == "status:429" for d in doubles for a in d.attempts)
    print(f"\nstorm of {n} parcels, {os.cpu_count()} cores (cpu probe {cpu_probe_ms():.0f} ms),"
          f" {args.outreach_workers} outreach worker(s), providers: "
          f"{args.provider_latency_ms:.0f} ms, {args.provider_rate:.0f}/s each")  # fmt: skip
    print(f"  setup: {3 * n + n} events read in {setup_s:.0f} s; storm published in "
          f"{published_s:.1f} s")  # fmt: skip
    print(f"  last customer reached {calls[-1] - started:.1f} s after the storm's first event")
    print(f"  sending: {sending:.0f} messages/s sustained; storm event -> provider call "
          f"p50 {quantile(waits, 0.5) / 1000:.1f} s, p99 {quantile(waits, 0.99) / 1000:.1f} s; "
          f"429s: {throttled}")  # fmt: skip
    used = []
    for name, times in per_provider.items():
        stamps = sorted(times.values())
        if len(stamps) > 10:
            rate = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)
            # Between its 10th and 90th percentile call: without the start (the first
            # requests still on their way) and the tail (sends a full bucket put off).
            low, high = len(stamps) // 10, len(stamps) * 9 // 10
            steady = (high - low) / max(stamps[high] - stamps[low], 1e-9)
            used.append(
                f"{name} {rate:.1f}/s first to last ({rate / args.provider_rate:.0%} of its "
                f"limit), {steady:.1f}/s steady ({steady / args.provider_rate:.0%})"
            )
    print("  providers: " + ", ".join(used))
    print(f"  detection: {len(incidents)} incidents at {detecting:.0f}/s sustained; "
          f"sending / detection = {sending / detecting:.3f}")  # fmt: skip
    cpu_ms = {k: (cpu_after[k] - cpu_before.get(k, 0.0)) * 1000 / n for k in cpu_after}
    total_ms = sum(cpu_ms.values())
    cores = os.cpu_count() or 1
    print(
        f"  CPU a message, storm to last call: {total_ms:.1f} ms in all: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu_ms.items(), key=lambda kv: -kv[1]))
    )
    print(f"  at {total_ms:.1f} ms a message, {cores} cores allow at most "
          f"{cores * 1000 / total_ms:.0f} messages/s")  # fmt: skip
    print("  peak memory (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(memory.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
