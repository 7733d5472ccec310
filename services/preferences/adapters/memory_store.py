"""The customer store in memory: `PreferencesStorePort` for unit tests of what uses it.

It keeps the SQL store's contract — a version per write, the consent history appended
in order and kept under a pseudonym after an erasure, tombstones, processed event ids,
quiet hours to the minute — and tests/contract/test_preferences_store.py runs the same
suite on it, on SQLite and on PostgreSQL. What it does not have: the change feed's
cross-process announcements (PostgreSQL's NOTIFY), and nothing survives the process.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC
from typing import TYPE_CHECKING

from services.preferences.adapters.change_feed import Change
from services.preferences.adapters.store import PreferencesStorePort, minutes, pseudonym
from services.preferences.domain.model import ConsentRecord, Customer


class InMemoryPreferencesStore:
    def __init__(self, pseudonym_salt: str) -> None:
        self.salt = pseudonym_salt
        self.customers: dict[str, Customer] = {}  # without their consents
        # Customer id (or pseudonym, after an erasure) → their consent records, in order.
        self.consents: dict[str, list[ConsentRecord]] = {}
        self.tombstones: set[str] = set()
        self.processed: set[str] = set()
        self.changes: list[Change] = []

    def pseudonym(self, customer_id: str) -> str:
        return pseudonym(self.salt, customer_id)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    async def load(self, customer_id: str) -> Customer | None:
        stored = self.customers.get(customer_id)
        if stored is None:
            return None
        history = [copy.copy(c) for c in self.consents.get(customer_id, ())]
        return replace(copy.deepcopy(stored), consents=history)

    async def is_erased(self, customer_id: str) -> bool:
        return self.pseudonym(customer_id) in self.tombstones

    async def seen(self, event_id: str) -> bool:
        return event_id in self.processed

    async def save(
        self,
        customer: Customer,
        new_consents: list[ConsentRecord],
        event_id: str | None = None,
        kind: str = "upserted",
    ) -> Change:
        known = self.customers.get(customer.customer_id)
        version = (known.version if known else 0) + 1
        self.customers[customer.customer_id] = replace(
            copy.deepcopy(customer),
            quiet_start=minutes(customer.quiet_start),
            quiet_end=minutes(customer.quiet_end),
            channel_order=tuple(c for c in customer.channel_order if c),
            consents=[],
            version=version,
        )
        for record in new_consents:
            at = record.occurred_at
            aware = at if at.tzinfo else at.replace(tzinfo=UTC)
            kept = replace(record, occurred_at=aware)
            self.consents.setdefault(customer.customer_id, []).append(kept)
        if event_id is not None:
            self.processed.add(event_id)
        change = Change(customer.customer_id, version, kind)
        self.changes.append(change)
        customer.version = version
        return change

    async def mark_processed(self, event_id: str) -> None:
        self.processed.add(event_id)

    async def erase(self, customer_id: str, event_id: str | None = None) -> bool:
        existed = self.customers.pop(customer_id, None) is not None
        alias = self.pseudonym(customer_id)
        # The consent history is the legal record: kept, under the pseudonym only.
        moved = [replace(c, evidence="") for c in self.consents.pop(customer_id, ())]
        if moved:
            self.consents.setdefault(alias, []).extend(moved)
        self.tombstones.add(alias)
        if event_id is not None:
            self.processed.add(event_id)
        self.changes.append(Change(customer_id, 0, "erased"))
        return existed

    def history_of(self, owner: str) -> list[ConsentRecord]:
        """The consent records kept under a customer id or a pseudonym."""
        return list(self.consents.get(owner, ()))


if TYPE_CHECKING:
    _contract: PreferencesStorePort = InMemoryPreferencesStore("salt")

__all__ = ["InMemoryPreferencesStore"]
