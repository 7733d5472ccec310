"""Schemas of every event payload: the SPEC §3 input contract and our internal topics.

Each input `type` maps to one msgspec struct; `parse_input` turns a CloudEvent into its
typed payload or raises InvalidEvent with a readable reason (the field, never its
value). Unknown fields are ignored (producers may add fields), missing or ill-typed ones
are refused, strictly (a number where a string belongs is refused, not converted).

The input structs are msgspec's, not pydantic's: every input record of every service is
parsed into one, and msgspec does it about ten times faster. The payloads of our own
topics, which consumers parse far less often, stay pydantic models.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from common.envelope import CloudEvent, Instant, InvalidEvent, describe_validation_error


class Money(Decimal):
    """An amount: SPEC §3 says decimal strings (a JSON number would silently lose
    cents), at most 18 digits, 4 of them after the point."""

    @classmethod
    def from_json(cls, value: Any) -> Money:
        if not isinstance(value, str):
            raise ValueError("amounts must be decimal strings, not JSON numbers")
        try:
            amount = cls(value)
        except InvalidOperation:
            raise ValueError("not a decimal amount") from None
        _, digits, exponent = amount.as_tuple()
        if (
            not amount.is_finite()
            or len(digits) > 18
            or (isinstance(exponent, int) and exponent < -4)
        ):
            raise ValueError("amounts have at most 18 digits, 4 after the point")
        return amount


def _decode(kind: type, value: Any) -> Any:
    # msgspec's dec_hook: NotImplementedError is its protocol for "not a type this hook
    # reads", which msgspec reports as a validation error naming the field.
    if kind is Money:
        return Money.from_json(value)
    raise NotImplementedError(f"cannot read {kind.__name__}")


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
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Quantity = Annotated[int, msgspec.Meta(gt=0, le=100_000)]


CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]


# Strings of bounded length (msgspec constraints).
ItemName = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
CancelReason = Annotated[str, msgspec.Meta(max_length=500)]
CountryCode = Annotated[str, msgspec.Meta(min_length=2, max_length=2)]
PostalCode = Annotated[str, msgspec.Meta(max_length=20)]
City = Annotated[str, msgspec.Meta(max_length=200)]
CarrierName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
TrackingNumber = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Url = Annotated[str, msgspec.Meta(max_length=2000)]
Substatus = Annotated[str, msgspec.Meta(max_length=100)]
Location = Annotated[str, msgspec.Meta(max_length=300)]
Comment = Annotated[str, msgspec.Meta(max_length=5000)]
FirstName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
LastName = Annotated[str, msgspec.Meta(max_length=200)]
EmailText = Annotated[str, msgspec.Meta(max_length=320)]
PhoneText = Annotated[str, msgspec.Meta(max_length=32)]
LocaleTag = Annotated[str, msgspec.Meta(min_length=2, max_length=35)]
TimeZoneName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class _Input(msgspec.Struct, frozen=True, kw_only=True):
    pass


# ---- commerce.orders -------------------------------------------------------------------


class ShippingMethod(StrEnum):
    STANDARD = "standard"
    EXPRESS = "express"
    NEXT_DAY = "next_day"
    PICKUP = "pickup"


class OrderItem(_Input, frozen=True, kw_only=True):
    sku: Identifier
    name: ItemName
    quantity: Quantity
    unit_price: Money


class ShippingAddress(_Input, frozen=True, kw_only=True):
    country: CountryCode
    postal_code: PostalCode
    city: City


class OrderPlaced(_Input, frozen=True, kw_only=True):
    order_id: Identifier
    customer_id: Identifier
    currency: CurrencyCode
    total: Money
    items: Annotated[list[OrderItem], msgspec.Meta(min_length=1)]
    shipping_method: ShippingMethod
    promised_ship_by: Instant
    promised_delivery_by: Instant
    shipping_address: ShippingAddress
    # Codes the customer redeemed with the order (a remedy's, docs/outcomes.md): optional.
    discount_codes: tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], ...] = ()


class OrderCancelled(_Input, frozen=True, kw_only=True):
    order_id: Identifier
    reason: CancelReason
    cancelled_by: Literal["customer", "merchant"]


# ---- commerce.shipments ----------------------------------------------------------------


class ShipmentItem(_Input, frozen=True, kw_only=True):
    sku: Identifier
    quantity: Quantity


class ShipmentCreated(_Input, frozen=True, kw_only=True):
    shipment_id: Identifier
    order_id: Identifier
    carrier: CarrierName
    tracking_number: TrackingNumber
    tracking_url: Url | None = None
    items: Annotated[list[ShipmentItem], msgspec.Meta(min_length=1)]
    estimated_delivery_at: Instant | None = None


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


class ShipmentTrackingUpdated(_Input, frozen=True, kw_only=True):
    shipment_id: Identifier
    order_id: Identifier
    status: TrackingStatus
    substatus: Substatus | None = None
    location: Location | None = None
    estimated_delivery_at: Instant | None = None
    checkpoint_at: Instant


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


class ReturnItem(_Input, frozen=True, kw_only=True):
    sku: Identifier
    quantity: Quantity
    reason: ReturnReason


class ReturnRequested(_Input, frozen=True, kw_only=True):
    return_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    items: Annotated[list[ReturnItem], msgspec.Meta(min_length=1)]
    reason: ReturnReason
    comment: Comment | None = None


class ReturnReceived(_Input, frozen=True, kw_only=True):
    return_id: Identifier
    order_id: Identifier


class ReturnRefunded(_Input, frozen=True, kw_only=True):
    return_id: Identifier
    order_id: Identifier
    amount: Money
    currency: CurrencyCode


# ---- commerce.customers ----------------------------------------------------------------


class CustomerUpserted(_Input, frozen=True, kw_only=True):
    customer_id: Identifier
    first_name: FirstName
    last_name: LastName | None = None
    email: EmailText | None = None
    phone: PhoneText | None = None
    locale: LocaleTag
    timezone: TimeZoneName
    marketing_opt_in: bool


class CustomerErased(_Input, frozen=True, kw_only=True):
    customer_id: Identifier


# ---- commerce.feedback -----------------------------------------------------------------


class FeedbackReceived(_Input, frozen=True, kw_only=True):
    customer_id: Identifier
    order_id: Identifier | None = None
    kind: Literal["nps", "csat", "complaint"]
    score: int | None = None
    comment: Comment | None = None

    def __post_init__(self) -> None:
        if self.score is None:
            return
        if self.kind == "nps" and not 0 <= self.score <= 10:
            raise ValueError("score: nps score must be 0-10")
        if self.kind == "csat" and not 1 <= self.score <= 5:
            raise ValueError("score: csat score must be 1-5")


class SupportTicketOpened(_Input, frozen=True, kw_only=True):
    """A customer contacted the shop's support (its helpdesk's ticket): an outcome the
    experiments measure ("where is my order" contacts above all, docs/outcomes.md)."""

    ticket_id: Identifier
    customer_id: Identifier
    order_id: Identifier | None = None
    topic: Literal[
        "where_is_my_order", "delivery_problem", "return", "refund", "product", "billing", "other"
    ]
    channel: Literal["email", "phone", "chat", "web", "social", "other"] = "other"


INPUT_TYPES: dict[str, tuple[str, type[_Input]]] = {
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
    "support.ticket.opened": ("commerce.feedback", SupportTicketOpened),
}


def parse_payload(event: CloudEvent, model: type[Any]) -> Any:
    """The event's data as `model` (an input struct or one of our topics' models)."""
    if isinstance(model, type) and issubclass(model, msgspec.Struct):
        try:
            return msgspec.convert(event.data, model, dec_hook=_decode)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(
                f"{event.type} data invalid: {_describe(str(exc))}", code="bad_data"
            ) from exc
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidEvent(
            f"{event.type} data invalid: {describe_validation_error(exc)}", code="bad_data"
        ) from exc


def _describe(reason: str) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.items[0].sku`" as
    "items[0].sku: Expected `str`, got `int`" (the field first; no value is echoed)."""
    message, _, where = reason.partition(" - at `$")
    field = where.rstrip("`").lstrip(".")
    missing = message.removeprefix("Object missing required field `")
    if missing != message:  # "Object missing required field `x`": name the field itself
        field = f"{field}.{missing.rstrip('`')}" if field else missing.rstrip("`")
        message = "required, missing"
    return f"{field}: {message}" if field else message


