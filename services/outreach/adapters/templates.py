"""The versioned template store (in the outreach database) and the cache workers read.

Every template is (message_kind, channel, locale) with numbered versions: drafts,
published ones (all kept, the highest serves) and archived ones (never served). The
defaults in services/outreach/templates/ are seeded as version 1, published by
"system", for keys that have no version yet. Every change bumps one revision counter
(table `template_revision`), in the same transaction; workers read through
`TemplateCache`, which compares that counter at most every `refresh_s` seconds and
reloads when it moved — a publish in the studio reaches running workers within seconds,
without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common.clock import wall_now
from common.metrics import TEMPLATE_REVISION
from services.outreach.adapters.db import Base, UTCDateTime
from services.outreach.adapters.render_pool import InlineRenderer, Renderer
from services.outreach.domain.rendering import (
    CHANNELS,
    Problem,
    RenderedMessage,
    RenderError,
    TemplateSource,
    locale_chain,
)
from services.outreach.domain.samples import sample_contexts

log = logging.getLogger(__name__)

DEFAULTS_DIR = Path(__file__).resolve().parents[1] / "templates"
SYSTEM = "system"
STATUSES = ("draft", "published", "archived")


# A row to write in the same transaction as a change to a version (the studio's audit
# entry): the change and its record commit together or not at all.
AlsoRecord = Callable[["TemplateVersion"], Base]


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


class TemplateRevision(Base):
    """One row whose value moves with every change to `template_versions`: the cheap
    question a worker asks every couple of seconds."""

    __tablename__ = "template_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class PublishRejected(Exception):
    """Publishing refused: the version has errors (syntax, unknown variables, sandbox,
    fails to render for a sample case)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.part} {p.line or ''}: {p.message}" for p in problems))
        self.problems = problems


# --- the shipped defaults ---------------------------------------------------------------


class DefaultTemplate(NamedTuple):
    message_kind: str
    channel: str
    locale: str
    subject: str | None
    html: str | None
    text: str


def _paragraphs(body: str) -> list[str]:
    return [p.strip() for p in body.strip().split("\n\n") if p.strip()]


def _fill(layout: str, pieces: Mapping[str, str]) -> str:
    for name, value in pieces.items():
        layout = layout.replace(f"[[{name}]]", value)
    return layout


def email_parts(
    body: str, layout: Mapping[str, str], *, tracking: bool, lang: str, survey: bool = False
) -> tuple[str, str]:
    """The HTML and text parts of a default email: the kind's paragraphs inside the
    layout files (_layout.html, _layout.txt) with the locale's [_layout] pieces:
    greeting, the customer's other incidents the message names (consolidation), survey
    (the kinds that ask how we did), tracking button, offer, how to reach a person,
    signature, footer."""
    paragraphs = _paragraphs(body)
    pieces = {k: v.strip() for k, v in layout.items()}
    track = {"track": pieces["track"]}
    asking = {k: pieces[k] for k in ("survey_ask", "survey_scale")}
    also = {"also_intro": pieces["also_intro"]}
    html_pieces = {k: v.replace("\n", "<br>\n") for k, v in pieces.items()}
    html = _fill(
        _layout_file("_layout.html"),
        {
            "lang": lang,
            "paragraphs": "\n".join(f"<p>{p}</p>" for p in paragraphs),
            "tracking": _fill(_layout_file("_tracking.html"), track) if tracking else "",
            "survey": _fill(_layout_file("_survey.html"), asking) if survey else "",
            "also": _fill(_layout_file("_also.html"), also),
            **html_pieces,
        },
    )
    text = _fill(
        _layout_file("_layout.txt"),
        {
            "paragraphs": "\n\n".join(paragraphs),
            "tracking": _fill(_layout_file("_tracking.txt"), track) if tracking else "",
            "survey": _fill(_layout_file("_survey.txt"), asking) if survey else "",
            "also": _fill(_layout_file("_also.txt"), also),
            **pieces,
        },
    )
    return html.strip(), text.strip()


SMS_ALSO = (
    '{% if also %} [[also_sms]] {{ also | map(attribute="summary") | join("; ") }}.{% endif %}'
)


