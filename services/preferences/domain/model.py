"""A customer's contact points and the consent history, and the plans derived from them.

Consent is a history, never a flag: every grant, withdrawal and opt-out is an appended
record with its source, time and evidence. The current state per (channel, category)
reads the records in the order they were received: an opt-out (a withdrawal) always
wins over every consent received before it, whatever time that consent claims; a
consent received after an opt-out counts only if it happened after it (a START after a
STOP), not if it is an older one arriving late. An upsert from the shop can withdraw
marketing consent but never grant it again after a withdrawal — only an explicit
consent record can.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, time

from common import schemas
from services.preferences.domain import validation

CHANNELS = ("email", "sms", "whatsapp")
CATEGORIES = ("service", "marketing")
DEFAULT_ORDER = ("email", "sms", "whatsapp")


@dataclass(frozen=True)
class ConsentRecord:
    channel: str | None  # None: every channel
    category: str  # service | marketing
    granted: bool
    source: str
    occurred_at: datetime
    evidence: str = ""


@dataclass
class Customer:
    customer_id: str
    first_name: str
    last_name: str | None
    email: str | None
    phone: str | None
    locale: str
    time_zone: str
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    channel_order: tuple[str, ...] = DEFAULT_ORDER
    consents: list[ConsentRecord] = field(default_factory=list)
    version: int = 1


@dataclass(frozen=True)
class ChannelOption:
    channel: str
    address: str
    usable: bool
    reason: str


@dataclass(frozen=True)
class Plan:
    customer_id: str
    known: bool
    first_name: str = ""
    locale: str = ""
    time_zone: str = ""
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    marketing_opt_in: bool = False
    channels: tuple[ChannelOption, ...] = ()
    version: int = 0


def _decided(records: list[ConsentRecord]) -> bool | None:
    """Records in the order received: a withdrawal always wins; a grant only when it
    happened after every withdrawal received before it. None: never decided."""
    state: bool | None = None
    withdrawn_at: datetime | None = None
    for record in records:
        if not record.granted:
            state = False
            if withdrawn_at is None or record.occurred_at > withdrawn_at:
                withdrawn_at = record.occurred_at
        elif withdrawn_at is None or record.occurred_at > withdrawn_at:
            state = True
    return state


def current(consents: list[ConsentRecord], channel: str, category: str) -> bool | None:
    """The decision that applies to (channel, category) now: channel-specific records
    and all-channel records both apply (see the module docstring for how they combine).
    `consents` are in the order they were received."""
    return _decided(
        [c for c in consents if c.category == category and c.channel in (None, channel)]
    )


def marketing_opt_in(customer: Customer) -> bool:
    return bool(
        _decided([c for c in customer.consents if c.category == "marketing" and c.channel is None])
    )


def opted_out(customer: Customer) -> list[str]:
    return [ch for ch in CHANNELS if current(customer.consents, ch, "service") is False]


def address_of(customer: Customer, channel: str) -> str:
    if channel == "email":
        return customer.email or ""
    return customer.phone or ""


def contact_plan(customer: Customer | None, customer_id: str, category: str) -> Plan:
    if customer is None:
        return Plan(customer_id=customer_id, known=False)
    options = []
    order = list(customer.channel_order) + [c for c in CHANNELS if c not in customer.channel_order]
    for channel in order:
        address = address_of(customer, channel)
        if not address:
            options.append(ChannelOption(channel, "", False, "no_contact"))
            continue
        if current(customer.consents, channel, "service") is False:
            options.append(ChannelOption(channel, address, False, "opted_out"))
            continue
        if channel == "whatsapp" and current(customer.consents, "whatsapp", "service") is not True:
            # WhatsApp needs an explicit opt-in (Meta's policy): a phone number is not enough.
            options.append(ChannelOption(channel, address, False, "no_consent"))
            continue
        if category == "marketing" and current(customer.consents, channel, "marketing") is not True:
            options.append(ChannelOption(channel, address, False, "no_consent"))
            continue
        options.append(ChannelOption(channel, address, True, "ok"))
    return Plan(
        customer_id=customer.customer_id,
        known=True,
        first_name=customer.first_name,
        locale=customer.locale,
        time_zone=customer.time_zone,
        quiet_start=customer.quiet_start,
        quiet_end=customer.quiet_end,
        marketing_opt_in=marketing_opt_in(customer),
        channels=tuple(options),
        version=customer.version,
    )


def consents_from_upsert(
    existing: Customer | None, opt_in: bool, at: datetime, event_id: str
) -> list[ConsentRecord]:
    """What an upsert may say about consent: the initial marketing choice, or a withdrawal.
    It never grants marketing again once withdrawn (that needs RecordConsent)."""
    record = ConsentRecord(None, "marketing", opt_in, "customer.upserted", at, event_id)
    if existing is None:
        return [record]
    now_in = marketing_opt_in(existing)
    if now_in and not opt_in:
        return [record]
    ever_decided = any(c.category == "marketing" and c.channel is None for c in existing.consents)
    if not ever_decided and opt_in:
        return [record]
    return []


def customer_from_upsert(
    existing: Customer | None, upsert: schemas.CustomerUpserted, default_order: tuple[str, ...]
) -> Customer:
    """The customer after a `customer.upserted` from the shop: its contact data validated
    (FieldViolation otherwise) over what was kept; a new customer gets `default_order`."""
    email = validation.email(upsert.email) if upsert.email else None
    phone = validation.phone(upsert.phone) if upsert.phone else None
    locale = validation.locale(upsert.locale)
    time_zone = validation.time_zone(upsert.timezone)
    if existing is None:
        return Customer(
            customer_id=upsert.customer_id,
            first_name=upsert.first_name,
            last_name=upsert.last_name,
            channel_order=default_order,
            email=email,
            phone=phone,
            locale=locale,
            time_zone=time_zone,
        )
    return replace(
        existing,
        first_name=upsert.first_name,
        last_name=upsert.last_name,
        email=email,
        phone=phone,
        locale=locale,
        time_zone=time_zone,
    )
