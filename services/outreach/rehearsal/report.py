"""What a rehearsal reports (docs/rehearsal.md): whom the rehearsed pipeline would have
reached — customers per intent, channel and language —, what it would have held back
and why, the storms it saw, how that differs from what was really sent in the same
period, and one rendered sample per message kind and language. Pure: built from the
rehearsal's ledger rows and the live ledger's."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

# A decision that reaches the customer: sent, or on its way (scheduled to leave, in the
# provider's hands) — on both sides of the comparison.
REACHING = frozenset({"decided", "scheduled", "sending", "in_doubt", "sent", "delivered"})
SAMPLE_TEXT = 600  # characters of a sample's text in the report
SHOWN_IDS = 10  # customer ids named per side of the difference
FIRST_NAME = "[first name]"


@dataclass(frozen=True)
class Decision:
    """A ledger row, as the report needs it."""

    customer_id: str
    intent: str
    message_kind: str
    channel: str | None
    locale: str | None
    status: str
    reason: str | None
    decided_at: datetime
    subject: str | None = None
    body_text: str | None = None
    first_name: str = ""


@dataclass(frozen=True)
class StormLine:
    scope: str
    size: int
    state: str
    started_at: datetime


@dataclass(frozen=True)
class Segment:
    intent: str
    channel: str
    locale: str
    customers: int
    messages: int


@dataclass(frozen=True)
class Sample:
    message_kind: str
    locale: str
    channel: str
    subject: str | None
    text: str


@dataclass(frozen=True)
class Difference:
    """The rehearsal against what was really sent: customers per intent on each side,
    and who is reached on one side only."""

    rehearsed: dict[str, int]
    live: dict[str, int]
    only_rehearsed: int
    only_live: int
    only_rehearsed_ids: list[str]
    only_live_ids: list[str]


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    customers_reached: int
    messages: int
    segments: list[Segment]
    suppressed: dict[str, int]
    failed: dict[str, int]  # could not be sent (a template that does not render, …)
    storms: list[StormLine]
    samples: list[Sample]
    live: Difference | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _in(rows: Iterable[Decision], since: datetime, until: datetime) -> list[Decision]:
    return [d for d in rows if since <= d.decided_at <= until]


def segments(rows: Sequence[Decision]) -> list[Segment]:
    customers: dict[tuple[str, str, str], set[str]] = {}
    messages: Counter[tuple[str, str, str]] = Counter()
    for d in rows:
        key = (d.intent, d.channel or "-", (d.locale or "-").split("-")[0])
        customers.setdefault(key, set()).add(d.customer_id)
        messages[key] += 1
    found = [Segment(*key, len(customers[key]), messages[key]) for key in customers]
    return sorted(found, key=lambda s: (-s.customers, s.intent, s.channel, s.locale))


def samples(rows: Sequence[Decision]) -> list[Sample]:
    """The first rendered message per message kind and language, the customer's first
    name in it replaced (a report is kept and shown to editors: it names nobody)."""
    found: dict[tuple[str, str], Sample] = {}
    for d in sorted(rows, key=lambda d: (d.decided_at, d.customer_id)):
        key = (d.message_kind, (d.locale or "-").split("-")[0])
        if d.body_text and key not in found:
            text = (
                d.body_text if len(d.body_text) <= SAMPLE_TEXT else d.body_text[:SAMPLE_TEXT] + "…"
            )
            subject = d.subject
            if d.first_name.strip():
                name = re.compile(rf"\b{re.escape(d.first_name.strip())}\b")
                text = name.sub(FIRST_NAME, text)
                subject = name.sub(FIRST_NAME, subject) if subject else subject
            found[key] = Sample(*key, d.channel or "-", subject, text)
    return [found[k] for k in sorted(found)]


def difference(rehearsed: Sequence[Decision], live: Sequence[Decision]) -> Difference:
    def by_intent(rows: Iterable[Decision]) -> dict[str, int]:
        customers: dict[str, set[str]] = {}
        for d in rows:
            customers.setdefault(d.intent, set()).add(d.customer_id)
        return {intent: len(c) for intent, c in sorted(customers.items())}

    ours = {d.customer_id for d in rehearsed}
    theirs = {d.customer_id for d in live}
    return Difference(
        rehearsed=by_intent(rehearsed),
        live=by_intent(live),
        only_rehearsed=len(ours - theirs),
        only_live=len(theirs - ours),
        only_rehearsed_ids=sorted(ours - theirs)[:SHOWN_IDS],
        only_live_ids=sorted(theirs - ours)[:SHOWN_IDS],
    )


def build(
    rehearsed: Iterable[Decision],
    *,
    since: datetime,
    until: datetime,
    storms: Sequence[StormLine] = (),
    live: Iterable[Decision] | None = None,
    notes: Sequence[str] = (),
) -> Report:
    """The report of the decisions made in [since, until] (on the event clock: the
    moments of the input), against the live ones of the same period if given."""
    rows = _in(rehearsed, since, until)
    reaching = [d for d in rows if d.status in REACHING]
    suppressed = Counter(d.reason or "unknown" for d in rows if d.status == "suppressed")
    failed = Counter(d.reason or "unknown" for d in rows if d.status == "failed")
    return Report(
        since=since,
        until=until,
        customers_reached=len({d.customer_id for d in reaching}),
        messages=len(reaching),
        segments=segments(reaching),
        suppressed=dict(sorted(suppressed.items(), key=lambda kv: (-kv[1], kv[0]))),
        failed=dict(sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))),
        storms=[s for s in storms if since <= s.started_at <= until],
        samples=samples(reaching),
        live=None
        if live is None
        else difference(reaching, [d for d in _in(live, since, until) if d.status in REACHING]),
        notes=list(notes),
    )


def as_text(report: Report) -> str:
    """The report for people."""
    lines = [
        f"Rehearsal of {report.since:%Y-%m-%d %H:%M} – {report.until:%Y-%m-%d %H:%M} UTC",
        f"customers reached: {report.customers_reached} ({report.messages} messages)",
        "",
        "reached, by intent, channel and language:",
        *(
            f"  {s.intent:<14} {s.channel:<9} {s.locale:<4} {s.customers:>7} customers"
            f" {s.messages:>7} messages"
            for s in report.segments
        ),
        "held back, by reason:",
        *(f"  {reason:<24} {n:>7}" for reason, n in report.suppressed.items()),
        "failed, by reason:",
        *(f"  {reason:<24} {n:>7}" for reason, n in report.failed.items()),
        "storms:",
        *(f"  {s.scope:<40} {s.size:>6} incidents  {s.state}" for s in report.storms),
    ]
    if report.live is not None:
        live = report.live
        lines += [
            "against what was really sent or on its way (customers per intent, rehearsed / live):",
            *(
                f"  {intent:<14} {live.rehearsed.get(intent, 0):>7} / {live.live.get(intent, 0)}"
                for intent in sorted({*live.rehearsed, *live.live})
            ),
            f"  reached only in the rehearsal: {live.only_rehearsed}"
            + (f" (e.g. {', '.join(live.only_rehearsed_ids)})" if live.only_rehearsed_ids else ""),
            f"  reached only live: {live.only_live}"
            + (f" (e.g. {', '.join(live.only_live_ids)})" if live.only_live_ids else ""),
        ]
    lines.append("samples:")
    for sample in report.samples:
        lines += [f"  --- {sample.message_kind} · {sample.locale} · {sample.channel}"]
        if sample.subject:
            lines.append(f"  subject: {sample.subject}")
        lines += [f"  {line}" for line in sample.text.splitlines() if line.strip()]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


__all__ = ["Decision", "Difference", "Report", "Sample", "Segment", "StormLine", "as_text", "build"]
