"""The providers' rate is the group's: two outreach workers together send no faster than
OUTREACH_PROVIDER_RATE_PER_S, so a provider enforcing that limit answers no 429, and
each customer still gets exactly one message.

Real processes (preferences, two outreach workers of one group sharing a SQLite ledger)
on the real broker; the official twilio SDK against the Twilio double, which enforces
the rate itself (429 with Retry-After beyond it, tests/doubles/base.py `rate_limited`).
Each worker counts the live workers in the ledger and sends its even share
(`outreach_workers_live`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from common.envelope import new_event
from tests.conftest import wait_for
from tests.doubles.base import rate_limited
from tests.doubles.twilio import provider_env
from tests.e2e.stack import Shop, Stack
from tests.e2e.test_outreach_crash import daytime_zone
from tests.e2e.test_walking_skeleton import consumed
from tests.outreach_requests import request

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
RATE = 8.0  # messages per second, for the group
CUSTOMERS = 48
SENT = re.compile(r'outreach_messages_total\{[^}]*status="sent"[^}]*\} ([0-9.e+]+)')


def customer(n: int, zone: str):
    return new_event(
        type="customer.upserted",
        source="/shop/test",
        subject=f"c-{n}",
        time=datetime.now(UTC) - timedelta(minutes=1),
        id=f"cust-c-{n}",
        data={
            "customer_id": f"c-{n}",
            "first_name": "Ada",
            "locale": "en-GB",
            "timezone": zone,
            "phone": f"+4915112{n:06d}",
            "marketing_opt_in": False,
        },
    )


def gauge(stack: Stack, name: str, metric: str) -> float:
    found = re.search(rf"^{metric} ([0-9.e+]+)$", stack.metrics(name), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_two_workers_keep_together_to_the_providers_rate(
    kafka_bootstrap, topic_prefix, tmp_path, twilio_double
):
    twilio_double.set_policy(rate_limited(RATE))
    stack = Stack(
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        extra_env={
            "OUTREACH_CLOCK": "wall",
            "OUTREACH_PROVIDER_RATE_PER_S": str(RATE),
            "OUTREACH_KAFKA_SESSION_TIMEOUT_S": "6",
            **provider_env(twilio_double),
        },
    )
    shop = Shop(kafka_bootstrap, topic_prefix)
    workers = ("outreach", "outreach-2")
    try:
        stack.start("preferences")
        zone = daytime_zone()
        for n in range(CUSTOMERS):
            shop.publish("commerce.customers", f"c-{n}", customer(n, zone))
        wait_for(
            lambda: consumed(stack, "preferences", "commerce.customers", "processed") >= CUSTOMERS,
            timeout=60,
            message="preferences to know every customer",
        )
        for name in workers:
            stack.launch(name)
        for name in workers:
            wait_for(lambda n=name: stack.ready(n), timeout=90, message=f"{name} ready")
        wait_for(
            lambda: all(gauge(stack, n, "outreach_workers_live") == 2 for n in workers),
            timeout=30,
            message="both workers to count two",
        )
        now = datetime.now(UTC)
        for n in range(CUSTOMERS):
            event = request(f"req-{n}", cause=f"inc-{n}", at=now, customer=f"c-{n}")
            shop.publish("outreach.requests", f"c-{n}", event)
        messages = twilio_double.wait_for_messages(CUSTOMERS, timeout=120)

        throttled = [a for a in twilio_double.attempts if a["outcome"] == "status:429"]
        assert throttled == []
        assert sorted(m["To"] for m in messages) == sorted(
            f"+4915112{n:06d}" for n in range(CUSTOMERS)
        )
        # Together no faster than the rate: over the run, and in every 2-second window
        # (each worker's bucket holds one send of burst on top of its share, so one more
        # per worker, services/outreach/adapters/providers.py, GuardedSender; and one for
        # the jitter on the way: the double stamps arrivals, not sends). Two workers each
        # sending at the full rate would put 32 there.
        accepted = sorted(m["accepted_at"] for m in messages)
        assert (accepted[-1] - accepted[0]) >= (CUSTOMERS - RATE) / RATE * 0.9
        for i, start in enumerate(accepted):
            in_window = sum(1 for t in accepted[i:] if t < start + 2.0)
            assert in_window <= 2 * RATE + len(workers) + 1, (start, in_window)
        sent = [SENT.search(stack.metrics(name)) for name in workers]
        assert all(s and float(s.group(1)) > 0 for s in sent), sent  # both took part
    finally:
        shop.close()
        stack.stop()
