"""Corrections: when an incident closes in a way that contradicts a message we already
sent — "your parcel may be lost" and then it is delivered; a delay and then later facts
show there was none — the customer gets one short, friendly correction on the channel
that carried the message (docs/corrections.md). Pure.

Which closings contradict what we said is a policy per incident kind
(`OUTREACH_CORRECTIONS`): a late parcel that is finally delivered needs none (the
apology stands), a "lost" one that turns up does. The correction is an outreach request
like any other — consent, opt-outs, quiet hours and the kill switch apply — except that
it goes by the corrected message's channel, is not held by the frequency cap or the
holdout (the message it corrects was counted, and reached the customer), and its
request id is derived from the corrected decision: one correction per message, however
often the incident's closing is delivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MESSAGE_KIND = "incident_corrected"
CAUSE_TYPE = "correction"
ANY = "*"
#: "the incident did not happen after all" — told about anything, it is worth a word;
#: a parcel reported lost, damaged or stuck that is delivered after all, too.
DEFAULT = "*:retracted,carrier_exception:delivered,shipment_stalled:delivered"


@dataclass(frozen=True)
class CorrectionPolicy:
    """The (incident kind, resolution) pairs that call for a correction; `*` stands for
    any kind."""

    pairs: frozenset[tuple[str, str]]

    @classmethod
    def parse(cls, spec: str) -> CorrectionPolicy:
        """`kind:resolution,...` (`*:retracted` for any kind); empty: no corrections."""
        pairs = set()
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            kind, sep, resolution = part.partition(":")
            if not sep or not kind.strip() or not resolution.strip():
                raise ValueError(f"a correction is kind:resolution, not {part!r}")
            pairs.add((kind.strip(), resolution.strip()))
        return cls(frozenset(pairs))

    def wants(self, kind: str, resolution: str | None) -> bool:
        if not resolution:
            return False
        return (kind, resolution) in self.pairs or (ANY, resolution) in self.pairs


@dataclass(frozen=True)
class Told:
    """The message a correction corrects, as the ledger has it."""

    decision_id: str  # the decision about the incident (a correction is one per decision)
    customer_id: str
    order_id: str | None
    cause_id: str
    cause_kind: str
    channel: str
    sent_at: datetime
    request: Mapping[str, Any]  # that decision's request (its order and incident)
    # The message that reached the customer: the decision's own, or the one that named
    # it among others (domain/consolidation.py).
    message_id: str = ""


def request_id_for(decision_id: str) -> str:
    return f"correction-{decision_id}"


def cause_id_for(incident_id: str) -> str:
    """A correction's own cause: the incident is closed (its cause is resolved), the
    correction of it is not."""
    return f"{incident_id}:corrected"


def to_correct(told: Iterable[Told]) -> Told | None:
    """Of the messages that told the customer about one incident (its revisions), the
    one a correction answers: the latest."""
    return max(told, key=lambda t: t.sent_at, default=None)


def correction_request(told: Told, resolution: str, resolved_at: datetime) -> dict[str, Any]:
    """The `outreach.request.created` data of the correction of `told`
    (common.schemas.OutreachRequest): the corrected message's context (its order and
    incident) with what changed."""
    # The order and incident it was about; not what that message carried or asked.
    context = {
        k: v
        for k, v in (told.request.get("context") or {}).items()
        if k not in ("also", "carried_by", "survey", "correction")
    }
    context["correction"] = {
        "kind": told.cause_kind,
        "resolution": resolution,
        "told_at": told.sent_at.isoformat(),
        "decision_id": told.message_id or told.decision_id,
        "channel": told.channel,
    }
    return {
        "request_id": request_id_for(told.decision_id),
        "customer_id": told.customer_id,
        "order_id": told.order_id,
        "intent": "status_update",
        "message_kind": MESSAGE_KIND,
        "cause": {"type": CAUSE_TYPE, "id": cause_id_for(told.cause_id), "kind": told.cause_kind},
        "severity": "info",
        "reasons": [
            {
                "code": f"correction_{resolution}",
                "detail": f"{told.cause_kind} closed as {resolution} after we wrote",
            }
        ],
        "context": context,
        "requested_at": resolved_at.isoformat(),
    }


def corrects(request: Mapping[str, Any]) -> str | None:
    """The decision id of the message a request corrects (None: not a correction)."""
    found = (request.get("context") or {}).get("correction")
    return (
        str(found["decision_id"])
        if isinstance(found, Mapping) and found.get("decision_id")
        else None
    )


def channel_of(context: Mapping[str, Any]) -> str | None:
    """The channel a correction must go by, from its request's context (None: the request
    is not a correction)."""
    found = context.get("correction")
    if not isinstance(found, Mapping):
        return None
    channel = found.get("channel")
    return str(channel) if channel else None


__all__ = [
    "CAUSE_TYPE",
    "DEFAULT",
    "MESSAGE_KIND",
    "CorrectionPolicy",
    "Told",
    "cause_id_for",
    "channel_of",
    "correction_request",
    "corrects",
    "request_id_for",
    "to_correct",
]
