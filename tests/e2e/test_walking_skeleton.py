"""The walking skeleton: four services as processes on a real broker, through the
official SDKs to the provider doubles (SPEC §3 → §4)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.envelope import new_event
from tests.conftest import wait_for
from tests.doubles.twilio import provider_env
from tests.e2e.stack import Shop, Stack, TopicReader
from tests.monitoring import alert_expressions, dashboard_expressions, metrics_named

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def event(type_: str, subject: str, hours: float, data: dict[str, Any], id_: str | None = None):
    return new_event(
        type=type_,
        source="/shop/test",
        subject=subject,
        time=at(hours),
        data=data,
        id=id_ or f"{type_}/{subject}/{hours}",
    )


def customer(
    cid: str,
    first: str,
    *,
    locale: str,
    tz: str,
    email: str | None = None,
    phone: str | None = None,
):
    data: dict[str, Any] = {
        "customer_id": cid,
        "first_name": first,
        "locale": locale,
        "timezone": tz,
        "marketing_opt_in": False,
    }
    if email:
        data["email"] = email
    if phone:
        data["phone"] = phone
    return event("customer.upserted", cid, -1, data)


def order(oid: str, cid: str, hours: float, deliver_by: float):
    return event(
        "order.placed",
        oid,
        hours,
        {
            "order_id": oid,
            "customer_id": cid,
            "currency": "EUR",
            "total": "89.90",
            "items": [
                {"sku": "LAMP-1", "name": "Reading lamp", "quantity": 1, "unit_price": "89.90"}
            ],
            "shipping_method": "standard",
            "promised_ship_by": at(hours + 24).isoformat(),
            "promised_delivery_by": at(deliver_by).isoformat(),
            "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
        },
    )


def shipment(oid: str, hours: float):
    return event(
        "shipment.created",
        oid,
        hours,
        {
            "shipment_id": f"s-{oid}",
            "order_id": oid,
            "carrier": "DHL",
            "tracking_number": "JJD014600003828475",
            "tracking_url": "https://dhl.example/JJD",
            "items": [{"sku": "LAMP-1", "quantity": 1}],
        },
    )


def tracking(
    oid: str,
    hours: float,
    status: str,
    estimate: datetime | None = None,
    substatus: str | None = None,
):
    data: dict[str, Any] = {
        "shipment_id": f"s-{oid}",
        "order_id": oid,
        "status": status,
        "checkpoint_at": at(hours).isoformat(),
        "location": "Leipzig",
    }
    if substatus:
        data["substatus"] = substatus
    if estimate:
        data["estimated_delivery_at"] = estimate.isoformat()
    return event("shipment.tracking_updated", oid, hours, data)


def consumed(stack: Stack, service: str, topic: str, outcome: str) -> float:
    pattern = (
        rf'outreach_events_consumed_total\{{[^}}]*outcome="{outcome}"[^}}]*'
        rf'topic="{re.escape(stack.prefix + topic)}"[^}}]*\}} ([0-9.e+]+)'
    )
    found = re.search(pattern, stack.metrics(service))
    if found is None:  # label order is not guaranteed: try the other way round
        pattern = (
            rf'outreach_events_consumed_total\{{[^}}]*topic="{re.escape(stack.prefix + topic)}"'
            rf'[^}}]*outcome="{outcome}"[^}}]*\}} ([0-9.e+]+)'
        )
        found = re.search(pattern, stack.metrics(service))
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def stack(kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double):
    s = Stack(
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        extra_env={
            **provider_env(twilio_double, sendgrid_double),
        },
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_late_delivery_reaches_the_customer_once_in_their_language_and_time_zone(
    stack, kafka_bootstrap, topic_prefix, twilio_double, sendgrid_double
):
    shop = Shop(kafka_bootstrap, topic_prefix)
    messages = TopicReader(kafka_bootstrap, topic_prefix + "outreach.messages")
    actions = TopicReader(kafka_bootstrap, topic_prefix + "outreach.actions")
    deadletters = TopicReader(kafka_bootstrap, topic_prefix + "deadletter.orders_watcher")
    try:
        shop.publish(
            "commerce.customers",
            "c-ada",
            customer("c-ada", "Ada", locale="de-DE", tz="Europe/Berlin", email="ada@example.com"),
        )
        shop.publish(
            "commerce.customers",
            "c-bob",
            customer("c-bob", "Bob", locale="en-GB", tz="Europe/London", phone="+447911123456"),
        )
        wait_for(
            lambda: consumed(stack, "preferences", "commerce.customers", "processed") >= 2,
            timeout=60,
            message="preferences to learn both customers",
        )

        # Ada: the promise (T0+72h) passes; three minutes later, within the allowed
        # lateness, the carrier's new estimate comes: 6 March 23:30 UTC, which is already
        # 7 March in Berlin. (The scan at 74h moves the event clock past the lateness.)
        ada = [
            order("o-ada", "c-ada", 0, 72),
            shipment("o-ada", 10),
            tracking("o-ada", 20, "in_transit"),
            tracking(
                "o-ada", 72.05, "in_transit", estimate=datetime(2026, 3, 6, 23, 30, tzinfo=UTC)
            ),
            tracking("o-ada", 74, "in_transit"),
        ]
        # Bob: a failed delivery attempt at 14:00 London time — a status update by SMS.
        bob = [
            order("o-bob", "c-bob", 1, 120),
            shipment("o-bob", 5),
            tracking("o-bob", 30, "attempt_failed"),
        ]
        publish_in_time_order(shop, ada + bob)

        emails = wait_for(
            lambda: sendgrid_double.messages,
            timeout=90,
            message="the apology email at the SendGrid double",
        )
        sms = wait_for(
            lambda: twilio_double.messages, timeout=90, message="the SMS at the Twilio double"
        )
        email = emails[0]
        body = email_text(email)
        assert "Ada" in body
        assert "o-ada" in body
        assert "7. März 2026" in body, body  # the new date, in Berlin, in German
        assert email_to(email) == "ada@example.com"
        assert "Bob" in sms_body(sms[0])
        assert sms_to(sms[0]) == "+447911123456"

        sent = wait_for(
            lambda: (
                [e for e in messages.events() if e["type"] == "outreach.message.sent"]
                if len([e for e in messages.events() if e["type"] == "outreach.message.sent"]) >= 2
                else None
            ),
            timeout=60,
            message="two outreach.message.sent events",
        )
        channels = sorted(e["data"]["channel"] for e in sent)
        assert channels == ["email", "sms"]
        for e in sent:
            assert e["data"]["decision_id"] and e["data"]["template_version"]
            assert "ada@example.com" not in str(e) and "Ada" not in str(e["data"])

        # The same input again: no second message. A malformed record on the same
        # partition as a later order proves the watcher keeps going past it.
        publish_in_time_order(shop, ada)
        shop.publish("commerce.orders", "o-cem", b'{"specversion": "1.0", "id": 42')
        shop.publish(
            "commerce.customers",
            "c-cem",
            customer("c-cem", "Cem", locale="en-GB", tz="Europe/London", email="cem@example.com"),
        )
        publish_in_time_order(
            shop,
            [
                order("o-cem", "c-cem", 74, 250),
                shipment("o-cem", 76),
                tracking("o-cem", 90, "available_for_pickup"),
            ],
        )
        wait_for(
            lambda: len(sendgrid_double.messages) >= 2,
            timeout=90,
            message="Cem's email (processing went on after the malformed record)",
        )
        wait_for(
            lambda: consumed(stack, "orders_watcher", "commerce.shipments", "duplicate") >= 3,
            timeout=30,
            message="the duplicates to be recognised",
        )
        assert [email_to(m) for m in sendgrid_double.messages].count("ada@example.com") == 1
        assert len(twilio_double.messages) == 1

        # Dee: the carrier reports her parcel lost, and hours later it is delivered after
        # all: one apology, then one correction by the same channel (docs/corrections.md).
        shop.publish(
            "commerce.customers",
            "c-dee",
            customer("c-dee", "Dee", locale="en-GB", tz="Europe/London", email="dee@example.com"),
        )
        publish_in_time_order(
            shop,
            [
                order("o-dee", "c-dee", 75, 200),
                shipment("o-dee", 77),
                tracking("o-dee", 95, "exception", substatus="lost"),
            ],
        )

        def to_dee(n: int) -> list[Any] | None:
            found = [m for m in sendgrid_double.messages if email_to(m) == "dee@example.com"]
            return found if len(found) >= n else None

        wait_for(lambda: to_dee(1), timeout=90, message="Dee's apology for the lost parcel")
        publish_in_time_order(shop, [tracking("o-dee", 99, "delivered")])
        apology, correction = wait_for(lambda: to_dee(2), timeout=90, message="the correction")
        assert "has been lost" in email_text(apology)
        assert "has been delivered after all" in email_text(correction)

        # Ada's apology says "we are in touch with the carrier": sending it asked, once;
        # so did Dee's. Bob's, Cem's and the correction promise nothing of the kind.
        wait_for(lambda: len(actions.events()) >= 2, timeout=30, message="Dee's action")
        requested = [e["data"] for e in actions.events()]
        assert sorted((a["action"], a["customer_id"], a["order_id"]) for a in requested) == [
            ("carrier_inquiry", "c-ada", "o-ada"),
            ("carrier_inquiry", "c-dee", "o-dee"),
        ]
        requested = [a for a in requested if a["customer_id"] == "c-ada"]
        ada_sent = next(e for e in sent if e["data"]["customer_id"] == "c-ada")
        assert requested[0]["decision_id"] == ada_sent["data"]["decision_id"]

        dead = wait_for(lambda: deadletters.poll(), timeout=30, message="a dead letter")
        headers = {k: v.decode() for k, v in dead[0].headers}
        assert headers["dlq.original.topic"] == topic_prefix + "commerce.orders"
        assert headers["dlq.reason.code"] == "not_json"
        assert "not JSON" in headers["dlq.reason"]
        assert dead[0].value == b'{"specversion": "1.0", "id": 42'

        # Every series an alert or a dashboard panel reads is exported by a running
        # service: scraped from the four of them here, not assumed from the code.
        scraped: set[str] = set()
        for service in ("orders_watcher", "risk_detector", "outreach", "preferences"):
            scraped |= sampled_series(stack.metrics(service))
        used = metrics_named(alert_expressions() + dashboard_expressions())
        assert not used - scraped, f"no service exports {sorted(used - scraped)}"
        assert len(to_dee(1) or []) == 2  # one apology, one correction: nothing more
    finally:
        shop.close()
        messages.close()
        actions.close()
        deadletters.close()


def sampled_series(exposition: str) -> set[str]:
    """The series names with at least one sample in a Prometheus exposition."""
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def publish_in_time_order(shop: Shop, events: list[Any]) -> None:
    """As the shop's systems would: each event when it happens, keyed by its order."""
    for e in sorted(events, key=lambda e: e.time):
        topic = "commerce.orders" if e.type.startswith("order") else "commerce.shipments"
        shop.publish(topic, e.data["order_id"], e)


def email_text(message: Any) -> str:
    payload = message.get("json", message)
    return " ".join(c["value"] for c in payload["content"]) + " " + payload.get("subject", "")


def email_to(message: Any) -> str:
    payload = message.get("json", message)
    return str(payload["personalizations"][0]["to"][0]["email"])


def sms_body(message: Any) -> str:
    return str(message.get("Body") or message.get("form", {}).get("Body"))


def sms_to(message: Any) -> str:
    return str(message.get("To") or message.get("form", {}).get("To"))
