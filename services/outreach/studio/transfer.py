"""Templates in and out of the store as one reviewable JSON document.

Export writes the version that serves for every template key (and, with `drafts`, the
newest draft above it), sorted, one object per key, so two exports diff cleanly in a
code review or between a staging and a production studio.

Import never overwrites history: each changed entry becomes a new draft by the named
author and, with `publish`, is published after the same checks the studio's Publish
button runs (sandbox, known variables, renders for every sample case). An entry whose
text equals what already serves is left alone, so importing the same file twice
changes nothing. Every draft and publish is written to the studio's audit log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.outreach.adapters.templates import PublishRejected, TemplateStore, TemplateVersion
from services.outreach.domain.rendering import CHANNELS, MESSAGE_KINDS
from services.outreach.domain.samples import sample_contexts
from services.outreach.studio.accounts import Accounts

FORMAT = "proactive-outreach/templates"
FORMAT_VERSION = 1
FIELDS = ("subject", "html", "text")


class TransferError(ValueError):
    """The document is not a template export this version understands."""


@dataclass
class ImportReport:
    unchanged: list[str] = field(default_factory=list)
    drafted: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    rejected: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.rejected


def key_of(kind: str, channel: str, locale: str) -> str:
    return f"{kind}/{channel}/{locale}"


def _entry(row: TemplateVersion) -> dict[str, Any]:
    return {
        "message_kind": row.message_kind,
        "channel": row.channel,
        "locale": row.locale,
        "status": row.status,
        "version": row.version,
        "author": row.author,
        "subject": row.subject,
        "html": row.html,
        "text": row.text,
    }


def export_document(rows: Iterable[TemplateVersion], *, drafts: bool = False) -> dict[str, Any]:
    """The serving version of every key (the newest published), plus the newest draft
    above it when `drafts`."""
    by_key: dict[tuple[str, str, str], list[TemplateVersion]] = {}
    for row in rows:
        by_key.setdefault((row.message_kind, row.channel, row.locale), []).append(row)
    entries = []
    for key in sorted(by_key):
        versions = sorted(by_key[key], key=lambda r: r.version)
        serving = [r for r in versions if r.status == "published"]
        if serving:
            entries.append(_entry(serving[-1]))
        newer = [r for r in versions if r.status == "draft"]
        if drafts and newer and (not serving or newer[-1].version > serving[-1].version):
            entries.append(_entry(newer[-1]))
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "templates": entries}


def parse_document(raw: str) -> list[dict[str, Any]]:
    """The entries of an export, checked: every problem is reported with its entry."""
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TransferError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TransferError(f'not a template export (expected "format": "{FORMAT}")')
    if doc.get("format_version") != FORMAT_VERSION:
        raise TransferError(f"format_version {doc.get('format_version')!r} is not supported")
    entries = doc.get("templates")
    if not isinstance(entries, list):
        raise TransferError('"templates" must be a list')
    problems = []
    for i, entry in enumerate(entries):
        where = f"templates[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not an object")
            continue
        kind, channel, locale = (entry.get(k) for k in ("message_kind", "channel", "locale"))
        if kind not in MESSAGE_KINDS:
            problems.append(f"{where}: unknown message_kind {kind!r}")
        if channel not in CHANNELS:
            problems.append(f"{where}: unknown channel {channel!r}")
        if not isinstance(locale, str) or not locale:
            problems.append(f"{where}: locale missing")
        if not isinstance(entry.get("text"), str) or not entry["text"].strip():
            problems.append(f"{where}: text missing")
        if channel == "email" and not (entry.get("subject") and entry.get("html")):
            problems.append(f"{where}: an email needs a subject and an HTML part")
    if problems:
        raise TransferError("; ".join(problems))
    return entries


def _same(row: TemplateVersion | None, entry: Mapping[str, Any]) -> bool:
    if row is None:
        return False
    fields = FIELDS if row.channel == "email" else ("text",)
    return all((getattr(row, f) or None) == (entry.get(f) or None) for f in fields)


async def import_document(
    store: TemplateStore,
    accounts: Accounts,
    entries: list[dict[str, Any]],
    *,
    author: str,
    publish: bool,
    message: str,
    dry_run: bool = False,
) -> ImportReport:
    report = ImportReport()
    for entry in entries:
        kind, channel, locale = entry["message_kind"], entry["channel"], entry["locale"]
        key = key_of(kind, channel, locale)
        versions = await store.versions(kind, channel, locale)
        serving = next((v for v in reversed(versions) if v.status == "published"), None)
        if _same(serving, entry):
            report.unchanged.append(key)
            continue
        if dry_run:
            (report.published if publish else report.drafted).append(key)
            continue
        row = await store.save_draft(
            kind,
            channel,
            locale,
            subject=entry.get("subject"),
            html=entry.get("html"),
            text=entry["text"],
            author=author,
            record=accounts.recorder(author, "draft_imported"),
        )
        if not publish:
            report.drafted.append(key)
            continue
        try:
            await store.publish(
                row.id,
                author=author,
                message=message,
                samples=sample_contexts(kind),
                record=accounts.recorder(author, "published", message=message, imported=True),
            )
        except PublishRejected as exc:
            report.rejected[key] = [
                f"{p.part} line {p.line}: {p.message}" if p.line else f"{p.part}: {p.message}"
                for p in exc.problems
            ]
            continue
        report.published.append(key)
    return report
