"""Every studio change and its audit entry commit together: with the audit table made
unwritable from outside (renamed away), no change goes through unrecorded — no draft,
publish, rollback, user, role, session or test send — and once it is back, each change
leaves exactly one entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.templates import TemplateStore
from services.outreach.studio.accounts import AccountError, Accounts, TestSend

pytestmark = pytest.mark.integration

KEY = ("awaiting_pickup", "sms", "en")
PASSWORD = "a long enough password"


@pytest.fixture
async def studio_db(database_url):
    from services.outreach.studio import accounts as _accounts  # noqa: F401 - its tables

    engine = create_engine(database_url)
    await create_schema(engine)
    sessions = session_factory(engine)
    store = TemplateStore(sessions)
    await store.seed_defaults()
    accounts = Accounts(sessions, session_lifetime=timedelta(hours=1))
    yield engine, store, accounts
    await engine.dispose()


async def _audit_table(engine, gone: bool) -> None:
    old, new = (
        ("studio_audit", "studio_audit_away") if gone else ("studio_audit_away", "studio_audit")
    )
    async with engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


async def _state(engine, store: TemplateStore, accounts: Accounts) -> tuple[object, ...]:
    versions = [(v.version, v.status) for v in await store.versions(*KEY)]
    users = [(u.username, u.role, u.disabled) for u in await accounts.users()]
    async with engine.connect() as conn:
        sessions = (await conn.execute(text("SELECT count(*) FROM studio_sessions"))).scalar()
    return versions, users, sessions, len(await accounts.test_sends())


async def test_no_change_without_its_audit_entry(studio_db):
    engine, store, accounts = studio_db
    await accounts.create_user("ada", PASSWORD, "admin")
    draft = await store.save_draft(*KEY, subject=None, html=None, text="v2", author="ada")
    before = await _state(engine, store, accounts)
    entries_before = len(await accounts.audit_log())

    await _audit_table(engine, gone=True)
    attempts = [
        store.save_draft(
            *KEY, subject=None, html=None, text="v3", author="ada",
            record=accounts.recorder("ada", "draft_saved"),
        ),
        store.publish(
            draft.id, author="ada", message="m", record=accounts.recorder("ada", "published")
        ),
        store.rollback(*KEY, 1, author="ada", record=accounts.recorder("ada", "rolled_back", to=1)),
        accounts.create_user("bob", PASSWORD, "editor"),
        accounts.update_user("ada", role="viewer", disabled=True),
        accounts.start_session("ada"),
        accounts.record_test_send(
            TestSend(
                send_key="k1", at=datetime.now(UTC), actor="ada", template_key="/".join(KEY),
                channel="sms", to="+447911123456", text="[TEST] hi",
            ),
            accounts.entry("ada", "test_sent", "/".join(KEY)),
        ),
    ]  # fmt: skip
    for attempt in attempts:
        with pytest.raises(Exception) as failed:
            await attempt
        assert not isinstance(failed.value, AccountError | AssertionError)
    await _audit_table(engine, gone=False)

    assert await _state(engine, store, accounts) == before
    assert len(await accounts.audit_log()) == entries_before

    # Back in order: each change, one entry.
    await store.publish(
        draft.id, author="ada", message="m", record=accounts.recorder("ada", "published")
    )
    await accounts.create_user("bob", PASSWORD, "editor")
    await accounts.start_session("bob")
    actions = [e.action for e in await accounts.audit_log()][:3]
    assert actions == ["signed_in", "user_created", "published"]
    assert [(v.version, v.status) for v in await store.versions(*KEY)][-1] == (2, "published")
