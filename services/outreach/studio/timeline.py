"""One customer's timeline for the studio's conversation view, in plain functions: the
incidents we acted on, each decision with its reasons, the messages as sent, the
customer's replies with how they were read, the surveys they answered, the hand-offs
to a person and what the agent did — oldest first, each entry with the facts that
explain it.

What a person may see of it is decided here, once (`Sight`): why and when is for every
role; what a customer read is for those who see messages (editors check their templates
in it, support leads help with it); the customer's own words, the hand-offs' summaries
and full addresses only for those allowed personal data (support leads, admins). A
masked entry says that something is hidden and why, never a part of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from common.logs import mask_address
from services.outreach.domain.corrections import corrects


@dataclass(frozen=True)
class Sight:
    """What the person looking may see."""

    messages: bool  # the text of what we sent
    personal: bool  # the customer's words, summaries, full addresses


@dataclass(frozen=True)
class Entry:
    at: datetime
    kind: str  # incident | decision | message | reply | survey | handoff | outcome
    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None  # what was written, when the person may see it
    hidden: str | None = None  # why the text is not shown (masked, scrubbed)
    badge: str | None = None  # a status, an intent, an outcome
    ref: str = ""  # the decision, reply or hand-off id (an anchor in the page)


@dataclass(frozen=True)
class Summary:
    """The head of the page: the customer as the ledger knows them (no name: outreach
    keeps none)."""

    customer_id: str
    locale: str | None
    time_zone: str | None
    channels: list[str]
    messages: int
    replies: int
    handoffs: int
    open_handoffs: int
    last_survey: int | None


class DecisionLike(Protocol):
    decision_id: str
    customer_id: str
    order_id: str | None
    cause_type: str
    cause_id: str
    cause_kind: str
    intent: str
    message_kind: str
    severity: str
    status: str
    reason: str | None
    rule: str
    channel: str | None
    address: str | None
    locale: str | None
    time_zone: str | None
    decided_at: datetime
    sent_at: datetime | None
    template_key: str | None
    template_version: int | None
    subject: str | None
    body_text: str | None
    provider_message_id: str | None
    outbox: bool
    request: dict[str, Any]
    scrubbed: bool
    experiments: list[dict[str, Any]] | None


class ReplyLike(Protocol):
    reply_id: str
    channel: str
    received_at: datetime
    decision_id: str | None
    text: str | None
    command: str | None
    intent: str
    tone: str
    evidence: list[str]
    language: str
    classifier: str
    handoff_id: str | None
    survey_score: int | None
    scrubbed: bool


class HandoffLike(Protocol):
    handoff_id: str
    requested_at: datetime | None
    trigger: str | None
    order_ids: list[str]
    risk_score: float | None
    reasons: list[dict[str, Any]]
    summary: str | None
    summary_local: str | None
    locale: str | None
    incident: dict[str, Any] | None
    reply_id: str | None
    outcome: str | None
    agent: str | None
    ticket_id: str | None
    resolved_at: datetime | None
    scrubbed: bool


# At one moment: the incident before the decision before the message before the reply.
KINDS = ("incident", "decision", "message", "reply", "survey", "handoff", "outcome")
NOT_FOR_ROLE = "hidden for your role"
SCRUBBED = "removed (after the retention period or an erasure)"


def address(value: str | None, sight: Sight) -> str:
    if not value:
        return "—"
    return value if sight.personal else mask_address(value)


def evidence(words: Iterable[str], sight: Sight) -> list[str]:
    """The words that decided a reply's label: lexicon words for everyone; a quote of
    the customer (the shouted words) only for those who may read what they wrote."""
    shown = []
    for word in words:
        quoted, sep, _rest = word.partition(": ")
        shown.append(word if sight.personal or not sep else f"{quoted} (words hidden)")
    return shown


def _words(text: str | None, allowed: bool, scrubbed: bool) -> tuple[str | None, str | None]:
    """(text, why hidden) of something a person wrote."""
    if scrubbed and not text:
        return None, SCRUBBED
    if not text:
        return None, None
    return (text, None) if allowed else (None, NOT_FOR_ROLE)


def _reasons(request: Mapping[str, Any]) -> str:
    found = []
    for reason in request.get("reasons") or ():
        if isinstance(reason, Mapping):
            found.append(str(reason.get("detail") or reason.get("code") or ""))
        else:
            found.append(str(reason))
    return "; ".join(r for r in found if r)


def incident_entries(rows: Sequence[DecisionLike]) -> list[Entry]:
    """One entry per cause we acted on, when we first decided about it."""
    first: dict[tuple[str, str], DecisionLike] = {}
    for row in sorted(rows, key=lambda r: r.decided_at):
        first.setdefault((row.cause_type, row.cause_id), row)
    return [
        Entry(
            at=row.decided_at,
            kind="incident",
            title=f"{row.cause_kind.replace('_', ' ')} ({row.cause_type})",
            facts=[
                ("Order", row.order_id or "—"),
                ("Severity", row.severity),
                ("Id", row.cause_id),
            ],
            ref=f"{row.cause_type}-{row.cause_id}",
        )
        for row in first.values()
    ]


def arm_line(arm: dict[str, Any]) -> str:
    """`apology-effect (intent:apology): control, withheld`."""
    effect = {
        "withheld": "withheld",
        "without_remedy": "sent without its remedy",
        "protected": "protected: sent anyway",
        "not_reached": "not reached: another experiment withheld the message",
    }.get(str(arm.get("effect")), "")
    line = f"{arm.get('experiment')} ({arm.get('subject')}): {arm.get('arm')}"
    return line + (f", {effect}" if effect else "")


def remedy_line(remedy: Mapping[str, Any]) -> str:
    """`amount 10.00 EUR (cost 10.00): credit:20: … would exceed the budget; …`."""
    what = " ".join(str(remedy[k]) for k in ("kind", "value", "currency") if remedy.get(k))
    return f"{what or 'none'} (cost {remedy.get('cost')}): {remedy.get('why')}"


def decision_entries(
    row: DecisionLike,
    statuses: Iterable[str],
    sight: Sight,
    remedy: Mapping[str, Any] | None = None,
) -> list[Entry]:
    """The decision (why, to whom, by which rule) and, once sent, the message."""
    why = f"{row.cause_kind} → {row.intent}"
    facts = [
        ("Why", why + (f"; {_reasons(row.request)}" if _reasons(row.request) else "")),
        ("Decision", row.status + (f": {row.reason}" if row.reason else "")),
    ]
    if row.rule:
        facts.append(("Rule", row.rule))
    corrected = corrects(row.request)
    if corrected:
        facts.append(("Corrects", corrected))
    if row.experiments:
        facts.append(("Experiments", "; ".join(arm_line(a) for a in row.experiments)))
    if remedy is not None:  # what it offered and why (never the code: docs/remedies.md)
        facts.append(("Remedy", remedy_line(remedy)))
    facts.append(("Channel", f"{row.channel or '—'} {address(row.address, sight)}".strip()))
    if row.template_key:
        version = f" v{row.template_version}" if row.template_version else ""
        facts.append(("Template", row.template_key + version))
    path = " → ".join(dict.fromkeys(statuses))
    if path:
        facts.append(("Steps", path))
    entries = [
        Entry(
            at=row.decided_at,
            kind="decision",
            title=f"{row.message_kind.replace('_', ' ')} ({row.intent})",
            facts=facts,
            badge=row.status,
            ref=row.decision_id,
        )
    ]
    if row.sent_at is not None:
        body = (row.subject + "\n\n" if row.subject else "") + (row.body_text or "")
        text, hidden = _words(body.strip() or None, sight.messages, row.scrubbed)
        sent = [("By", "outbox (not sent)" if row.outbox else row.channel or "—")]
        if row.provider_message_id:
            sent.append(("Provider id", row.provider_message_id))
        entries.append(
            Entry(
                at=row.sent_at,
                kind="message",
                title=f"We wrote: {row.message_kind.replace('_', ' ')}",
                facts=sent,
                text=text,
                hidden=hidden,
                ref=f"sent-{row.decision_id}",
            )
        )
    return entries


def reply_entry(reply: ReplyLike, sight: Sight) -> Entry:
    text, hidden = _words(reply.text, sight.personal, reply.scrubbed)
    survey = reply.survey_score is not None
    facts = [
        ("Channel", reply.channel),
        ("Read as", f"{reply.intent}, {reply.tone}"),
        ("Because of", ", ".join(evidence(reply.evidence, sight)) or "—"),
        ("Classifier", reply.classifier),
        ("Language", reply.language),
    ]
    if reply.command:
        facts.append(("Command", reply.command.upper()))
    if reply.decision_id:
        facts.append(("Answers", reply.decision_id))
    if reply.handoff_id:
        facts.append(("Handed off", reply.handoff_id))
    return Entry(
        at=reply.received_at,
        kind="survey" if survey else "reply",
        title=f"Survey answer: {reply.survey_score} of 5" if survey else "The customer wrote",
        facts=facts,
        text=text,
        hidden=hidden,
        badge=reply.intent if not survey else f"{reply.survey_score}/5",
        ref=reply.reply_id,
    )


def handoff_entries(handoff: HandoffLike, sight: Sight) -> list[Entry]:
    entries: list[Entry] = []
    if handoff.requested_at is not None:
        facts = [("Trigger", handoff.trigger or "—")]
        reasons = "; ".join(
            ", ".join(evidence(str(r.get("detail") or r.get("code") or "").split(", "), sight))
            for r in handoff.reasons or ()
        )
        if reasons:
            facts.append(("Why", reasons))
        if handoff.risk_score is not None:
            facts.append(("Churn risk", f"{handoff.risk_score:.2f}"))
        if handoff.incident:
            facts.append(
                ("Incident", f"{handoff.incident.get('kind')} {handoff.incident.get('id')}")
            )
        if handoff.order_ids:
            facts.append(("Orders", ", ".join(handoff.order_ids)))
        if handoff.reply_id:
            facts.append(("Reply", handoff.reply_id))
        summaries = "\n\n".join(s for s in (handoff.summary_local, handoff.summary) if s) or None
        text, hidden = _words(summaries, sight.personal, handoff.scrubbed)
        entries.append(
            Entry(
                at=handoff.requested_at,
                kind="handoff",
                title="Handed to a person",
                facts=facts,
                text=text,
                hidden=hidden,
                badge=handoff.outcome or "waiting",
                ref=handoff.handoff_id,
            )
        )
    if handoff.outcome is not None and handoff.resolved_at is not None:
        facts = [("Hand-off", handoff.handoff_id), ("Agent", handoff.agent or "—")]
        if handoff.ticket_id:
            facts.append(("Ticket", handoff.ticket_id))
        entries.append(
            Entry(
                at=handoff.resolved_at,
                kind="outcome",
                title=f"The agent's outcome: {handoff.outcome.replace('_', ' ')}",
                facts=facts,
                badge=handoff.outcome,
                ref=f"outcome-{handoff.handoff_id}",
            )
        )
    return entries


def timeline(
    decisions: Sequence[tuple[DecisionLike, Sequence[str]]],
    replies: Sequence[ReplyLike],
    handoffs: Sequence[HandoffLike],
    sight: Sight,
    remedies: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Entry]:
    """Every entry, oldest first (at the same moment: the incident before the decision
    before the message before the reply); `remedies` by decision id."""
    entries = incident_entries([row for row, _ in decisions])
    for row, statuses in decisions:
        entries += decision_entries(row, statuses, sight, (remedies or {}).get(row.decision_id))
    entries += [reply_entry(r, sight) for r in replies]
    for handoff in handoffs:
        entries += handoff_entries(handoff, sight)
    return sorted(entries, key=lambda e: (e.at, KINDS.index(e.kind)))


def summary(
    customer_id: str,
    decisions: Sequence[DecisionLike],
    replies: Sequence[ReplyLike],
    handoffs: Sequence[HandoffLike],
) -> Summary:
    latest = max(decisions, key=lambda r: r.decided_at, default=None)
    scores = [r for r in replies if r.survey_score is not None]
    return Summary(
        customer_id=customer_id,
        locale=latest.locale if latest else None,
        time_zone=latest.time_zone if latest else None,
        channels=sorted({r.channel for r in decisions if r.channel} | {r.channel for r in replies}),
        messages=sum(1 for r in decisions if r.sent_at is not None),
        replies=sum(1 for r in replies if r.survey_score is None),
        handoffs=len(handoffs),
        open_handoffs=sum(1 for h in handoffs if h.outcome in (None, "escalated")),
        last_survey=max(scores, key=lambda r: r.received_at).survey_score if scores else None,
    )


__all__ = ["Entry", "Sight", "Summary", "summary", "timeline"]