def parse_input(event: CloudEvent, topic: str | None = None) -> Any:
    """The typed payload of an input event; raises InvalidEvent for unknown types or bad data."""
    entry = INPUT_TYPES.get(event.type)
    if entry is None:
        raise InvalidEvent(f"unknown event type {event.type!r}", code="unknown_type")
    expected_topic, model = entry
    if topic is not None and topic != expected_topic and topic.startswith("commerce."):
        raise InvalidEvent(
            f"event type {event.type!r} does not belong on topic {topic!r}", code="wrong_topic"
        )
    return parse_payload(event, model)


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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


class IncidentKind(StrEnum):
    """What orders_watcher detects (docs/detection.md). Each is also the message kind of
    the message that tells a customer about it (services/outreach/domain/rendering.py)
    and has an intent in risk_detector's decisions."""

    DISPATCH_LATE = "dispatch_late"
    DELIVERY_AT_RISK = "delivery_at_risk"
    DELIVERY_LATE = "delivery_late"
    SHIPMENT_STALLED = "shipment_stalled"
    DELIVERY_FAILED = "delivery_failed"
    AWAITING_PICKUP = "awaiting_pickup"
    CARRIER_EXCEPTION = "carrier_exception"
    RETURNED_TO_SENDER = "returned_to_sender"
    REFUND_LATE = "refund_late"


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
    # correction: outreach's own correction of a message about an incident (its id is
    # the incident's with ":corrected", its kind the incident's)
    type: Literal["incident", "return", "risk", "checkin", "correction"]
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
    # The customer's value when asked (high: SPEC §6's high-value rule), for remedies.
    customer_value: Literal["high", "standard"] | None = None
    risk_score: float | None = None
    reasons: list[Reason] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict)
    requested_at: Moment


