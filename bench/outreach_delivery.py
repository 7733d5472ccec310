"""Benchmark: outreach end to end — decisions and sends per second, and the latency from
an outreach request on Kafka to the provider's API receiving the message.

    python -m bench.outreach_delivery [--requests 3000] [--latency-s 30] [--rate-share 0.5]
        [--provider-latency-ms 80] [--provider-rate 10000] [--database-url URL]

Real processes on the real local broker: preferences (gRPC, SQLite) and one outreach
worker (ledger on SQLite by default, or --database-url), sending through the official
SendGrid and Twilio SDKs to the provider doubles, which answer after a simulated
latency. Every request goes to its own customer (half email, half SMS in a time zone
where it is day), so no frequency cap or quiet hour holds anything back.

1. drain: `--requests` requests are published at once; decisions/s = requests / time
   from the first publish to the last message reaching a provider; and the outreach
   process's CPU time per message over the drain (what the host's speed changes least).
2. latency: requests at `--rate-share` x the drain rate for `--latency-s` seconds (open
   loop); p50/p99 from publish to the provider receiving the message.

The per-provider rate limit (OUTREACH_PROVIDER_RATE_PER_S, 50/s by default) is raised to
`--provider-rate` so the pipeline, not the limiter, is measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_probe_ms, cpu_seconds  # noqa: E402
from common.envelope import CloudEvent, new_event  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.doubles.sendgrid import SendGridDouble  # noqa: E402
from tests.doubles.twilio import TwilioDouble, provider_env  # noqa: E402
from tests.e2e.stack import Stack  # noqa: E402

ZONES = ("Pacific/Auckland", "Asia/Tokyo", "Asia/Kolkata", "Europe/Berlin",
         "America/New_York", "America/Los_Angeles", "Pacific/Honolulu")  # fmt: skip


def daytime_zone() -> str:
    now = datetime.now(UTC)
    return next(z for z in ZONES if 9 <= now.astimezone(ZoneInfo(z)).hour < 19)


class Timed:
    """Stamps each message with when it reached the double (before its simulated latency)."""

    arrivals: dict[str, float]
    latency_s: float

    def record(self, message: dict[str, Any]) -> None:
        to = message.get("To") or message["json"]["personalizations"][0]["to"][0]["email"]
        self.arrivals[str(to).removeprefix("whatsapp:")] = time.time() - self.latency_s
        super().record(message)  # type: ignore[misc]


class TimedTwilio(Timed, TwilioDouble):
    pass


class TimedSendGrid(Timed, SendGridDouble):
    pass


# Every id of a run carries its tag: a ledger on a server outlives the run, and the next
# run's requests must not be taken for redeliveries (nor its customers capped).
RUN = f"{int(time.time())}"


def address(n: int) -> tuple[str, str]:
    """(channel, address) of customer n: even ones by email, odd ones by SMS."""
    return ("email", f"bench{n}@example.com") if n % 2 == 0 else ("sms", f"+4915{n:09d}")


def customer(n: int, zone: str) -> CloudEvent:
    channel, addr = address(n)
    data: dict[str, Any] = {
        "customer_id": f"c{RUN}-{n}",
        "first_name": "Ada",
        "locale": "de-DE" if n % 3 else "en-GB",
        "timezone": zone,
        "marketing_opt_in": False,
        ("email" if channel == "email" else "phone"): addr,
    }
    return new_event(
        type="customer.upserted",
        source="/bench",
        subject=f"c{RUN}-{n}",
        time=datetime.now(UTC) - timedelta(hours=1),
        id=f"cust-{RUN}-{n}",
        data=data,
    )


def request(n: int) -> CloudEvent:
    now = datetime.now(UTC)
    cause = f"inc-{RUN}-{n}"
    order = {
        "order_id": f"o{RUN}-{n}",
        "currency": "EUR",
        "total": "89.90",
        "items": [{"sku": "L", "name": "Lamp", "quantity": 1, "unit_price": "89.90"}],
        "shipping_method": "standard",
        "carrier": "DHL",
        "tracking_number": f"JJD{n:012d}",
        "tracking_url": f"https://dhl.example/JJD{n}",
        "promised_delivery_by": (now - timedelta(days=1)).isoformat(),
        "estimated_delivery_at": (now + timedelta(days=2)).isoformat(),
    }
    incident = {
        "incident_id": cause,
        "kind": "delivery_late",
        "severity": "warning",
        "explanation": "late",
        "detected_at": now.isoformat(),
        "facts": {"delay_days": 3},
    }
    return new_event(
        type="outreach.request.created",
        source="/bench",
        subject=f"req-{RUN}-{n}",
        time=now,
        id=f"evt-req-{RUN}-{n}",
        data={
            "request_id": f"req-{RUN}-{n}",
            "customer_id": f"c{RUN}-{n}",
            "order_id": f"o{RUN}-{n}",
            "intent": "apology",
            "message_kind": "delivery_late",
            "cause": {"type": "incident", "id": cause, "kind": "delivery_late"},
            "severity": "warning",
            "priority": 60,
            "offer_tier": None,
            "reasons": [{"code": "delivery_late", "contribution": 0, "detail": "late"}],
            "context": {"incident": incident, "order": order},
            "requested_at": now.isoformat(),
        },
    )


class Publisher:
    """kafka-python, batched: flushed when asked, not per record."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        from kafka import KafkaProducer

        self.prefix = prefix
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=2
        )

    def publish(self, topic: str, key: str, event: CloudEvent) -> None:
        self.producer.send(
            self.prefix + topic,
            key=key.encode(),
            value=event.to_bytes(),
            headers=[("content-type", b"application/cloudevents+json")],
        )

    def flush(self) -> None:
        self.producer.flush(timeout=60)

    def close(self) -> None:
        self.producer.close(timeout=10)


