"""What our messages promise the shop will do, as requests for the shop's systems: a
message about a stalled parcel says "we have asked the carrier", so sending it asks —
`care.action.requested` on `outreach.actions` (docs/events.md). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from common.envelope import derived_id
from common.schemas import CareAction

#: The actions each message kind's shipped copy promises (services/outreach/templates):
#: a template that promises more must be backed here, or say less.
PROMISES: Mapping[str, tuple[CareAction, ...]] = {
    "dispatch_late": (CareAction.PRIORITY_DISPATCH,),  # "asked our warehouse to pack it"
    "delivery_late": (CareAction.CARRIER_INQUIRY,),  # "we are in touch with the carrier"
    "shipment_stalled": (CareAction.CARRIER_INQUIRY,),  # "we have asked them to find out"
    "carrier_exception": (CareAction.CARRIER_INQUIRY,),  # "we are in touch with the carrier"
    "refund_late": (CareAction.REFUND_ESCALATION,),  # "we have escalated your refund"
    "merchant_fault_return": (CareAction.QUALITY_REPORT,),  # "passed on to our quality team"
}


# A remedy the message carried (docs/remedies.md), for the shop's systems to honour: a
# code to accept once, a replacement to send by express, credit to book.
REMEDY_ACTIONS: Mapping[str, CareAction] = {
    "percent": CareAction.DISCOUNT_CODE,
    "amount": CareAction.DISCOUNT_CODE,
    "free_shipping": CareAction.DISCOUNT_CODE,
    "expedited_reship": CareAction.EXPEDITED_RESHIP,
    "credit": CareAction.STORE_CREDIT,
}


def requested(status: str, payload: Mapping[str, Any], at: datetime) -> list[dict[str, Any]]:
    """The actions a message's change requests (common.schemas.CareActionRequested
    data): those its kind promises, once it is sent (by a provider or to the outbox)."""
    # Sent; or delivered straight from sending or in doubt (a provider's report settled
    # the send: `taken`, so no `sent` event came before it).
    if status != "sent" and not (status == "delivered" and payload.get("taken")):
        return []
    kind = str(payload.get("message_kind", ""))
    decision_id = str(payload.get("decision_id", ""))
    remedy = payload.get("remedy")
    wanted: list[tuple[CareAction, Mapping[str, Any] | None]] = [
        (action, None) for action in PROMISES.get(kind, ())
    ]
    if isinstance(remedy, Mapping) and remedy.get("kind") in REMEDY_ACTIONS:
        wanted.append((REMEDY_ACTIONS[str(remedy["kind"])], remedy))
    return [
        {
            "action_id": derived_id("care-action", decision_id, action),
            "action": action,
            "customer_id": payload.get("customer_id"),
            "order_id": payload.get("order_id"),
            "decision_id": decision_id,
            "message_kind": kind,
            "channel": payload.get("channel"),
            "cause": payload.get("cause"),
            "requested_at": at,
            # What to honour (the reasons are ours: not the shop's systems' business).
            **({"remedy": {k: v for k, v in granted.items() if k != "why"}} if granted else {}),
        }
        for action, granted in wanted
    ]
