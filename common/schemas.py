"""Schemas of every event payload: the SPEC §3 input contract and our internal topics.

Each input `type` maps to one pydantic model; `parse_input` turns a CloudEvent into its
typed payload or raises InvalidEvent with a readable reason. Unknown fields are ignored
(producers may add fields), missing or ill-typed ones are refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from common.envelope import CloudEvent, InvalidEvent, describe_validation_error


def _decimal_string(value: Any) -> Any:
    # SPEC §3: amounts are decimal strings. A float would silently lose cents.
    if isinstance(value, float):
        raise ValueError("amounts must be decimal strings, not JSON numbers")
    return value


Money = Annotated[Decimal, BeforeValidator(_decimal_string), Field(max_digits=18, decimal_places=4)]


@lru_cache(maxsize=64)
def _zone(offset: timedelta) -> timezone:
    return UTC if not offset else timezone(offset)


def _stdlib_zone(moment: datetime) -> datetime:
    # pydantic gives an aware time a tzinfo of its own class, and every comparison or
    # subtraction with one costs about ten times what it does with the standard
    # library's (the rules make hundreds per event). The same offset, the stdlib's class.
    offset = moment.utcoffset()
    assert offset is not None  # AwareDatetime
    return moment.replace(tzinfo=_zone(offset))


#: An aware date and time (RFC 3339 with an offset), with a standard-library tzinfo.
Moment = Annotated[AwareDatetime, AfterValidator(_stdlib_zone)]
Identifier = Annotated[str, Field(min_length=1, max_length=200)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# ---- commerce.orders -------------------------------------------------------------------


class ShippingMethod(StrEnum):
    STANDARD = "standard"
    EXPRESS = "express"
    NEXT_DAY = "next_day"
    PICKUP = "pickup"


class OrderItem(_Payload):
    sku: Identifier
    name: str = Field(min_length=1, max_length=500)
    quantity: int = Field(gt=0, le=100_000)
    unit_price: Money


class ShippingAddress(_Payload):
    country: str = Field(min_length=2, max_length=2)
    postal_code: str = Field(max_length=20)
    city: str = Field(max_length=200)


class OrderPlaced(_Payload):
    order_id: Identifier
    customer_id: Identifier
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    total: Money
    items: list[OrderItem] = Field(min_length=1)
    shipping_method: ShippingMethod
    promised_ship_by: Moment
    promised_delivery_by: Moment
    shipping_address: ShippingAddress


class OrderCancelled(_Payload):
    order_id: Identifier
    reason: str = Field(max_length=500)
    cancelled_by: Literal["customer", "merchant"]


# ---- commerce.shipments ----------------------------------------------------------------


class ShipmentItem(_Payload):
    sku: Identifier
    quantity: int = Field(gt=0, le=100_000)


class ShipmentCreated(_Payload):
    shipment_id: Identifier
    order_id: Identifier
    carrier: str = Field(min_length=1, max_length=100)
    tracking_number: str = Field(min_length=1, max_length=100)
    tracking_url: str | None = Field(default=None, max_length=2000)
    items: list[ShipmentItem] = Field(min_length=1)
    estimated_delivery_at: Moment | None = None


class TrackingStatus(StrEnum):
    INFO_RECEIVED = "info_received"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    ATTEMPT_FAILED = "attempt_failed"
    AVAILABLE_FOR_PICKUP = "available_for_pickup"
    DELIVERED = "delivered"
    EXCEPTION = "exception"
    RETURNED_TO_SENDER = "returned_to_sender"


class ExceptionSubstatus(StrEnum):
    LOST = "lost"
    DAMAGED = "damaged"
    ADDRESS_ISSUE = "address_issue"
    CUSTOMS_HOLD = "customs_hold"
    WEATHER_DELAY = "weather_delay"
    CARRIER_DELAY = "carrier_delay"
    REFUSED = "refused"
    OTHER = "other"


class ShipmentTrackingUpdated(_Payload):
    shipment_id: Identifier
    order_id: Identifier
    status: TrackingStatus
    substatus: str | None = Field(default=None, max_length=100)
    location: str | None = Field(default=None, max_length=300)
    estimated_delivery_at: Moment | None = None
    checkpoint_at: Moment


# ---- commerce.returns ------------------------------------------------------------------


class ReturnReason(StrEnum):
    DAMAGED = "damaged"
    DEFECTIVE = "defective"
    WRONG_ITEM = "wrong_item"
    NOT_AS_DESCRIBED = "not_as_described"
    LATE_DELIVERY = "late_delivery"
    SIZE_FIT = "size_fit"
    CHANGED_MIND = "changed_mind"
    BETTER_PRICE = "better_price"
    OTHER = "other"


MERCHANT_FAULT_REASONS = frozenset(
    {
        ReturnReason.DAMAGED,
        ReturnReason.DEFECTIVE,
        ReturnReason.WRONG_ITEM,
        ReturnReason.NOT_AS_DESCRIBED,
        ReturnReason.LATE_DELIVERY,
    }
)


class ReturnItem(_Payload):
    sku: Identifier
    quantity: int = Field(gt=0, le=100_000)
    reason: ReturnReason


class ReturnRequested(_Payload):
    return_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    items: list[ReturnItem] = Field(min_length=1)
    reason: ReturnReason
    comment: str | None = Field(default=None, max_length=5000)


class ReturnReceived(_Payload):
    return_id: Identifier
    order_id: Identifier


class ReturnRefunded(_Payload):
    return_id: Identifier
    order_id: Identifier
    amount: Money
    currency: str = Field(pattern=r"^[A-Z]{3}$")


# ---- commerce.customers ----------------------------------------------------------------


class CustomerUpserted(_Payload):
    customer_id: Identifier
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    locale: str = Field(min_length=2, max_length=35)
    timezone: str = Field(min_length=1, max_length=64)
    marketing_opt_in: bool


class CustomerErased(_Payload):
    customer_id: Identifier


# ---- commerce.feedback -----------------------------------------------------------------


class FeedbackReceived(_Payload):
    customer_id: Identifier
    order_id: Identifier | None = None
    kind: Literal["nps", "csat", "complaint"]
    score: int | None = None
    comment: str | None = Field(default=None, max_length=5000)

    @field_validator("score")
    @classmethod
    def _score_in_range(cls, score: int | None, info: Any) -> int | None:
        kind = info.data.get("kind")
        if score is None:
            return score
        if kind == "nps" and not 0 <= score <= 10:
            raise ValueError("nps score must be 0-10")
        if kind == "csat" and not 1 <= score <= 5:
            raise ValueError("csat score must be 1-5")
        return score


INPUT_TYPES: dict[str, tuple[str, type[_Payload]]] = {
    "order.placed": ("commerce.orders", OrderPlaced),
    "order.cancelled": ("commerce.orders", OrderCancelled),
    "shipment.created": ("commerce.shipments", ShipmentCreated),
    "shipment.tracking_updated": ("commerce.shipments", ShipmentTrackingUpdated),
    "return.requested": ("commerce.returns", ReturnRequested),
    "return.received": ("commerce.returns", ReturnReceived),
    "return.refunded": ("commerce.returns", ReturnRefunded),
    "customer.upserted": ("commerce.customers", CustomerUpserted),
    "customer.erased": ("commerce.customers", CustomerErased),
    "feedback.received": ("commerce.feedback", FeedbackReceived),
}


def parse_payload(event: CloudEvent, model: type[_Payload]) -> Any:
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidEvent(
            f"{event.type} data invalid: {describe_validation_error(exc)}", code="bad_data"
        ) from exc


def parse_input(event: CloudEvent, topic: str | None = None) -> _Payload:
    """The typed payload of an input event; raises InvalidEvent for unknown types or bad data."""
    entry = INPUT_TYPES.get(event.type)
    if entry is None:
        raise InvalidEvent(f"unknown event type {event.type!r}", code="unknown_type")
    expected_topic, model = entry
    if topic is not None and topic != expected_topic and topic.startswith("commerce."):
        raise InvalidEvent(
            f"event type {event.type!r} does not belong on topic {topic!r}", code="wrong_topic"
        )
    payload: _Payload = parse_payload(event, model)
    return payload


# ---- internal topics -------------------------------------------------------------------


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Intent(StrEnum):
    APOLOGY = "apology"
    STATUS_UPDATE = "status_update"
    CHECK_IN = "check_in"


class OrderContext(_Payload):
    """What the templates may say about an order: no address, no personal data."""

    order_id: str
    currency: str
    total: str
    items: list[dict[str, Any]]
    shipping_method: str
    placed_at: Moment | None = None
    promised_delivery_by: Moment | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    tracking_url: str | None = None
    estimated_delivery_at: Moment | None = None


class Incident(_Payload):
    """`outreach.incidents` payload: incident.opened | updated | resolved | checkin_due."""

    incident_id: str
    revision: int = Field(ge=1)
    kind: str
    severity: Severity
    customer_id: str
    order_id: str
    shipment_id: str | None = None
    status: Literal["open", "resolved"]
    detected_at: Moment
    explanation: str
    evidence: list[str] = Field(default_factory=list)
    facts: dict[str, Any] = Field(default_factory=dict)
    order: OrderContext | None = None
    resolution: str | None = None


class Reason(_Payload):
    code: str
    contribution: float = 0.0
    detail: str = ""


class Cause(_Payload):
    type: Literal["incident", "return", "risk", "checkin"]
    id: str
    kind: str


class OutreachRequest(_Payload):
    """`outreach.requests` payload (type outreach.request.created)."""

    request_id: str
    customer_id: str
    order_id: str | None = None
    intent: Intent
    message_kind: str
    cause: Cause
    severity: Severity = Severity.WARNING
    priority: int = Field(default=50, ge=0, le=100)
    offer_tier: str | None = None
    risk_score: float | None = None
    reasons: list[Reason] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict)
    requested_at: Moment