class ContactChoice(_Payload):
    """`outreach.optouts` payload: contact.opted_out | contact.opted_in. Written by
    outreach (a STOP reply, a provider's "unsubscribed", the unsubscribe page), applied
    by preferences at the event's time."""

    customer_id: str = Field(min_length=1)
    channel: Literal["email", "sms", "whatsapp"]
    source: str = ""
    evidence: str = ""
    occurred_at: Moment | None = None
    address: str | None = None


class ConversationTurn(_Payload):
    """One entry of a conversation: a message we sent (`out`) or a reply (`in`)."""

    at: Moment
    direction: Literal["out", "in"]
    channel: str
    kind: str  # the message kind of a message, the intent of a reply
    tone: str | None = None
    text: str = ""
    ref: str = ""  # the decision id of a message, the reply id of a reply


class ReplyLabel(_Payload):
    """How a reply was read, and the words that decided it."""

    reply_id: str
    intent: str
    tone: str
    evidence: list[str] = Field(default_factory=list)
    classifier: str = ""


class HandoffRequested(_Payload):
    """`support.handoffs` payload (type support.handoff.requested): a customer a person
    should look at, with why (for the agent). `trigger` says what handed them off: a
    churn-risk score (risk_detector) or a reply (outreach, with the reply's label, the
    incident it is about and the conversation so far)."""

    handoff_id: str
    customer_id: str
    order_ids: list[str] = Field(default_factory=list)
    risk_score: float | None = None
    reasons: list[Reason] = Field(default_factory=list)
    summary: str = ""
    trigger: Literal["risk_score", "reply"] = "risk_score"
    locale: str | None = None
    summary_local: str = ""  # the summary in the customer's language
    conversation: list[ConversationTurn] = Field(default_factory=list)
    reply: ReplyLabel | None = None
    incident: Cause | None = None


class CareAction(StrEnum):
    """What a message promises the shop will do (docs/events.md, outreach.actions)."""

    CARRIER_INQUIRY = "carrier_inquiry"  # ask the carrier what happened to the parcel
    REFUND_ESCALATION = "refund_escalation"  # pay a late refund with priority
    QUALITY_REPORT = "quality_report"  # tell the quality team what went wrong
    PRIORITY_DISPATCH = "priority_dispatch"  # pack a late order first
    # Remedies a message carried (docs/remedies.md): `remedy` says which.
    DISCOUNT_CODE = "discount_code"  # accept this single-use code (percent, amount, shipping)
    EXPEDITED_RESHIP = "expedited_reship"  # send a replacement by express
    STORE_CREDIT = "store_credit"  # book this credit to the customer's account


class CareActionRequested(_Payload):
    """`outreach.actions` payload (type care.action.requested): something a message told
    the customer we are doing, for the shop's systems to do — requested when the message
    is sent, once per message and action."""

    action_id: str
    action: CareAction
    customer_id: str
    order_id: str | None = None
    decision_id: str
    message_kind: str
    channel: str | None = None
    cause: Cause | None = None
    requested_at: Moment
    # For a remedy: kind (percent, amount, free_shipping, expedited_reship, credit), value,
    # currency, code (a discount code, single use) and expires_at.
    remedy: dict[str, Any] | None = None


class HandoffResolved(_Payload):
    """`support.resolutions` payload (type support.handoff.resolved): what the agent did
    with a hand-off, from the helpdesk. `solved` cancels the automated check-in that
    waits for the agent; `no_contact` (the agent could not reach the customer) sends it;
    `escalated` keeps it waiting. Read by risk_detector (the profile, the waiting
    check-in) and outreach (check-ins not yet sent)."""

    handoff_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    outcome: Literal["solved", "no_contact", "escalated"]
    resolved_at: Moment
    agent: str | None = None
    ticket_id: str | None = None


class ReplyReceived(_Payload):
    """`outreach.replies` payload (type outreach.reply.received): a customer's reply,
    attached to its conversation and read. No text, address or name: those stay in
    outreach's database (the conversation view and hand-offs carry them)."""

    reply_id: str
    customer_id: str
    channel: Literal["email", "sms", "whatsapp", "web"]  # web: the survey's one-click page
    received_at: Moment
    decision_id: str | None = None  # the message it answers
    order_id: str | None = None
    cause: Cause | None = None
    command: Literal["stop", "start", "help"] | None = None
    intent: str
    tone: str
    evidence: list[str] = Field(default_factory=list)
    language: str
    classifier: str
    opted_out: bool = False
    handoff_id: str | None = None
    survey_score: int | None = Field(default=None, ge=1, le=5)  # CSAT, 1 poor … 5 excellent
