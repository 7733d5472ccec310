"""The customer store's contract, run on every implementation of `PreferencesStorePort`:
the in-memory one for unit tests, and the SQL one on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time
from typing import Any

import pytest

from services.preferences.adapters.memory_store import InMemoryPreferencesStore
from services.preferences.adapters.store import PreferencesStore, PreferencesStorePort, migrate
from services.preferences.domain.model import ConsentRecord, Customer

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Any
) -> AsyncIterator[PreferencesStorePort]:
    if request.param == "memory":
        yield InMemoryPreferencesStore("salt")
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'prefs.db'}"
    else:
        url = str(request.getfixturevalue("postgres_database_url"))
    await asyncio.to_thread(migrate, url)
    sql = PreferencesStore(url, "salt")
    try:
        yield sql
    finally:
        await sql.close()


def customer(cid: str = "c-1", **values: Any) -> Customer:
    fields: dict[str, Any] = {
        "customer_id": cid,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "email": "ada@example.com",
        "phone": "+4915112345678",
        "locale": "de-DE",
        "time_zone": "Europe/Berlin",
    }
    return Customer(**(fields | values))


def consent(granted: bool, at: datetime = T0, channel: str | None = "email") -> ConsentRecord:
    return ConsentRecord(channel, "marketing", granted, "checkout", at, "ip 192.0.2.1")


async def test_a_customer_round_trips_with_a_new_version_per_write(store):
    assert await store.load("c-1") is None
    saved = customer(quiet_start=time(22, 30, 15), channel_order=("sms", "email"))
    change = await store.save(saved, [consent(True)])
    assert (change.customer_id, change.version, change.kind) == ("c-1", 1, "upserted")
    assert saved.version == 1
    loaded = await store.load("c-1")
    assert loaded is not None and loaded.version == 1
    assert (loaded.first_name, loaded.email, loaded.locale) == ("Ada", "ada@example.com", "de-DE")
    assert loaded.quiet_start == time(22, 30) and loaded.quiet_end == time(8, 0)
    assert loaded.channel_order == ("sms", "email")
    assert loaded.consents == [consent(True)]
    later = customer(first_name="Augusta", email=None)
    assert (await store.save(later, [], kind="corrected")).version == 2
    loaded = await store.load("c-1")
    assert (loaded.first_name, loaded.email, loaded.version) == ("Augusta", None, 2)


async def test_the_consent_history_is_appended_in_order(store):
    await store.save(customer(), [consent(True, T0)])
    await store.save(customer(), [consent(False, T0.replace(hour=13)), consent(True, T0, None)])
    loaded = await store.load("c-1")
    assert [(c.granted, c.channel) for c in loaded.consents] == [
        (True, "email"),
        (False, "email"),
        (True, None),
    ]
    assert all(c.occurred_at.tzinfo is not None for c in loaded.consents)


async def test_a_loaded_customer_is_a_copy(store):
    await store.save(customer(), [consent(True)])
    loaded = await store.load("c-1")
    loaded.first_name = "changed"
    loaded.consents.clear()
    again = await store.load("c-1")
    assert again.first_name == "Ada" and len(again.consents) == 1


async def test_processed_event_ids_are_remembered(store):
    assert not await store.seen("evt-1")
    await store.save(customer(), [], event_id="evt-1")
    await store.mark_processed("evt-2")
    await store.mark_processed("evt-2")
    assert await store.seen("evt-1") and await store.seen("evt-2")
    assert not await store.seen("evt-3")


async def test_an_erasure_removes_the_customer_and_leaves_a_tombstone(store):
    await store.save(customer(), [consent(True)])
    await store.save(customer("c-2"), [])
    assert not await store.is_erased("c-1")
    assert await store.erase("c-1", event_id="evt-erase")
    assert await store.load("c-1") is None and await store.is_erased("c-1")
    assert await store.seen("evt-erase")
    assert not await store.erase("c-1")  # again: nothing left, still erased
    assert await store.load("c-2") is not None and not await store.is_erased("c-2")
    assert not await store.erase("c-9") and await store.is_erased("c-9")


async def test_the_pseudonym_is_stable_per_salt(store):
    assert store.pseudonym("c-1") == store.pseudonym("c-1") != store.pseudonym("c-2")
    assert "c-1" not in store.pseudonym("c-1") and await store.ping()
