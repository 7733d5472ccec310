"""What the studio shows, computed without I/O: the variables of a message kind, the
status of every template, the preview of a draft and the side-by-side diff of two
versions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from services.outreach.adapters.render_pool import Renderer
from services.outreach.domain.rendering import (
    CHANNELS,
    CONTEXT_FIELDS,
    ITEM_FIELDS,
    MARKETING_KINDS,
    MESSAGE_KINDS,
    Problem,
    RenderError,
    TemplateSource,
)
from services.outreach.domain.samples import sample_contexts

# --- the variables a template may use ----------------------------------------------------


@dataclass(frozen=True)
class Variable:
    name: str  # as written in a template: customer.first_name
    type: str  # text | number | date-time | list | ...
    example: str  # from the first sample case that has it


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "yes/no"
    if isinstance(value, datetime):
        return "date-time"
    if isinstance(value, date):
        return "date"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "group"
    return "text"


def _example(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return f"{len(value)} item(s)"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def variables_for(message_kind: str) -> list[Variable]:
    """Every variable and field of the template context contract, with its type and an
    example from the sample cases (fields that are empty in every case say so)."""
    cases = list(sample_contexts(message_kind).values())

    def first(path: Sequence[str]) -> Any:
        for case in cases:
            value: Any = case
            for step in path:
                value = value.get(step) if isinstance(value, Mapping) else None
            if value is not None:
                return value
        return None

    out: list[Variable] = []
    for name, fields in CONTEXT_FIELDS.items():
        if fields is None:
            value = first([name])
            out.append(Variable(name, _type_of(value) if value is not None else "text", _ex(value)))
            continue
        for field_name in sorted(fields):
            value = first([name, field_name])
            kind = _type_of(value) if value is not None else "text (may be empty)"
            out.append(Variable(f"{name}.{field_name}", kind, _ex(value)))
            if field_name == "items":
                for item_field in sorted(ITEM_FIELDS):
                    items = value or [{}]
                    item_value = items[0].get(item_field) if items else None
                    out.append(
                        Variable(
                            f"item.{item_field}  (in {{% for item in order.items %}})",
                            _type_of(item_value) if item_value is not None else "text",
                            _ex(item_value),
                        )
                    )
    return out


def _ex(value: Any) -> str:
    return "—" if value is None else _example(value)


# --- the status of every template -------------------------------------------------------

Status = Literal["published", "draft", "missing"]


@dataclass(frozen=True)
class VersionInfo:
    """What the list needs of one stored version."""

    message_kind: str
    channel: str
    locale: str
    version: int
    status: str  # draft | published | archived
    author: str
    at: datetime


@dataclass(frozen=True)
class TemplateRow:
    message_kind: str
    channel: str
    locale: str
    status: Status
    published_version: int | None
    latest_version: int | None
    has_newer_draft: bool
    editor: str | None
    at: datetime | None

    @property
    def key(self) -> str:
        return f"{self.message_kind}/{self.channel}/{self.locale}"


def template_rows(
    versions: Iterable[VersionInfo],
    *,
    kinds: Sequence[str] = MESSAGE_KINDS,
    channels: Sequence[str] = CHANNELS,
    locales: Sequence[str] = (),
) -> list[TemplateRow]:
    """Every kind × channel × locale, for every locale that any template has (plus
    `locales`): published (something serves), draft (only drafts), or missing — a
    missing translation is visible here, not discovered in production."""
    by_key: dict[tuple[str, str, str], list[VersionInfo]] = {}
    for v in versions:
        by_key.setdefault((v.message_kind, v.channel, v.locale), []).append(v)
    all_locales = sorted({k[2] for k in by_key} | set(locales), key=lambda t: (t != "en", t))
    all_kinds = list(kinds) + sorted({k[0] for k in by_key} - set(kinds))
    rows: list[TemplateRow] = []
    for kind in all_kinds:
        for channel in channels:
            for locale in all_locales:
                found = sorted(by_key.get((kind, channel, locale), []), key=lambda v: v.version)
                if not found:
                    rows.append(
                        TemplateRow(kind, channel, locale, "missing", None, None, False, None, None)
                    )
                    continue
                published = [v for v in found if v.status == "published"]
                latest = found[-1]
                serving = published[-1] if published else None
                rows.append(
                    TemplateRow(
                        kind,
                        channel,
                        locale,
                        "published" if serving else "draft",
                        serving.version if serving else None,
                        latest.version,
                        latest.status == "draft"
                        and (serving is None or latest.version > serving.version),
                        latest.author,
                        latest.at,
                    )
                )
    return rows


def filter_rows(
    rows: Iterable[TemplateRow],
    *,
    query: str = "",
    status: str = "",
    channel: str = "",
    locale: str = "",
) -> list[TemplateRow]:
    words = query.lower().split()
    out = []
    for row in rows:
        if status and row.status != status and not (status == "draft" and row.has_newer_draft):
            continue
        if channel and row.channel != channel:
            continue
        if locale and row.locale != locale:
            continue
        haystack = f"{row.message_kind} {row.channel} {row.locale} {row.editor or ''}".lower()
        if any(w not in haystack for w in words):
            continue
        out.append(row)
    return out


# --- preview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    sample: str
    samples: list[str]
    subject: str | None
    html: str | None
    text: str | None
    error: str | None
    error_part: str | None
    error_line: int | None
    encoding: str | None
    segments: int | None
    characters: int | None
    units: int | None
    per_segment: int | None
    problems: list[Problem]
    can_publish: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "sample": self.sample,
            "samples": self.samples,
            "subject": self.subject,
            "html": self.html,
            "text": self.text,
            "error": self.error,
            "error_part": self.error_part,
            "error_line": self.error_line,
            "sms": None
            if self.segments is None
            else {
                "encoding": self.encoding,
                "segments": self.segments,
                "characters": self.characters,
                "units": self.units,
                "per_segment": self.per_segment,
            },
            "problems": [
                {
                    "severity": p.severity,
                    "code": p.code,
                    "message": p.message,
                    "part": p.part,
                    "line": p.line,
                    "sample": p.sample,
                }
                for p in self.problems
            ],
            "can_publish": self.can_publish,
        }


async def preview(source: TemplateSource, sample: str | None, renderer: Renderer) -> Preview:
    """The draft rendered for one sample case, and every problem across all cases
    (publishing needs it to render for each of them) — both by `renderer`, so a draft
    that runs away costs a render process its time limit, never the studio."""
    cases = sample_contexts(source.message_kind)
    names = list(cases)
    chosen = sample if sample in cases else names[0]
    context = cases[chosen]
    zone = str((context.get("customer") or {}).get("timezone") or "UTC")
    problems = await renderer.validate(
        source, cases, marketing=source.message_kind in MARKETING_KINDS
    )
    try:
        rendered = await renderer.render(source, context, locale=source.locale, timezone=zone)
    except RenderError as exc:
        return Preview(
            chosen, names, None, None, None, exc.reason, exc.part or None, exc.line,
            None, None, None, None, None, problems, False,
        )  # fmt: skip
    seg = rendered.segments
    return Preview(
        chosen,
        names,
        rendered.subject,
        rendered.html,
        rendered.text,
        None,
        None,
        None,
        seg.encoding if seg else None,
        seg.segments if seg else None,
        seg.characters if seg else None,
        seg.units if seg else None,
        seg.per_segment if seg else None,
        problems,
        not any(p.severity == "error" for p in problems),
    )


# --- diff --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffRow:
    tag: Literal["equal", "delete", "insert", "replace"]
    left_no: int | None
    left: str
    right_no: int | None
    right: str


def side_by_side(old: str, new: str) -> list[DiffRow]:
    """Line-by-line diff of two texts, aligned for a two-column view."""
    a, b = old.splitlines(), new.splitlines()
    rows: list[DiffRow] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            rows.extend(
                DiffRow("equal", i1 + k + 1, a[i1 + k], j1 + k + 1, b[j1 + k])
                for k in range(i2 - i1)
            )
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            left = i1 + k < i2
            right = j1 + k < j2
            rows.append(
                DiffRow(
                    "replace" if left and right else ("delete" if left else "insert"),
                    i1 + k + 1 if left else None,
                    a[i1 + k] if left else "",
                    j1 + k + 1 if right else None,
                    b[j1 + k] if right else "",
                )
            )
    return rows


def version_parts(subject: str | None, html: str | None, text: str) -> dict[str, str]:
    parts = {"text": text}
    if subject is not None:
        parts = {"subject": subject, "html": html or "", "text": text}
    return parts
