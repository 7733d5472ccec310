"""The versioned template store (in the outreach database) and the cache workers read.

Every template is (message_kind, channel, locale) with numbered versions: drafts,
published ones (all kept), archived ones. The defaults in services/outreach/templates/
are seeded as version 1, published by "system", when a key has no version yet. Workers
read through `TemplateCache`, which reloads when the store's revision (the highest
version id) changes — checked at most every `refresh_s` seconds, so a publish in the
studio reaches running workers within seconds, without a restart.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.domain.rendering import TemplateSource, locale_chain

DEFAULTS_DIR = Path(__file__).resolve().parents[1] / "templates"
CHANNELS = ("email", "sms", "whatsapp")

FOOTERS = {
    "en": (
        "You receive this message about your order with {{ shop.name }}.",
        "Unsubscribe",
        "Help",
    ),
    "de": (
        "Sie erhalten diese Nachricht zu Ihrer Bestellung bei {{ shop.name }}.",
        "Abmelden",
        "Hilfe",
    ),
    "fr": (
        "Vous recevez ce message au sujet de votre commande chez {{ shop.name }}.",
        "Se désabonner",
        "Aide",
    ),
}


class TemplateVersion(Base):
    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("message_kind", "channel", "locale", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_kind: Mapped[str] = mapped_column(String(64), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    locale: Mapped[str] = mapped_column(String(35))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)  # draft|published|archived
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def source(self) -> TemplateSource:
        return TemplateSource(
            self.message_kind,
            self.channel,
            self.locale,
            self.version,
            self.subject,
            self.html,
            self.text,
        )


def email_parts(body: str, language: str) -> tuple[str, str]:
    """HTML and text parts of a default email from its paragraphs, inside our layout."""
    note, unsubscribe, help_ = FOOTERS.get(language, FOOTERS["en"])
    paragraphs = [p.strip() for p in body.strip().split("\n\n") if p.strip()]
    html_body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    html = (
        '<!doctype html>\n<html><body style="margin:0;padding:24px;background:#f6f6f4;'
        'font-family:Helvetica,Arial,sans-serif;color:#222;line-height:1.5">\n'
        '<div style="max-width:560px;margin:auto;background:#fff;padding:28px;border-radius:8px">\n'
        f"{html_body}\n"
        '<p style="margin-top:28px">{{ shop.name }}</p>\n</div>\n'
        '<p style="max-width:560px;margin:16px auto;font-size:12px;color:#777">'
        f'{note} <a href="{{{{ links.support_url }}}}">{help_}</a> · '
        f'<a href="{{{{ links.unsubscribe_url }}}}">{unsubscribe}</a></p>\n'
        "</body></html>"
    )
    text = (
        "\n\n".join(paragraphs)
        + "\n\n{{ shop.name }}\n\n--\n"
        + note
        + f"\n{help_}: {{{{ links.support_url }}}}\n{unsubscribe}: {{{{ links.unsubscribe_url }}}}"
    )
    return html, text


def default_templates() -> list[tuple[str, str, str, str | None, str | None, str]]:
    """(kind, channel, locale, subject, html, text) for every shipped default."""
    out: list[tuple[str, str, str, str | None, str | None, str]] = []
    for path in sorted(DEFAULTS_DIR.glob("*.toml")):
        language = path.stem
        for kind, parts in tomllib.loads(path.read_text()).items():
            html, text = email_parts(parts["body"], language)
            out.append((kind, "email", language, parts["subject"].strip(), html, text))
            out.append((kind, "sms", language, None, None, parts["sms"].strip()))
            out.append((kind, "whatsapp", language, None, None, parts["sms"].strip()))
    return out


@dataclass
class Published:
    id: int
    source: TemplateSource


class TemplateStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def seed_defaults(self) -> int:
        """Publish the shipped defaults for keys that have no version yet (idempotent)."""
        now = datetime.now(UTC)
        added = 0
        async with self.sessions() as s, s.begin():
            existing = {
                (k, c, loc)
                for k, c, loc in (
                    await s.execute(
                        select(
                            TemplateVersion.message_kind,
                            TemplateVersion.channel,
                            TemplateVersion.locale,
                        ).distinct()
                    )
                ).all()
            }
            for kind, channel, locale, subject, html, text in default_templates():
                if (kind, channel, locale) in existing:
                    continue
                s.add(
                    TemplateVersion(
                        message_kind=kind,
                        channel=channel,
                        locale=locale,
                        version=1,
                        status="published",
                        subject=subject,
                        html=html,
                        text=text,
                        author="system",
                        message="shipped default",
                        created_at=now,
                        published_at=now,
                    )
                )
                added += 1
        return added

    async def revision(self) -> str:
        """Changes whenever a version is added, published or archived."""
        async with self.sessions() as s:
            row = (
                await s.execute(
                    select(
                        func.max(TemplateVersion.id),
                        func.max(TemplateVersion.published_at),
                        func.count().filter(TemplateVersion.status == "published"),
                    )
                )
            ).one()
            return f"{row[0]}:{row[1]}:{row[2]}"

    async def published(self) -> list[TemplateVersion]:
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(TemplateVersion)
                    .where(TemplateVersion.status == "published")
                    .order_by(TemplateVersion.version)
                )
            ).scalars()
            return list(rows)

    async def versions(self, kind: str, channel: str, locale: str) -> list[TemplateVersion]:
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(TemplateVersion)
                    .where(
                        TemplateVersion.message_kind == kind,
                        TemplateVersion.channel == channel,
                        TemplateVersion.locale == locale,
                    )
                    .order_by(TemplateVersion.version)
                )
            ).scalars()
            return list(rows)

    async def save_draft(
        self,
        kind: str,
        channel: str,
        locale: str,
        *,
        subject: str | None,
        html: str | None,
        text: str,
        author: str,
    ) -> TemplateVersion:
        async with self.sessions() as s, s.begin():
            latest = (
                await s.execute(
                    select(func.coalesce(func.max(TemplateVersion.version), 0)).where(
                        TemplateVersion.message_kind == kind,
                        TemplateVersion.channel == channel,
                        TemplateVersion.locale == locale,
                    )
                )
            ).scalar_one()
            row = TemplateVersion(
                message_kind=kind,
                channel=channel,
                locale=locale,
                version=int(latest) + 1,
                status="draft",
                subject=subject,
                html=html,
                text=text,
                author=author,
                created_at=datetime.now(UTC),
            )
            s.add(row)
        return row

    async def publish(self, version_id: int, *, author: str, message: str) -> TemplateVersion:
        async with self.sessions() as s, s.begin():
            row = await s.get(TemplateVersion, version_id)
            if row is None:
                raise KeyError(version_id)
            row.status = "published"
            row.published_at = datetime.now(UTC)
            row.message = message
            row.author = author
        return row

    async def rollback(
        self, kind: str, channel: str, locale: str, to_version: int, *, author: str
    ) -> TemplateVersion:
        """Publish a copy of an earlier version as a new version."""
        versions = await self.versions(kind, channel, locale)
        old = next((v for v in versions if v.version == to_version), None)
        if old is None:
            raise KeyError(to_version)
        draft = await self.save_draft(
            kind, channel, locale, subject=old.subject, html=old.html, text=old.text, author=author
        )
        return await self.publish(
            draft.id, author=author, message=f"rollback to version {to_version}"
        )

    async def archive(self, version_id: int) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(TemplateVersion)
                .where(TemplateVersion.id == version_id)
                .values(status="archived")
            )


class TemplateCache:
    """Published templates in memory, reloaded when the store's revision moves."""

    def __init__(self, store: TemplateStore, refresh_s: float = 2.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._revision = ""
        self._checked = 0.0
        self._by_key: dict[tuple[str, str, str], list[TemplateSource]] = {}

    async def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_s:
            return
        self._checked = now
        revision = await self.store.revision()
        if revision == self._revision:
            return
        by_key: dict[tuple[str, str, str], list[TemplateSource]] = {}
        for row in await self.store.published():
            by_key.setdefault((row.message_kind, row.channel, row.locale), []).append(row.source())
        self._by_key = by_key
        self._revision = revision

    async def candidates(self, kind: str, channel: str, locale: str) -> list[TemplateSource]:
        """Published versions for the first locale of the fallback chain that has any,
        newest first (the caller falls back to older ones if the newest fails to render)."""
        await self.refresh()
        for tag in locale_chain(locale):
            versions = self._by_key.get((kind, channel, tag))
            if versions:
                return sorted(versions, key=lambda v: -v.version)
        return []
