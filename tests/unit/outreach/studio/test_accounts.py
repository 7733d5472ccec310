"""Studio accounts on SQLite: hashing, sign-in, sessions, roles, the audit log."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.studio.accounts import (
    ADMIN,
    CONVERSATIONS,
    EDIT,
    PERSONAL_DATA,
    PUBLISH,
    VIEW,
    AccountError,
    Accounts,
    SignedIn,
    allowed,
)


@pytest.fixture
async def accounts(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    await create_schema(engine)
    now = [datetime(2026, 11, 1, tzinfo=UTC)]
    a = Accounts(session_factory(engine), session_lifetime=timedelta(hours=1), now=lambda: now[0])
    a.clock_now = now  # type: ignore[attr-defined]
    yield a
    await engine.dispose()


async def test_password_is_hashed_with_argon2_and_checked(accounts):
    await accounts.create_user("ada", "long enough password", "publisher")
    user = await accounts.user("ada")
    assert user.password_hash.startswith("$argon2id$")
    assert "long enough" not in user.password_hash
    assert await accounts.authenticate("ada", "long enough password") is not None
    assert await accounts.authenticate("ada", "wrong password!!") is None
    assert await accounts.authenticate("nobody", "long enough password") is None


async def test_weak_or_duplicate_accounts_are_refused(accounts):
    with pytest.raises(AccountError, match="at least 12"):
        await accounts.create_user("bob", "short", "viewer")
    with pytest.raises(AccountError, match="role"):
        await accounts.create_user("bob", "long enough password", "root")
    await accounts.create_user("bob", "long enough password", "viewer")
    with pytest.raises(AccountError, match="exists"):
        await accounts.create_user("bob", "another long password", "viewer")


async def test_sessions_expire_and_end_when_the_user_is_disabled(accounts):
    await accounts.create_user("ada", "long enough password", "editor")
    signed = await accounts.start_session("ada")
    assert (await accounts.session(signed.token)).role == "editor"
    accounts.clock_now[0] += timedelta(minutes=61)
    assert await accounts.session(signed.token) is None

    again = await accounts.start_session("ada")
    await accounts.update_user("ada", disabled=True)
    assert await accounts.session(again.token) is None
    assert await accounts.authenticate("ada", "long enough password") is None
    log = await accounts.audit_log()
    assert [e.action for e in log] == ["user_changed", "signed_in", "signed_in", "user_created"]


async def test_sso_users_follow_the_role_the_proxy_sends(accounts):
    first = await accounts.sso_user("carol@shop.example", "editor")
    assert first.password_hash is None
    assert await accounts.authenticate("carol@shop.example", "") is None
    again = await accounts.sso_user("carol@shop.example", "viewer")
    assert again.role == "viewer"


def test_template_roles_are_a_ladder():
    ladder = ("viewer", "editor", "publisher", "admin")
    for below, above in itertools.pairwise(ladder):
        for permission in (VIEW, EDIT, PUBLISH, ADMIN):
            assert not allowed(below, permission) or allowed(above, permission)
    assert allowed("publisher", PUBLISH) and not allowed("editor", PUBLISH)
    assert not any(allowed("unknown", p) for p in (VIEW, CONVERSATIONS, PERSONAL_DATA))


def test_a_support_lead_sees_conversations_in_full_and_changes_no_template():
    """The second axis: everyone sees a timeline, only support leads and admins with
    the personal data in it; a support lead cannot edit, publish or administer."""
    assert [r for r in ("viewer", "editor", "publisher", "admin", "support")
            if allowed(r, PERSONAL_DATA)] == ["admin", "support"]  # fmt: skip
    assert all(allowed(r, CONVERSATIONS) for r in ("viewer", "editor", "publisher", "support"))
    assert not any(allowed("support", p) for p in (EDIT, PUBLISH, ADMIN))
    support, viewer = SignedIn("sam", "support", "t"), SignedIn("vic", "viewer", "t")
    assert support.sees_messages and not viewer.sees_messages
    assert SignedIn("eve", "editor", "t").sees_messages
