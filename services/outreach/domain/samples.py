"""Realistic sample cases for previews and template checks (the studio's preview data)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.outreach.domain import surveys


def _base(first_name: str = "Ada") -> dict[str, Any]:
    return {
        "customer": {"first_name": first_name, "locale": "en", "timezone": "Europe/Berlin"},
        "order": {
            "order_id": "ord-2026-004217",
            "currency": "EUR",
            "total": "89.90",
            "items": [
                {
                    "sku": "LAMP-OAK-01",
                    "name": "Oak reading lamp",
                    "quantity": 1,
                    "unit_price": "89.90",
                }
            ],
            "shipping_method": "standard",
            "carrier": "DHL",
            "tracking_number": "JJD014600003828475",
            "tracking_url": "https://www.dhl.de/de/privatkunden/pakete-empfangen/"
            "verfolgen.html?piececode=JJD014600003828475",
            "placed_at": datetime(2026, 3, 2, 9, 15, tzinfo=UTC),
            "promised_delivery_by": datetime(2026, 3, 5, 18, 0, tzinfo=UTC),
            "estimated_delivery_at": datetime(2026, 3, 7, 12, 0, tzinfo=UTC),
        },
        "incident": {
            "kind": "delivery_late",
            "severity": "warning",
            "explanation": "Order ord-2026-004217 was not delivered by the promise.",
            "status": "in_transit",
            "substatus": None,
            "detected_at": datetime(2026, 3, 5, 18, 0, tzinfo=UTC),
            "delay_days": 2,
        },
        "offer": None,
        "survey": None,
        "correction": None,
        "storm": None,
        "also": [],
        "links": {
            "unsubscribe_url": "https://shop.example/unsubscribe?token=sample",
            "support_url": "https://shop.example/help",
            "tracking_url": "https://www.dhl.de/verfolgen?piececode=JJD014600003828475",
        },
        "shop": {
            "name": "Example Shop",
            "support_email": "help@shop.example",
            "support_phone": "+49 30 1234567",
        },
        "intent": "apology",
        "message_kind": "delivery_late",
        "reasons": [{"code": "delivery_late", "detail": "2 days late"}],
    }


LARGE_ORDER_ITEMS = 100
_UNTIL = datetime(2026, 4, 5, tzinfo=UTC)
REMEDY_SAMPLES: dict[str, dict[str, Any]] = {
    "free shipping": {"code": "SORRY-4FRE-E5HP", "kind": "free_shipping", "value": None,
                      "currency": None, "expires_at": _UNTIL},
    "a replacement by express": {"code": None, "kind": "expedited_reship", "value": None,
                                 "currency": None, "expires_at": _UNTIL},
    "store credit": {"code": None, "kind": "credit", "value": "15.00", "currency": "EUR",
                     "expires_at": _UNTIL},
}  # fmt: skip
# One offer of every kind a remedy policy may give (docs/remedies.md): what a policy's
# publish renders the serving templates with.
REMEDY_OFFERS: dict[str, dict[str, Any]] = {
    "percent": {"code": "SORRY-7KQ2-MX9P", "kind": "percent", "value": "10", "currency": None,
                "expires_at": _UNTIL},
    "amount": {"code": "SORRY-3HQ8-PL2D", "kind": "amount", "value": "10.00", "currency": "EUR",
               "expires_at": _UNTIL},
    **{offer["kind"]: offer for offer in REMEDY_SAMPLES.values()},
}  # fmt: skip


def sample_contexts(message_kind: str) -> dict[str, dict[str, Any]]:
    """Named cases: a delay of 2 days, a lost parcel, an order of 100 items, a delay with
    each kind of remedy but codes, a serial returner with an offer."""
    delay = _base()
    delay["message_kind"] = message_kind
    delay["incident"] = {**delay["incident"], "kind": message_kind}
    lost, returner, large = _lost(message_kind), _returner(message_kind), _large(message_kind)
    cases = {
        "delay of 2 days": delay,
        "lost parcel with an offer": lost,
        f"order of {LARGE_ORDER_ITEMS} items": large,
    }
    # Every kind of remedy a policy may give (docs/remedies.md): a template must say each.
    for name, remedy in REMEDY_SAMPLES.items():
        cases[f"delay with {name}"] = {**delay, "offer": remedy}
    if message_kind in ("serial_returns", "churn_risk", "merchant_fault_return"):
        cases["serial returner with an offer"] = returner
    if message_kind in surveys.DEFAULT_KINDS:
        asked = _lost(message_kind)
        asked["survey"] = {
            "links": [
                {"score": n, "url": f"https://outreach.example.com/survey?token=sample&score={n}"}
                for n in range(1, 6)
            ]
        }
        cases["a survey after a lost parcel"] = asked
    if message_kind == "incident_corrected":
        return _corrections()
    if message_kind in CONSOLIDATED_SAMPLES:
        both = _base("Ada")
        both["message_kind"] = message_kind
        both["incident"] = {**both["incident"], "kind": message_kind}
        both["also"] = [{"order_id": "ord-2026-004388", "kind": "delivery_late",
                         "summary": "order ord-2026-004388 is running late"}]  # fmt: skip
        cases["two orders at once"] = both
    if message_kind in STORM_SAMPLES:
        storm = _base("Jonas")
        storm["message_kind"] = message_kind
        storm["incident"] = {**storm["incident"], "kind": message_kind}
        storm["storm"] = {"note": STORM_NOTE}
        cases["a hub outage, with the operator's note"] = storm
    return cases


#: The kinds a carrier's hub outage produces by the hundred: their preview shows the note
#: an operator may add to a storm's messages (domain/storms.py).
STORM_SAMPLES = frozenset({"delivery_late", "shipment_stalled", "carrier_exception"})
STORM_NOTE = (
    "DHL's hub in Leipzig was closed for a day by a power cut; DHL expects to deliver "
    "every parcel within two working days."
)


#: The kinds that most often reach a customer together (a hub outage, a warehouse stop):
#: their preview shows one message naming a second order (domain/consolidation.py).
CONSOLIDATED_SAMPLES = frozenset({"dispatch_late", "delivery_at_risk", "delivery_late"})


def _corrections() -> dict[str, dict[str, Any]]:
    """A lost parcel delivered after all; a delay that was not one (later facts)."""
    told = datetime(2026, 3, 6, 10, 30, tzinfo=UTC)
    found = _lost("carrier_exception")
    found.update(message_kind="incident_corrected", intent="status_update", offer=None)
    found["correction"] = {"kind": "carrier_exception", "resolution": "delivered",
                           "told_at": told}  # fmt: skip
    stalled = _base("Marie")
    stalled.update(message_kind="incident_corrected", intent="status_update")
    stalled["incident"] = {**stalled["incident"], "kind": "shipment_stalled"}
    stalled["correction"] = {"kind": "shipment_stalled", "resolution": "delivered",
                             "told_at": told}  # fmt: skip
    retracted = _base("Ada")
    retracted.update(message_kind="incident_corrected", intent="status_update")
    retracted["correction"] = {"kind": "delivery_late", "resolution": "retracted",
                               "told_at": told}  # fmt: skip
    return {
        "a lost parcel delivered after all": found,
        "a stalled parcel delivered": stalled,
        "a delay that was not one": retracted,
    }


def _lost(message_kind: str) -> dict[str, Any]:
    lost = _base("Jürgen")
    lost["message_kind"] = message_kind
    lost["incident"] = {
        **lost["incident"],
        "kind": message_kind,
        "severity": "critical",
        "status": "exception",
        "substatus": "lost",
    }
    lost["offer"] = {
        "code": "SORRY-7KQ2-MX9P",
        "kind": "percent",
        "value": "15",
        "currency": None,
        "expires_at": datetime(2026, 4, 5, tzinfo=UTC),
    }
    return lost


def _returner(message_kind: str) -> dict[str, Any]:
    returner = _base("Zoé")
    returner.update(
        message_kind=message_kind,
        intent="check_in",
        order=None,
        incident=None,
        offer={
            "code": "THANKS-3HQ8-PL2D",
            "kind": "amount",
            "value": "10.00",
            "currency": "EUR",
            "expires_at": datetime(2026, 4, 5, tzinfo=UTC),
        },
    )
    return returner


def _large(message_kind: str) -> dict[str, Any]:
    """The largest order a shop sends: a template that loops over items, or does a lot
    per item, shows its cost here before it costs every worker at send time."""
    large = _base("Maximilian-Alexander")
    large["message_kind"] = message_kind
    large["incident"] = {**large["incident"], "kind": message_kind}
    large["order"] = {
        **large["order"],
        "total": "4990.00",
        "items": [
            {
                "sku": f"SKU-{n:03d}",
                "name": f"Item {n} with a rather long product name",
                "quantity": 1 + n % 3,
                "unit_price": "49.90",
            }
            for n in range(LARGE_ORDER_ITEMS)
        ],
    }
    return large
