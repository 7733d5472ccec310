"""preferences' handlers: customer events, opt-out events, and the operations the gRPC
API exposes. Validation raises `FieldViolation`; the entrypoints turn it into a dead
letter (Kafka) or INVALID_ARGUMENT (gRPC)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, time
from typing import Protocol

from common import schemas
from common.envelope import CloudEvent, InvalidEvent
from common.handling import Dispatch
from common.logs import get_logger
from services.preferences.adapters.change_feed import Change, ChangeFeed
from services.preferences.adapters.store import PreferencesStorePort
from services.preferences.domain import validation
from services.preferences.domain.model import (
    CHANNELS,
    ConsentRecord,
    Customer,
    Plan,
    consents_from_upsert,
    contact_plan,
    customer_from_upsert,
)
from services.preferences.domain.validation import FieldViolation

log = get_logger(__name__)


class ErasureAnnouncer(Protocol):
    """Tells every other service that a customer was erased (`customer.erased` on
    commerce.customers, keyed by the customer), so that each deletes what it keeps."""

    async def announce(self, customer_id: str) -> None: ...


class Preferences:
    def __init__(
        self,
        store: PreferencesStorePort,
        feed: ChangeFeed,
        default_order: tuple[str, ...] = ("email", "sms", "whatsapp"),
        erasures: ErasureAnnouncer | None = None,
    ) -> None:
        self.store = store
        self.feed = feed
        self.default_order = default_order
        self.erasures = erasures
        self.customer_events = Dispatch(
            "preferences", {"customer.upserted": self._upserted, "customer.erased": self._erased}
        )

    # --- Kafka inputs --------------------------------------------------------------

    async def on_customer_event(self, event: CloudEvent) -> str:
        """customer.upserted or customer.erased; returns the outcome's name."""
        handle = self.customer_events(event.type)
        if await self.store.seen(event.id):
            return "duplicate"
        return await handle(event)

    async def _erased(self, event: CloudEvent) -> str:
        erased = schemas.parse_payload(event, schemas.CustomerErased)
        await self.erase(erased.customer_id, event_id=event.id)
        return "erased"

    async def _upserted(self, event: CloudEvent) -> str:
        upsert = schemas.parse_payload(event, schemas.CustomerUpserted)
        if await self.store.is_erased(upsert.customer_id):
            await self.store.mark_processed(event.id)
            return "erased_customer_ignored"
        existing = await self.store.load(upsert.customer_id)
        try:
            customer = customer_from_upsert(existing, upsert, self.default_order)
        except FieldViolation as exc:
            raise InvalidEvent(f"customer.upserted {exc}", code="bad_data") from exc
        consents = consents_from_upsert(existing, upsert.marketing_opt_in, event.time, event.id)
        self.feed.publish(
            await self.store.save(customer, consents, event_id=event.id, kind="upserted")
        )
        return "processed"

    async def on_optout_event(self, event: CloudEvent) -> str:
        if await self.store.seen(event.id):
            return "duplicate"
        if event.type not in ("contact.opted_out", "contact.opted_in"):
            raise InvalidEvent(f"preferences does not handle {event.type!r}", code="unknown_type")
        choice = schemas.parse_payload(event, schemas.ContactChoice)
        granted = event.type == "contact.opted_in"
        await self.set_opt_out(
            choice.customer_id,
            choice.channel,
            not granted,
            choice.source or event.type,
            event.time,
            evidence=(choice.evidence or event.id)[: validation.EVIDENCE_MAX],
            event_id=event.id,
        )
        return "processed"

    # --- operations (gRPC) ---------------------------------------------------------

    async def plan(self, customer_id: str, category: str) -> Plan:
        if not customer_id:
            raise FieldViolation("customer_id", "must not be empty")
        return contact_plan(await self.store.load(customer_id), customer_id, category)

    async def get(self, customer_id: str) -> Customer | None:
        if not customer_id:
            raise FieldViolation("customer_id", "must not be empty")
        return await self.store.load(customer_id)

    async def update(
        self,
        customer_id: str,
        *,
        locale: str | None = None,
        time_zone: str | None = None,
        quiet_start: str | None = None,
        quiet_end: str | None = None,
        channel_order: list[str] | None = None,
    ) -> Customer | None:
        customer = await self.get(customer_id)
        if customer is None:
            return None
        changes: dict[str, object] = {}
        if locale is not None:
            changes["locale"] = validation.locale(locale)
        if time_zone is not None:
            changes["time_zone"] = validation.time_zone(time_zone, "time_zone")
        if quiet_start is not None:
            changes["quiet_start"] = validation.hhmm(quiet_start, "quiet_hours.start")
        if quiet_end is not None:
            changes["quiet_end"] = validation.hhmm(quiet_end, "quiet_hours.end")
        if channel_order is not None:
            if len(set(channel_order)) != len(channel_order) or any(
                c not in CHANNELS for c in channel_order
            ):
                raise FieldViolation(
                    "channel_order", "channels must be distinct: email, sms, whatsapp"
                )
            changes["channel_order"] = tuple(channel_order)
        updated = replace(customer, **changes)  # type: ignore[arg-type]
        self.feed.publish(await self.store.save(updated, [], kind="preferences"))
        return updated

    async def set_opt_out(
        self,
        customer_id: str,
        channel: str,
        opted_out: bool,
        source: str,
        at: datetime,
        evidence: str = "",
        event_id: str | None = None,
    ) -> Customer | None:
        if channel not in CHANNELS:
            raise FieldViolation("channel", "must be email, sms or whatsapp")
        customer = await self.get(customer_id)
        if customer is None:
            if event_id is not None:
                await self.store.mark_processed(event_id)
            return None
        records = [ConsentRecord(channel, "service", not opted_out, source, at, evidence)]
        if opted_out:  # an opt-out stops marketing on that channel too
            records.append(ConsentRecord(channel, "marketing", False, source, at, evidence))
        customer.consents.extend(records)
        self.feed.publish(
            await self.store.save(customer, records, event_id=event_id, kind="opt_out")
        )
        return customer

    async def record_consent(self, customer_id: str, record: ConsentRecord) -> Customer | None:
        if record.category not in ("service", "marketing"):
            raise FieldViolation("consent.category", "must be service or marketing")
        if not record.source:
            raise FieldViolation("consent.source", "must say where the consent came from")
        customer = await self.get(customer_id)
        if customer is None:
            return None
        customer.consents.append(record)
        self.feed.publish(await self.store.save(customer, [record], kind="consent"))
        return customer

    async def erase(self, customer_id: str, event_id: str | None = None) -> bool:
        """Delete the customer's personal data (a pseudonymised tombstone stays). Asked
        directly (EraseCustomer, no `event_id`), it also announces the erasure to the
        other services; heard as `customer.erased`, the announcement is already out."""
        existed = await self.store.erase(customer_id, event_id=event_id)
        self.feed.publish(Change(customer_id, 0, "erased"))
        if event_id is None and self.erasures is not None:
            await self.erasures.announce(customer_id)
        return existed


__all__ = ["Preferences", "time"]
