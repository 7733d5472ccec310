"""A hand-off as the agent's ticket, and the agent's ticket as an outcome: what the
helpdesk adapter (services/outreach/helpdesk) writes to the helpdesk and reads back.
Pure; the helpdesk itself (Zendesk) is behind adapters/zendesk.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.schemas import HandoffRequested

Outcome = Literal["solved", "no_contact", "escalated"]
#: Tags an agent sets on the ticket to say what became of the case.
NO_CONTACT_TAG = "outreach_no_contact"
ESCALATED_TAG = "outreach_escalated"
PRIORITY = {"reply": "high", "risk_score": "normal"}


@dataclass(frozen=True)
class TicketDraft:
    external_id: str  # the case: customer and hand-off (`external_id_for`)
    subject: str
    body: str  # an internal note for the agent
    tags: tuple[str, ...]
    priority: str


def external_id_for(customer_id: str, handoff_id: str) -> str:
    """The ticket's external id: the case it is, read back from the agent's outcome."""
    return f"outreach/{customer_id}/{handoff_id}"


def case_of(external_id: str) -> tuple[str, str] | None:
    """(customer id, hand-off id) of a ticket's external id, or None when it is not one
    of ours."""
    if not external_id.startswith("outreach/"):
        return None
    customer_id, _, handoff_id = external_id.removeprefix("outreach/").rpartition("/")
    return (customer_id, handoff_id) if customer_id and handoff_id else None


def reply_tag(reply_id: str) -> str:
    """The tag that says a reply is on the ticket already (a redelivered hand-off adds
    no second note)."""
    return "outreach_reply_" + reply_id.replace("-", "")[:20]


def ticket_for(handoff: HandoffRequested) -> TicketDraft:
    """The ticket of a new case: the summaries first, then why, then the conversation."""
    lines = [handoff.summary]
    if handoff.summary_local and handoff.summary_local != handoff.summary:
        lines += ["", f"[{handoff.locale}] {handoff.summary_local}"]
    lines += ["", f"Customer: {handoff.customer_id}"]
    if handoff.order_ids:
        lines.append("Orders: " + ", ".join(handoff.order_ids))
    if handoff.incident is not None:
        lines.append(f"Incident: {handoff.incident.kind} ({handoff.incident.id})")
    if handoff.risk_score is not None:
        lines.append(f"Churn risk: {handoff.risk_score:.0f}/100")
    if handoff.reasons:
        lines.append("Why: " + "; ".join(r.detail or r.code for r in handoff.reasons))
    lines += ["", *transcript(handoff)]
    kind = handoff.reply.intent if handoff.reply is not None else "churn risk"
    tags = ["outreach", f"outreach_{handoff.trigger}"]
    if handoff.reply is not None:
        tags += [f"outreach_{handoff.reply.intent}", reply_tag(handoff.reply.reply_id)]
    return TicketDraft(
        external_id=external_id_for(handoff.customer_id, handoff.handoff_id),
        subject=f"[{kind}] customer {handoff.customer_id}"
        + (f", order {handoff.order_ids[0]}" if handoff.order_ids else ""),
        body="\n".join(lines).strip(),
        tags=tuple(tags),
        priority=PRIORITY.get(handoff.trigger, "normal"),
    )


def transcript(handoff: HandoffRequested) -> list[str]:
    """The conversation so far, oldest first, one block per message or reply."""
    out: list[str] = []
    for turn in handoff.conversation:
        who = "We" if turn.direction == "out" else "Customer"
        label = turn.kind + (f", {turn.tone}" if turn.tone else "")
        out += [f"--- {who}, {turn.at:%Y-%m-%d %H:%M} UTC, {turn.channel} ({label})", turn.text]
    return out


def note_for(handoff: HandoffRequested) -> str:
    """The note a later reply to the same case adds to its ticket."""
    latest = [t for t in handoff.conversation if t.direction == "in"][-1:]
    lines = [handoff.summary]
    for turn in latest:
        lines += ["", f"--- Customer, {turn.at:%Y-%m-%d %H:%M} UTC, {turn.channel}", turn.text]
    return "\n".join(lines)


def outcome_of(status: str, tags: list[str]) -> Outcome | None:
    """What the agent's ticket says became of the case: solved or closed (no contact,
    with its tag), escalated (its tag, while open), or nothing yet."""
    if status in ("solved", "closed"):
        return "no_contact" if NO_CONTACT_TAG in tags else "solved"
    return "escalated" if ESCALATED_TAG in tags else None
