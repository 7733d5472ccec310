"""One rehearsal (docs/rehearsal.md): the shop's retained input — read from the broker,
or from an archive — replayed in an isolated namespace (namespace.py) with the rules and
templates to try, until it is at rest; then the report (report.py) of what it decided
in the period, against what the live ledger says was sent.

The live database is only read: its templates (to rehearse with them, drafts
published in the rehearsal's copy if asked) and its decisions of the period."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Delivery
from services.outreach.adapters.remedies import RemedyPolicyVersion
from services.outreach.adapters.storms import StormRow
from services.outreach.adapters.templates import TemplateVersion
from services.outreach.rehearsal import archive, report
from services.outreach.rehearsal.namespace import Namespace

#: What a replay decided: the rehearsal ledger's decisions and storms, and its notes.
Replayed = tuple[list[report.Decision], list[report.StormLine], list[str]]
#: A way to replay: the records, the options, the rehearsal's database (its templates
#: and remedy policy copied in) → what it decided.
Replayer = Callable[[list[archive.Record], "Options", str], Replayed]


@dataclass
class Options:
    bootstrap: str
    since: datetime
    until: datetime
    work: Path
    prefix: str = ""  # the live topics' prefix (read only)
    archive: Path | None = None  # replay this archive instead of the live topics
    rules: dict[str, str] = field(default_factory=dict)
    drafts: str = "none"  # none | all (every key's newest draft) | a version id
    live_database_url: str | None = None
    quiet_s: float = 5.0
    timeout_s: float = 1800.0
    keep_topics: bool = False
    partitions: int = 4  # of each of its topics
    progress: Callable[[str], None] = field(default=lambda _: None)  # what it is doing now
    # How to replay: through the four services on the broker (`through_services`), or
    # another way that decides alike (the in-process engine, replay/).
    replayer: Replayer | None = None


def rehearse(options: Options) -> report.Report:
    """Reads the input, replays it, reports against the live ledger."""
    started, say = time.monotonic(), options.progress
    options.work = options.work.resolve()
    until_ms = int(options.until.timestamp() * 1000)
    if options.archive is not None:
        records = [r for r in archive.read(options.archive) if r.timestamp_ms <= until_ms]
        records = archive.in_story_order(records)
    else:
        records = archive.read_broker(options.bootstrap, options.prefix, until_ms)
    say(f"{len(records)} input records read in {time.monotonic() - started:.1f} s")
    (options.work / "outreach").mkdir(parents=True, exist_ok=True)
    rehearsal_db = f"sqlite:///{(options.work / 'outreach' / 'outreach.db').resolve()}"
    notes = []
    if options.live_database_url:
        copied = asyncio.run(
            copy_templates(options.live_database_url, rehearsal_db, options.drafts)
        )
        notes.append(f"templates: {copied} versions of the live studio ({options.drafts} drafts)")
    rehearsed, storms, more = (options.replayer or through_services)(records, options, rehearsal_db)
    notes += more
    live = None
    if options.live_database_url:
        live = asyncio.run(decisions(options.live_database_url, options.since, options.until))
    seconds = time.monotonic() - started
    notes.append(f"{len(records)} input records replayed in {seconds:.1f} s")
    live_rules = Namespace.live_rules()
    if live_rules:
        notes.append("live rules: " + ", ".join(f"{k}={v}" for k, v in sorted(live_rules.items())))
    if options.rules:
        notes.append(
            "rules tried: " + ", ".join(f"{k}={v}" for k, v in sorted(options.rules.items()))
        )
    return report.build(
        rehearsed, since=options.since, until=options.until, storms=storms, live=live, notes=notes
    )


def through_services(records: list[archive.Record], options: Options, db: str) -> Replayed:
    """The four services as processes on the event clock, in a namespace of their own
    on the broker (namespace.py), until the pipeline is at rest."""
    started, say = time.monotonic(), options.progress
    namespace = Namespace(options.bootstrap, options.work, options.rules)
    try:
        namespace.create_topics(options.partitions)
        published = archive.publish(options.bootstrap, namespace.prefix, records)
        say(f"{published} records published after {time.monotonic() - started:.1f} s")
        namespace.start()
        say(f"namespace {namespace.prefix} up after {time.monotonic() - started:.1f} s")
        namespace.at_rest(options.quiet_s, options.timeout_s)
        say(f"at rest after {time.monotonic() - started:.1f} s")
    finally:
        namespace.stop(delete_topics=not options.keep_topics)
    rehearsed, storms = asyncio.run(read_rehearsal(db))
    return rehearsed, storms, ["replayed through the four services on the broker"]


async def decisions(
    url: str, since: datetime | None = None, until: datetime | None = None
) -> list[report.Decision]:
    """The decisions of a ledger (read only), of the period if given."""
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s:
            rows = await s.execute(
                select(
                    Delivery.customer_id,
                    Delivery.intent,
                    Delivery.message_kind,
                    Delivery.channel,
                    Delivery.locale,
                    Delivery.status,
                    Delivery.reason,
                    Delivery.decided_at,
                    Delivery.subject,
                    Delivery.body_text,
                    Delivery.request,
                ).where(
                    Delivery.decided_at >= (since or datetime.min.replace(tzinfo=UTC)),
                    Delivery.decided_at <= (until or datetime.max.replace(tzinfo=UTC)),
                )
            )
            return [
                replace(
                    report.Decision(*row[:-1]),
                    first_name=str((row[-1] or {}).get("first_name") or ""),
                )
                for row in rows.all()
            ]
    finally:
        await engine.dispose()


async def read_rehearsal(url: str) -> tuple[list[report.Decision], list[report.StormLine]]:
    """The rehearsal's decisions and storms."""
    found = await decisions(url)
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s:
            rows = await s.execute(
                select(StormRow.scope, StormRow.size, StormRow.state, StormRow.started_at)
            )
            return found, [report.StormLine(*row) for row in rows.all()]
    finally:
        await engine.dispose()