# A storm's note (the operator's words: docs/storms.md) opens a short message.
SMS_STORM = "{% if storm and storm.note %}{{ storm.note }} {% endif %}"


def _layout_file(name: str) -> str:
    return (DEFAULTS_DIR / name).read_text(encoding="utf-8").strip()


@lru_cache(maxsize=1)
def default_templates() -> tuple[DefaultTemplate, ...]:
    """Every shipped default: (kind, channel, locale, subject, html, text)."""
    out: list[DefaultTemplate] = []
    for path in sorted(DEFAULTS_DIR.glob("*.toml")):
        lang = path.stem
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        layout = data.pop("_layout")
        for kind, parts in data.items():
            tracking, survey = bool(parts.get("tracking")), bool(parts.get("survey"))
            html, text = email_parts(
                parts["body"], layout, tracking=tracking, lang=lang, survey=survey
            )
            # A message that names the customer's other incidents ends with them.
            also = _fill(SMS_ALSO, {"also_sms": layout["also_sms"].strip()})
            sms = SMS_STORM + parts["sms"].strip() + also
            whatsapp = SMS_STORM + parts.get("whatsapp", parts["sms"]).strip() + also
            out.append(DefaultTemplate(kind, "email", lang, parts["subject"].strip(), html, text))
            out.append(DefaultTemplate(kind, "sms", lang, None, None, sms))
            out.append(DefaultTemplate(kind, "whatsapp", lang, None, None, whatsapp))
    return tuple(out)


# --- the store ----------------------------------------------------------------------------


def _same(row: TemplateVersion, default: DefaultTemplate) -> bool:
    return (row.subject, row.html, row.text) == (default.subject, default.html, default.text)


