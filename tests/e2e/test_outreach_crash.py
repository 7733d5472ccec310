"""outreach killed with SIGKILL at each point between taking a request and committing its
offset, then restarted: the customer gets exactly one SMS, every time.

Real processes (preferences and outreach) on the real broker, the ledger on SQLite, the
official twilio SDK against the Twilio double. The kill comes from inside the process at
a named failpoint (common/failpoints.py), so it lands exactly where it should:

- before_provider_call: the ledger says `sending`, Twilio has nothing → sent once, later;
- after_provider_call: Twilio has it, the ledger still says `sending` → found, not resent;
- after_ledger_sent: recorded, but the offset is not committed → the redelivered request
  is recognised.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import wait_for
from tests.doubles.twilio import provider_env
from tests.e2e.stack import Shop, Stack
from tests.e2e.test_walking_skeleton import consumed
from tests.outreach_requests import request

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
IN_DOUBT_AFTER_S = 3.0
ZONES = ("Pacific/Auckland", "Asia/Tokyo", "Asia/Kolkata", "Europe/Berlin",
         "America/New_York", "America/Los_Angeles", "Pacific/Honolulu")  # fmt: skip


def daytime_zone() -> str:
    """A time zone where it is day now, so quiet hours do not hold the SMS."""
    now = datetime.now(UTC)
    for zone in ZONES:
        if 9 <= now.astimezone(ZoneInfo(zone)).hour < 19:
            return zone
    raise AssertionError("no daytime zone in the list")  # the list covers every hour


def customer_event(zone: str):
    from common.envelope import new_event

    return new_event(
        type="customer.upserted",
        source="/shop/test",
        subject="c-1",
        time=datetime.now(UTC) - timedelta(minutes=1),
        id="cust-c-1",
        data={
            "customer_id": "c-1",
            "first_name": "Ada",
            "locale": "de-DE",
            "timezone": zone,
            "phone": "+4915112345678",
            "marketing_opt_in": False,
        },
    )


@pytest.mark.parametrize(
    "point", ["before_provider_call", "after_provider_call", "after_ledger_sent"]
)
def test_exactly_one_sms_whatever_the_kill_point(
    point, kafka_bootstrap, topic_prefix, tmp_path, twilio_double
):
    stack = Stack(
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        extra_env={
            "OUTREACH_CLOCK": "wall",
            "OUTREACH_KAFKA_SESSION_TIMEOUT_S": "6",
            "OUTREACH_IN_DOUBT_AFTER_S": str(IN_DOUBT_AFTER_S),
            "OUTREACH_IN_DOUBT_CHECK_S": "0.5",
            "OUTREACH_IN_DOUBT_SETTLE_S": "1",
            "OUTREACH_PROVIDER_TIMEOUT_S": "1",
            **provider_env(twilio_double),
        },
    )
    shop = Shop(kafka_bootstrap, topic_prefix)
    try:
        stack.start("preferences")
        shop.publish("commerce.customers", "c-1", customer_event(daytime_zone()))
        wait_for(
            lambda: consumed(stack, "preferences", "commerce.customers", "processed") >= 1,
            timeout=60,
            message="preferences to know the customer",
        )
        doomed = stack.launch("outreach", OUTREACH_FAILPOINTS=f"outreach.{point}")
        wait_for(lambda: stack.ready("outreach"), timeout=90, message="outreach ready")
        shop.publish("outreach.requests", "c-1", request(at=datetime.now(UTC)))
        wait_for(lambda: doomed.poll() is not None, timeout=60, message=f"the kill at {point}")
        assert doomed.returncode == -signal.SIGKILL
        assert len(twilio_double.messages) == (0 if point == "before_provider_call" else 1)

        stack.launch("outreach")  # the same data directory, no failpoint
        wait_for(lambda: stack.ready("outreach"), timeout=90, message="outreach ready again")

        def decision() -> dict | None:
            rows = stack.get_json("outreach", "/customers/c-1/explain")["decisions"]
            return rows[0] if rows and rows[0]["status"] == "sent" else None

        row = wait_for(decision, timeout=60, message="the decision to be sent")
        # Past the in-doubt window and a few reconciliation rounds: still one message.
        time.sleep(IN_DOUBT_AFTER_S + 2)
        assert len(twilio_double.messages) == 1, twilio_double.messages
        assert len(stack.get_json("outreach", "/customers/c-1/explain")["decisions"]) == 1
        assert row["provider_message_id"] == twilio_double.messages[0]["sid"]
        assert "Ada" in twilio_double.messages[0]["Body"]
    finally:
        shop.close()
        stack.stop()
