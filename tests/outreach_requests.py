"""Outreach's inputs as tests write them: a contact plan, a message request about a late
delivery, the incident's resolution (tests/unit/outreach and tests/integration/outreach)."""

from __future__ import annotations

from datetime import UTC, datetime, time

from common.envelope import new_event
from services.outreach.domain.decisions import ChannelOption, ContactPlan

NOON = datetime(2026, 3, 4, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
NIGHT = datetime(2026, 3, 4, 22, 30, tzinfo=UTC)  # 23:30 in Berlin
EMAIL = ChannelOption("email", "ada@example.com", True, "ok")
SMS = ChannelOption("sms", "+4915112345678", True, "ok")


def plan(*channels, opt_in=False):
    return ContactPlan(
        customer_id="c-1",
        known=True,
        first_name="Ada",
        locale="de-DE",
        time_zone="Europe/Berlin",
        quiet_start=time(21),
        quiet_end=time(8),
        marketing_opt_in=opt_in,
        channels=channels,
    )


def request(
    rid="req-1",
    *,
    kind="delivery_late",
    intent="apology",
    severity="warning",
    cause="inc-1",
    at=NOON,
    offer=None,
    revision=1,
    customer="c-1",
):
    order = {
        "order_id": "o-1",
        "currency": "EUR",
        "total": "89.90",
        "items": [{"sku": "L", "name": "Lamp", "quantity": 1, "unit_price": "89.90"}],
        "shipping_method": "standard",
        "carrier": "DHL",
        "tracking_number": "JJD1",
        "tracking_url": "https://dhl.example/JJD1",
        "promised_delivery_by": "2026-03-04T08:00:00+00:00",
        "estimated_delivery_at": "2026-03-06T23:30:00+00:00",
    }
    incident = {
        "incident_id": cause,
        "kind": kind,
        "severity": severity,
        "explanation": "late",
        "detected_at": at.isoformat(),
        "facts": {"delay_days": 3},
        "order": order,
        "revision": revision,
    }
    return new_event(
        type="outreach.request.created",
        source="/t",
        subject=rid,
        time=at,
        id=f"evt-{rid}",
        data={
            "request_id": rid,
            "customer_id": customer,
            "order_id": "o-1",
            "intent": intent,
            "message_kind": kind,
            "cause": {"type": "incident", "id": cause, "kind": kind},
            "severity": severity,
            "priority": 60,
            "offer_tier": offer,
            "reasons": [{"code": kind, "contribution": 0, "detail": "late"}],
            "context": {"incident": incident, "order": order},
            "requested_at": at.isoformat(),
        },
    )


def resolved(cause="inc-1", at=NOON):
    return new_event(
        type="incident.resolved",
        source="/t",
        subject=cause,
        time=at,
        id=f"res-{cause}",
        data={
            "incident_id": cause,
            "revision": 2,
            "kind": "delivery_late",
            "severity": "warning",
            "customer_id": "c-1",
            "order_id": "o-1",
            "status": "resolved",
            "detected_at": at.isoformat(),
            "explanation": "delivered",
            "resolution": "delivered",
        },
    )