def print_log_tails(stack: Stack, names: tuple[str, ...]) -> None:
    """What the services last logged, for a run that failed."""
    for name in names:
        print(f"--- {name} log tail ---\n{stack.logs(name)[-3000:]}", file=sys.stderr)


def received(doubles: tuple[Timed, Timed]) -> int:
    return sum(len(d.arrivals) for d in doubles)


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--latency-s", type=float, default=30.0)
    p.add_argument("--rate-share", type=float, default=0.5)
    p.add_argument("--provider-latency-ms", type=float, default=80.0)
    p.add_argument("--provider-rate", type=float, default=10_000.0)
    p.add_argument("--database-url", default=None, help="outreach's ledger (default SQLite)")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    from deploy.kafka.local_kafka import LocalKafka

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if bootstrap else LocalKafka(port=0).start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    latency = args.provider_latency_ms / 1000
    twilio = TimedTwilio(latency_s=latency)
    sendgrid = TimedSendGrid(latency_s=latency)
    for d in (twilio, sendgrid):
        d.arrivals, d.latency_s = {}, latency
        d.start()
    doubles = (twilio, sendgrid)
    zone = daytime_zone()
    with tempfile.TemporaryDirectory(prefix="bench-outreach-") as tmp:
        env = {
            "OUTREACH_CLOCK": "wall",
            "LOG_LEVEL": "WARNING",
            "OUTREACH_PROVIDER_RATE_PER_S": str(args.provider_rate),
            **provider_env(twilio, sendgrid),
        }
        if args.database_url:
            env["OUTREACH_DATABASE_URL"] = args.database_url
        stack = Stack(bootstrap, f"bench{int(time.time())}.", Path(tmp), extra_env=env)
        shop = Publisher(bootstrap, stack.prefix)

        def customers(first: int, count: int) -> None:
            for n in range(first, first + count):
                shop.publish("commerce.customers", f"c{RUN}-{n}", customer(n, zone))
            shop.flush()
            wait_for(
                lambda: _consumed(stack) >= first + count,
                timeout=args.timeout,
                interval=0.5,
                message="preferences to learn every customer",
            )

        try:
            stack.start("preferences")
            customers(0, args.requests)
            stack.start("outreach")

            # 1. drain
            worker = stack.procs["outreach"].pid
            cpu_before = cpu_seconds(worker)
            started = time.time()
            for n in range(args.requests):
                shop.publish("outreach.requests", f"c{RUN}-{n}", request(n))
            shop.flush()
            published = time.time() - started
            wait_for(
                lambda: received(doubles) >= args.requests,
                timeout=args.timeout,
                interval=0.2,
                message=f"{args.requests} messages at the providers",
            )
            last = max(max(d.arrivals.values()) for d in doubles if d.arrivals)
            drain = args.requests / (last - started)
            # outreach's own CPU per message: what the host's speed changes least
            cpu_ms = (cpu_seconds(worker) - cpu_before) * 1000 / args.requests

            # 2. latency at a share of the drain rate, open loop
            rate = max(1.0, drain * args.rate_share)
            count = int(rate * args.latency_s)
            customers(args.requests, count)
            sent_at: dict[str, float] = {}
            begin = time.time()
            for i in range(count):
                n = args.requests + i
                pause = begin + i / rate - time.time()
                if pause > 0:
                    time.sleep(pause)
                sent_at[address(n)[1]] = time.time()
                shop.publish("outreach.requests", f"c{RUN}-{n}", request(n))
                if i % 50 == 0:
                    shop.flush()
            shop.flush()
            wait_for(
                lambda: received(doubles) >= args.requests + count,
                timeout=args.timeout,
                interval=0.2,
                message="the open-loop messages at the providers",
            )
            arrivals = {**twilio.arrivals, **sendgrid.arrivals}
            waits = [(arrivals[a] - t) * 1000 for a, t in sent_at.items()]
        except AssertionError:
            print_log_tails(stack, ("preferences", "outreach"))
            raise
        finally:
            shop.close()
            stack.stop()
            for d in doubles:
                d.stop()
            if broker is not None:
                broker.stop()
    print(f"\noutreach end to end, {os.cpu_count()} cores (cpu probe {cpu_probe_ms():.0f} ms), "
          f"ledger {'PostgreSQL' if args.database_url else 'SQLite'}, provider latency "
          f"{args.provider_latency_ms:.0f} ms:")  # fmt: skip
    print(f"  drain: {args.requests} requests published in {published:.1f} s, "
          f"{drain:.0f} decisions+sends/s, outreach CPU {cpu_ms:.1f} ms a message")  # fmt: skip
    print(f"  open loop at {rate:.0f}/s for {args.latency_s:.0f} s ({count} requests): "
          f"request -> provider p50 {quantile(waits, 0.5):.0f} ms, "
          f"p99 {quantile(waits, 0.99):.0f} ms, max {max(waits):.0f} ms")  # fmt: skip
    return 0


def _consumed(stack: Stack) -> float:
    import re

    text = stack.metrics("preferences")
    return sum(
        float(v)
        for v in re.findall(
            r'outreach_events_consumed_total\{[^}]*outcome="processed"[^}]*\} ([0-9.e+]+)', text
        )
    )


if __name__ == "__main__":
    sys.exit(main())
