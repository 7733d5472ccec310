"""Studio accounts, sign-in sessions, the audit log and test sends (outreach database).

Passwords are hashed with argon2id (argon2-cffi's defaults, re-hashed when they
change). A session is a random token in an HttpOnly cookie; only its SHA-256 is stored,
with the CSRF token every form of that session must carry. Every change a person makes
in the studio is written to the audit log in the same database as the change.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import JSON, Boolean, Integer, String, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common.clock import wall_now
from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.adapters.templates import TemplateVersion

USERNAME_MAX = 64
PASSWORD_MIN = 12

# What each role may do. Templates are one ladder (viewer < editor < publisher < admin:
# each can what the ones before it can); conversations are a second axis: every role
# sees a customer's timeline, only support leads and admins with the personal data in
# it (what was written, by whom, to which address) — the others see why and when.
# Deciding a storm (approve, hold, cancel its held messages, or change its note) lets
# hundreds of messages go or stops them: publishers and admins, who answer for what is
# sent; every role sees the storms.
VIEW, EDIT, PUBLISH, ADMIN = "view", "edit", "publish", "admin"
CONVERSATIONS, PERSONAL_DATA, OPERATE = "conversations", "personal_data", "operate"
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({VIEW, CONVERSATIONS}),
    "editor": frozenset({VIEW, EDIT, CONVERSATIONS}),
    "publisher": frozenset({VIEW, EDIT, PUBLISH, CONVERSATIONS, OPERATE}),
    "admin": frozenset({VIEW, EDIT, PUBLISH, ADMIN, CONVERSATIONS, PERSONAL_DATA, OPERATE}),
    "support": frozenset({VIEW, CONVERSATIONS, PERSONAL_DATA}),
}
ROLES = tuple(PERMISSIONS)


def allowed(role: str, permission: str) -> bool:
    """May `role` do `permission` (one of VIEW … OPERATE)? An unknown role may
    do nothing."""
    return permission in PERMISSIONS.get(role, frozenset())


def roles_with(permission: str) -> list[str]:
    return [role for role, granted in PERMISSIONS.items() if permission in granted]


class StudioUser(Base):
    __tablename__ = "studio_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: SSO only
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StudioSession(Base):
    __tablename__ = "studio_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AuditEntry(Base):
    __tablename__ = "studio_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(USERNAME_MAX), index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(String(200), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TestSend(Base):
    """A draft sent to an address a studio user typed, marked as a test everywhere."""

    __tablename__ = "studio_test_sends"
    __test__ = False  # not a pytest class

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    send_key: Mapped[str] = mapped_column(String(64), unique=True)  # one per form shown
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(USERNAME_MAX), index=True)
    template_key: Mapped[str] = mapped_column(String(200))
    based_on_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    channel: Mapped[str] = mapped_column(String(16))
    to: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(String(32), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    outbox: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AccountError(ValueError):
    """A user could not be created or changed; the message says why, in plain words."""


@dataclass(frozen=True)
class SignedIn:
    username: str
    role: str
    csrf_token: str
    token: str | None = None  # only right after sign-in, to set the cookie

    def can(self, permission: str) -> bool:
        return allowed(self.role, permission)

    @property
    def sees_messages(self) -> bool:
        """What customers read: editors and publishers check their templates in it,
        support leads help with it; viewers see only why and when."""
        return self.can(EDIT) or self.can(PERSONAL_DATA)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_username(username: str) -> str:
    name = username.strip()
    if not name or len(name) > USERNAME_MAX or any(c.isspace() for c in name):
        raise AccountError(f"a user name is 1 to {USERNAME_MAX} characters without spaces")
    return name


def check_password(password: str) -> None:
    if len(password) < PASSWORD_MIN:
        raise AccountError(f"a password needs at least {PASSWORD_MIN} characters")


class Accounts:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        session_lifetime: timedelta = timedelta(hours=12),
        now: Callable[[], datetime] = wall_now,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.sessions = sessions
        self.session_lifetime = session_lifetime
        self.now = now
        self.hasher = hasher or PasswordHasher()
        # Verified against when the user does not exist, so both cases take as long.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    # -- users --

    async def create_user(self, username: str, password: str | None, role: str) -> StudioUser:
        name = check_username(username)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if password is not None:
            check_password(password)
        async with self.sessions() as s, s.begin():
            if await s.scalar(select(StudioUser).where(StudioUser.username == name)):
                raise AccountError(f"user {name!r} exists already")
            user = StudioUser(
                username=name,
                password_hash=self.hasher.hash(password) if password is not None else None,
                role=role,
                disabled=False,
                created_at=self.now(),
            )
            s.add(user)
            s.add(self.entry(SYSTEM_ACTOR, "user_created", name, {"role": role}))
        return user

    async def update_user(
        self,
        username: str,
        *,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> None:
        if role is not None and role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if password is not None:
            check_password(password)
        async with self.sessions() as s, s.begin():
            user = await s.scalar(select(StudioUser).where(StudioUser.username == username))
            if user is None:
                raise AccountError(f"no user {username!r}")
            if role is not None:
                user.role = role
            if password is not None:
                user.password_hash = self.hasher.hash(password)
            if disabled is not None:
                user.disabled = disabled
            if password is not None or disabled:
                await s.execute(delete(StudioSession).where(StudioSession.username == username))
            changed: dict[str, Any] = {"role": role, "disabled": disabled}
            changed = {k: v for k, v in changed.items() if v is not None}
            if password is not None:
                changed["password"] = "changed"
            s.add(self.entry(SYSTEM_ACTOR, "user_changed", username, changed))

    async def users(self) -> list[StudioUser]:
        async with self.sessions() as s:
            return list(
                (await s.execute(select(StudioUser).order_by(StudioUser.username))).scalars()
            )

    async def user(self, username: str) -> StudioUser | None:
        async with self.sessions() as s:
            return await s.scalar(select(StudioUser).where(StudioUser.username == username))

    # -- signing in --

    async def authenticate(self, username: str, password: str) -> StudioUser | None:
        """The user if the password is right and the account enabled, else None."""
        user = await self.user(username.strip())
        stored = user.password_hash if user is not None and not user.disabled else None
        try:
            self.hasher.verify(stored or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or stored is None:
            return None
        async with self.sessions() as s, s.begin():
            row = await s.get(StudioUser, user.id)
            assert row is not None
            row.last_login_at = self.now()
            if self.hasher.check_needs_rehash(stored):
                row.password_hash = self.hasher.hash(password)
        return user

    async def sso_user(self, username: str, role: str) -> StudioUser:
        """A user signed in by the trusted proxy: created on first sight, role kept in
        step with what the proxy says."""
        name = check_username(username)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        user = await self.user(name)
        if user is None:
            try:
                return await self.create_user(name, None, role)
            except AccountError:  # created by a concurrent request
                user = await self.user(name)
                assert user is not None
        if user.role != role:
            await self.update_user(name, role=role)
            user.role = role
        return user

    async def start_session(self, username: str, audit: dict[str, Any] | None = None) -> SignedIn:
        """A new session; its `signed_in` audit entry (with `audit` as detail) commits with
        it."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.now()
        async with self.sessions() as s, s.begin():
            await s.execute(delete(StudioSession).where(StudioSession.expires_at < now))
            s.add(
                StudioSession(
                    token_hash=_digest(token),
                    username=username,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + self.session_lifetime,
                )
            )
            s.add(self.entry(username, "signed_in", username, audit or {}))
            user = await s.scalar(select(StudioUser).where(StudioUser.username == username))
        role = user.role if user is not None else "viewer"
        return SignedIn(username, role, csrf, token)

    async def session(self, token: str) -> SignedIn | None:
        """The signed-in user of a cookie token; None when unknown, expired or disabled."""
        if not token:
            return None
        async with self.sessions() as s:
            row = await s.get(StudioSession, _digest(token))
            if row is None or row.expires_at <= self.now():
                return None
            user = await s.scalar(select(StudioUser).where(StudioUser.username == row.username))
            if user is None or user.disabled:
                return None
            return SignedIn(user.username, user.role, row.csrf_token)

    async def end_session(self, token: str) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(delete(StudioSession).where(StudioSession.token_hash == _digest(token)))

    # -- audit --

    def entry(
        self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
    ) -> AuditEntry:
        """An audit entry, to add in the transaction of the change it records."""
        return AuditEntry(
            at=self.now(), actor=actor, action=action, target=target, detail=detail or {}
        )

    def recorder(
        self, actor: str, action: str, **detail: Any
    ) -> Callable[[TemplateVersion], AuditEntry]:
        """The audit entry of a change to a template version, for the template store to
        write in the change's own transaction (its target is the version's key)."""

        def record(row: TemplateVersion) -> AuditEntry:
            target = f"{row.message_kind}/{row.channel}/{row.locale}"
            return self.entry(actor, action, target, {"version": row.version, **detail})

        return record

    async def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
    ) -> None:
        """An entry on its own (for what has no transaction of ours: a test send)."""
        async with self.sessions() as s, s.begin():
            s.add(self.entry(actor, action, target, detail))

    async def audit_log(self, query: str = "", limit: int = 200) -> list[AuditEntry]:
        async with self.sessions() as s:
            stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if query:
                like = f"%{query}%"
                stmt = stmt.where(
                    AuditEntry.actor.ilike(like)
                    | AuditEntry.action.ilike(like)
                    | AuditEntry.target.ilike(like)
                )
            return list((await s.execute(stmt)).scalars())

    # -- test sends --

    async def record_test_send(self, row: TestSend, entry: AuditEntry | None = None) -> None:
        """The test send and its audit entry, together."""
        async with self.sessions() as s, s.begin():
            s.add(row)
            if entry is not None:
                s.add(entry)

    async def test_sends(self, query: str = "", limit: int = 100) -> list[TestSend]:
        async with self.sessions() as s:
            stmt = select(TestSend).order_by(TestSend.id.desc()).limit(limit)
            if query:
                like = f"%{query}%"
                stmt = stmt.where(
                    TestSend.to.ilike(like)
                    | TestSend.actor.ilike(like)
                    | TestSend.template_key.ilike(like)
                )
            return list((await s.execute(stmt)).scalars())

    async def test_send(self, send_key: str) -> TestSend | None:
        async with self.sessions() as s:
            return await s.scalar(select(TestSend).where(TestSend.send_key == send_key))

    async def test_sends_since(self, actor: str, since: datetime) -> int:
        async with self.sessions() as s:
            rows = await s.execute(
                select(TestSend.id).where(TestSend.actor == actor, TestSend.at >= since)
            )
            return len(rows.all())


SYSTEM_ACTOR = "system"