async def copy_templates(live_url: str, rehearsal_url: str, drafts: str) -> int:
    """The live studio's template versions (and the remedy policy's) into the rehearsal's
    (new) database; with `drafts` "all", each key's newest draft newer than what is
    published is published there (the published one archived); with a version id, only
    that draft is."""
    live = create_engine(live_url)
    try:
        async with session_factory(live)() as s:
            versions = list((await s.execute(select(TemplateVersion))).scalars())
            policies = list((await s.execute(select(RemedyPolicyVersion))).scalars())
            for row in (*versions, *policies):
                s.expunge(row)
    finally:
        await live.dispose()
    chosen = _drafts_to_publish(versions, drafts)
    target = create_engine(rehearsal_url)
    try:
        await create_schema(target)
        async with session_factory(target)() as s, s.begin():
            # The remedy policy as live has it (its budget starts the period unspent).
            s.add_all(
                RemedyPolicyVersion(**{c.key: getattr(p, c.key) for c in _POLICY_COLUMNS})
                for p in policies
            )
            for row in versions:
                status = "published" if row.id in chosen else row.status
                if row.status == "published" and _key(row) in {
                    _key(v) for v in versions if v.id in chosen
                }:
                    status = "archived"
                s.add(TemplateVersion(**_columns(row), status=status))
    finally:
        await target.dispose()
    return len(versions)


_POLICY_COLUMNS = tuple(RemedyPolicyVersion.__table__.columns)


def _key(row: TemplateVersion) -> tuple[str, str, str]:
    return (row.message_kind, row.channel, row.locale)


def _columns(row: TemplateVersion) -> dict[str, object]:
    skip = {"id", "status"}
    return {
        c.key: getattr(row, c.key) for c in TemplateVersion.__table__.columns if c.key not in skip
    }


def _drafts_to_publish(versions: list[TemplateVersion], drafts: str) -> set[int]:
    if drafts == "none":
        return set()
    if drafts != "all":
        wanted = int(drafts)
        if not any(v.id == wanted and v.status == "draft" for v in versions):
            raise ValueError(f"no draft template version {wanted}")
        return {wanted}
    newest: dict[tuple[str, str, str], TemplateVersion] = {}
    for v in versions:
        if v.status == "draft" and (_key(v) not in newest or v.version > newest[_key(v)].version):
            newest[_key(v)] = v
    published = {_key(v): v.version for v in versions if v.status == "published"}
    return {v.id for k, v in newest.items() if v.version > published.get(k, 0)}


__all__ = [
    "Options",
    "Replayed",
    "Replayer",
    "copy_templates",
    "decisions",
    "rehearse",
    "through_services",
]