class TemplateStore:
    """Versions of every template. Every write bumps the revision in its transaction."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        now: Callable[[], datetime] = wall_now,
        renderer: Renderer | None = None,
    ) -> None:
        self.sessions = sessions
        self.now = now
        # Publishing and rolling back render the sample cases: in a service, in the
        # render pool (hard limits); InlineRenderer only where no pool runs (tools, tests).
        self.renderer = renderer or InlineRenderer()

    # -- revision --

    @staticmethod
    async def _bump(s: AsyncSession) -> None:
        result = await s.execute(
            update(TemplateRevision)
            .where(TemplateRevision.id == 1)
            .values(value=TemplateRevision.value + 1)
        )
        if getattr(result, "rowcount", 0) == 0:
            s.add(TemplateRevision(id=1, value=1))

    async def revision(self) -> int:
        """Moves whenever a version is added, published or archived."""
        async with self.sessions() as s:
            value = (
                await s.execute(select(TemplateRevision.value).where(TemplateRevision.id == 1))
            ).scalar_one_or_none()
            return int(value or 0)

    # -- seeding --

    async def seed_defaults(self, *, upgrade: bool = True) -> int:
        """Publish the shipped defaults for keys that have no version yet (idempotent,
        safe when several workers start at once). With `upgrade`, a key nobody but
        "system" ever wrote also gets a changed shipped default as a new version, so a
        release's better wording reaches existing databases; a key a person has edited
        is never touched. Returns the number of versions added."""
        for attempt in range(3):
            try:
                return await self._seed(upgrade)
            except IntegrityError:  # another worker seeded the same key at the same time
                if attempt == 2:
                    raise
        return 0

    async def _seed(self, upgrade: bool) -> int:
        now = self.now()
        added = 0
        async with self.sessions() as s, s.begin():
            rows = (await s.execute(select(TemplateVersion))).scalars().all()
            by_key: dict[tuple[str, str, str], list[TemplateVersion]] = {}
            for row in rows:
                by_key.setdefault((row.message_kind, row.channel, row.locale), []).append(row)
            for default in default_templates():
                key = (default.message_kind, default.channel, default.locale)
                versions = sorted(by_key.get(key, []), key=lambda r: r.version)
                if versions:
                    if not upgrade or any(v.author != SYSTEM for v in versions):
                        continue
                    published = [v for v in versions if v.status == "published"]
                    if published and _same(published[-1], default):
                        continue
                    message, number = "shipped default updated", versions[-1].version + 1
                else:
                    message, number = "shipped default", 1
                s.add(
                    TemplateVersion(
                        message_kind=default.message_kind,
                        channel=default.channel,
                        locale=default.locale,
                        version=number,
                        status="published",
                        subject=default.subject,
                        html=default.html,
                        text=default.text,
                        author=SYSTEM,
                        message=message,
                        created_at=now,
                        published_at=now,
                    )
                )
                added += 1
            if added:
                await self._bump(s)
        return added

    # -- reading --

    async def get(self, version_id: int) -> TemplateVersion | None:
        async with self.sessions() as s:
            return await s.get(TemplateVersion, version_id)

    async def versions(self, kind: str, channel: str, locale: str) -> list[TemplateVersion]:
        """Every version of one key, oldest first (drafts and archived ones included)."""
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

    async def all_versions(self) -> list[TemplateVersion]:
        """Every version of every key (the studio's list)."""
        async with self.sessions() as s:
            return list((await s.execute(select(TemplateVersion))).scalars())

    async def published(self) -> list[TemplateVersion]:
        """Every published version of every key."""
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(TemplateVersion)
                    .where(TemplateVersion.status == "published")
                    .order_by(TemplateVersion.version)
                )
            ).scalars()
            return list(rows)

    async def latest_published(self, kind: str, channel: str, locale: str) -> TemplateSource | None:
        """The serving version, for the first locale of the chain (de-AT → de → en) that
        has a published one."""
        async with self.sessions() as s:
            for tag in locale_chain(locale):
                row = (
                    await s.execute(
                        select(TemplateVersion)
                        .where(
                            TemplateVersion.message_kind == kind,
                            TemplateVersion.channel == channel,
                            TemplateVersion.locale == tag,
                            TemplateVersion.status == "published",
                        )
                        .order_by(TemplateVersion.version.desc())
                        .limit(1)
                    )
                ).scalar_one_or_none()
                if row is not None:
                    return row.source()
        return None

    # -- writing --

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
        record: AlsoRecord | None = None,
    ) -> TemplateVersion:
        """A new draft version (the next number for its key)."""
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        if channel == "email" and not (subject and html):
            raise ValueError("an email template needs a subject and an HTML part")
        for attempt in range(3):
            try:
                return await self._add(
                    kind, channel, locale,
                    subject=subject, html=html, text=text, author=author, record=record,
                )  # fmt: skip
            except IntegrityError:  # two editors saved the same key at once: next number
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _add(
        self,
        kind: str,
        channel: str,
        locale: str,
        *,
        subject: str | None,
        html: str | None,
        text: str,
        author: str,
        status: str = "draft",
        message: str = "",
        record: AlsoRecord | None = None,
    ) -> TemplateVersion:
        now = self.now()
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
                status=status,
                subject=subject if channel == "email" else None,
                html=html if channel == "email" else None,
                text=text,
                author=author,
                message=message,
                created_at=now,
                published_at=now if status == "published" else None,
            )
            s.add(row)
            if record is not None:
                s.add(record(row))
            await self._bump(s)
        return row

    async def publish(
        self,
        version_id: int,
        *,
        author: str,
        message: str,
        samples: Mapping[str, Mapping[str, Any]] | None = None,
        record: AlsoRecord | None = None,
    ) -> TemplateVersion:
        """Publish a draft (or re-publish an archived version). With `samples`, refuses
        (PublishRejected) a version that has errors against them. Publishing a
        published version changes nothing (and records nothing)."""
        row = await self.get(version_id)
        if row is None:
            raise KeyError(version_id)
        if row.status == "published":
            return row
        if samples is not None:
            await self._check(row.source(), samples)
        async with self.sessions() as s, s.begin():
            row = await s.get(TemplateVersion, version_id)
            assert row is not None
            row.status = "published"
            row.published_at = self.now()
            row.author = author  # who published it: the one answerable for what serves
            row.message = message
            if record is not None:
                s.add(record(row))
            await self._bump(s)
        return row

    async def rollback(
        self,
        kind: str,
        channel: str,
        locale: str,
        to_version: int,
        *,
        author: str,
        record: AlsoRecord | None = None,
    ) -> TemplateVersion:
        """Publish a copy of an earlier version as a new version: history only grows,
        and what served when stays answerable. The copy is checked as a publish is (a
        version that fails its sample cases is not served again: PublishRejected)."""
        versions = await self.versions(kind, channel, locale)
        old = next((v for v in versions if v.version == to_version), None)
        if old is None:
            raise KeyError(to_version)
        await self._check(old.source(), sample_contexts(kind))
        return await self._add(
            kind,
            channel,
            locale,
            subject=old.subject,
            html=old.html,
            text=old.text,
            author=author,
            status="published",
            message=f"rollback to version {to_version}",
            record=record,
        )

    async def _check(
        self, source: TemplateSource, samples: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """PublishRejected with the errors of `source` against `samples`, if any."""
        problems = await self.renderer.validate(source, samples)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise PublishRejected(errors)

    async def archive(self, version_id: int) -> None:
        """Stop serving a version (the previous published one serves again)."""
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(TemplateVersion)
                .where(TemplateVersion.id == version_id)
                .values(status="archived")
            )
            await self._bump(s)


