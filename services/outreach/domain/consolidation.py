"""Consolidation: at most one message per customer per moment. Messages about incidents
that leave for one customer at the same moment — released together by quiet hours or a
resume, or gathered for `OUTREACH_CONSOLIDATE_S` after the first was decided — become one
message: the most urgent of them carries the others, naming each of their orders
(`also` in its template context); the others end as `consolidated`. Pure:
docs/consolidation.md.

Only incident messages (apologies and status updates) merge; a check-in, a correction,
a returns message or a marketing message goes on its own. Messages merge only with
those that go by the same channel in the same category (service, marketing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
INTENT_RANK = {"apology": 0, "status_update": 1}
MERGING_INTENTS = frozenset(INTENT_RANK)


@dataclass(frozen=True)
class Pending:
    """A message about to leave, as the ledger has it."""

    decision_id: str
    customer_id: str
    category: str
    channel: str | None
    cause_type: str
    cause_kind: str
    order_id: str | None
    severity: str
    intent: str
    decided_at: datetime


@dataclass(frozen=True)
class Merge:
    """One message for several: `carrier` goes, naming `merged` (oldest first)."""

    carrier: Pending
    merged: tuple[Pending, ...]


def merges(p: Pending) -> bool:
    return p.cause_type == "incident" and p.intent in MERGING_INTENTS and p.channel is not None


def _rank(p: Pending) -> tuple[int, int, datetime, str]:
    return (SEVERITY_RANK.get(p.severity, 3), INTENT_RANK.get(p.intent, 2), p.decided_at,
            p.decision_id)  # fmt: skip


def plan(pending: Iterable[Pending]) -> list[Merge]:
    """The merges among `pending` (messages that would otherwise leave together): per
    customer, category and channel, the most urgent carries the rest — critical before
    warning before info, an apology before a status update, then the earliest decided."""
    groups: dict[tuple[str, str, str | None], list[Pending]] = {}
    for p in pending:
        if merges(p):
            groups.setdefault((p.customer_id, p.category, p.channel), []).append(p)
    out = []
    for group in groups.values():
        if len(group) < 2:
            continue
        carrier = min(group, key=_rank)
        rest = sorted(
            (p for p in group if p is not carrier), key=lambda p: (p.decided_at, p.decision_id)
        )
        out.append(Merge(carrier, tuple(rest)))
    return out


def also_items(
    merged: Sequence[Pending], before: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """What the carrier's request keeps of the messages it carries (`context.also`),
    added to what it and they carried before (`before`): their order, incident kind and
    decision, each once."""
    items: list[dict[str, Any]] = []
    seen: set[Any] = set()
    new = [{"order_id": p.order_id, "kind": p.cause_kind, "decision_id": p.decision_id}
           for p in merged]  # fmt: skip
    for item in (*before, *new):
        if item.get("decision_id") not in seen:
            seen.add(item.get("decision_id"))
            items.append(dict(item))
    return items


def carried(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """What a message's request names besides its own incident (`context.also`)."""
    return list((request.get("context") or {}).get("also") or ())


# One line per carried incident, in the customer's language (the template shows them
# under [_layout] also_intro, or after also_sms in an SMS).
LINES = {
    "en": {
        "dispatch_late": "order {order} is leaving our warehouse late",
        "delivery_at_risk": "order {order} may arrive later than promised",
        "delivery_late": "order {order} is running late",
        "shipment_stalled": "a parcel of order {order} has not moved for a while",
        "delivery_failed": "a delivery attempt for order {order} failed",
        "awaiting_pickup": "order {order} is waiting for you at a pickup point",
        "carrier_exception": "the carrier reported a problem with order {order}",
        "returned_to_sender": "a parcel of order {order} is on its way back to us",
        "refund_late": "the refund for order {order} is taking longer than it should",
        "other": "there is news about order {order}",
    },
    "de": {
        "dispatch_late": "Bestellung {order} verlässt unser Lager verspätet",
        "delivery_at_risk": "Bestellung {order} kommt womöglich später als versprochen",
        "delivery_late": "Bestellung {order} ist verspätet",
        "shipment_stalled": "ein Paket der Bestellung {order} bewegt sich seit einiger Zeit nicht",
        "delivery_failed": "ein Zustellversuch für Bestellung {order} ist gescheitert",
        "awaiting_pickup": "Bestellung {order} wartet an einer Abholstelle auf Sie",
        "carrier_exception": "der Versanddienstleister meldet ein Problem mit Bestellung {order}",
        "returned_to_sender": "ein Paket der Bestellung {order} ist auf dem Rückweg zu uns",
        "refund_late": "die Erstattung für Bestellung {order} dauert länger als sie sollte",
        "other": "es gibt Neuigkeiten zu Bestellung {order}",
    },
    "fr": {
        "dispatch_late": "la commande {order} quitte notre entrepôt en retard",
        "delivery_at_risk": "la commande {order} pourrait arriver plus tard que prévu",
        "delivery_late": "la commande {order} est en retard",
        "shipment_stalled": "un colis de la commande {order} n'a pas bougé depuis un moment",
        "delivery_failed": "une tentative de livraison de la commande {order} a échoué",
        "awaiting_pickup": "la commande {order} vous attend dans un point de retrait",
        "carrier_exception": "le transporteur signale un problème avec la commande {order}",
        "returned_to_sender": "un colis de la commande {order} nous est renvoyé",
        "refund_late": "le remboursement de la commande {order} prend plus de temps que prévu",
        "other": "il y a du nouveau concernant la commande {order}",
    },
}


def line(kind: str, order_id: str | None, locale: str) -> str:
    """The line naming one carried incident, in `locale`'s language (English when not
    shipped)."""
    lines = LINES.get(locale.split("-")[0].lower(), LINES["en"])
    return lines.get(kind, lines["other"]).format(order=order_id or "-")


__all__ = ["LINES", "Merge", "Pending", "also_items", "carried", "line", "merges", "plan"]