# --- the cache workers read ---------------------------------------------------------------


@dataclass
class GoodRender:
    """The newest published version that rendered, and the failures of newer ones."""

    template: TemplateSource
    rendered: RenderedMessage
    failures: list[tuple[TemplateSource, RenderError]] = field(default_factory=list)


class TemplateCache:
    """Published templates in memory, reloaded when the store's revision moves.

    The revision is asked at most every `refresh_s` seconds (OUTREACH_TEMPLATE_REFRESH_S).
    If the database cannot be read, the templates already loaded keep serving."""

    def __init__(
        self,
        store: TemplateStore,
        refresh_s: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self.revision: int | None = None
        self.reloads = 0
        self._checked: float | None = None
        self._lock = asyncio.Lock()
        self._by_key: dict[tuple[str, str, str], list[TemplateSource]] = {}

    async def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self._checked is not None and now - self._checked < self.refresh_s:
            return
        async with self._lock:
            if not force and self._checked is not None and now - self._checked < self.refresh_s:
                return  # another task refreshed while this one waited
            try:
                revision = await self.store.revision()
                if revision == self.revision:
                    self._checked = now
                    return
                by_key: dict[tuple[str, str, str], list[TemplateSource]] = {}
                for row in await self.store.published():
                    by_key.setdefault((row.message_kind, row.channel, row.locale), []).append(
                        row.source()
                    )
            except Exception:
                if self.revision is None:
                    raise
                log.warning("template_refresh_failed", exc_info=True)
                self._checked = now
                return
            for versions in by_key.values():
                versions.sort(key=lambda v: -v.version)
            self._by_key = by_key
            self.revision = revision
            self.reloads += 1
            TEMPLATE_REVISION.set(revision)
            self._checked = now

    async def candidates(self, kind: str, channel: str, locale: str) -> list[TemplateSource]:
        """Published versions for the first locale of the fallback chain that has any,
        newest first (the caller falls back to older ones if the newest fails to render)."""
        await self.refresh()
        for tag in locale_chain(locale):
            versions = self._by_key.get((kind, channel, tag))
            if versions:
                return list(versions)
        return []

    async def latest_published(self, kind: str, channel: str, locale: str) -> TemplateSource | None:
        found = await self.candidates(kind, channel, locale)
        return found[0] if found else None

    async def last_good(
        self,
        kind: str,
        channel: str,
        locale: str,
        context: Mapping[str, Any],
        *,
        timezone: str,
        renderer: Renderer,
    ) -> GoodRender:
        """Render with the newest published version that renders; newer ones that fail
        (an error, a limit reached) are returned in `failures` (count and alert on
        them). RenderError when none renders, or no template exists for the key and
        its fallbacks."""
        candidates = await self.candidates(kind, channel, locale)
        if not candidates:
            raise RenderError(
                f"no published template for {kind}/{channel}/{locale} (nor its fallbacks)"
            )
        failures: list[tuple[TemplateSource, RenderError]] = []
        for template in candidates:
            try:
                rendered = await renderer.render(
                    template, context, locale=locale, timezone=timezone
                )
            except RenderError as exc:
                failures.append((template, exc))
                continue
            return GoodRender(template, rendered, failures)
        raise failures[0][1]
