"""The template context of one message (docs/templates.md lists every variable).

Built from the outreach request (incident, order, return as risk_detector passed them),
the contact plan (first name, locale, time zone) and the offer, if any. Dates stay
datetimes: the template filters format them in the customer's locale and time zone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.outreach.domain.consolidation import line


def _dt(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


ORDER_DATES = ("placed_at", "promised_delivery_by", "estimated_delivery_at")


def build_context(
    request: dict[str, Any],
    *,
    first_name: str,
    locale: str,
    timezone: str,
    offer: dict[str, Any] | None,
    unsubscribe_url: str,
    support_url: str,
    shop: dict[str, str],
    survey: dict[str, Any] | None = None,
    storm_note: str | None = None,
) -> dict[str, Any]:
    ctx = request.get("context") or {}
    incident_raw = ctx.get("incident") or None
    order_raw = ctx.get("order") or (incident_raw or {}).get("order")
    order: dict[str, Any] | None = None
    if order_raw:
        order = {
            "order_id": order_raw.get("order_id") or request.get("order_id"),
            "currency": order_raw.get("currency"),
            "total": order_raw.get("total"),
            "items": list(order_raw.get("items") or []),
            "shipping_method": order_raw.get("shipping_method"),
            "carrier": order_raw.get("carrier"),
            "tracking_number": order_raw.get("tracking_number"),
            "tracking_url": order_raw.get("tracking_url"),
        }
        for key in ORDER_DATES:
            order[key] = _dt(order_raw.get(key))
    incident = _incident(incident_raw)
    tracking_url = order.get("tracking_url") if order else None
    reasons = request.get("reasons") or []
    return {
        "customer": {"first_name": first_name, "locale": locale, "timezone": timezone},
        "order": order,
        "incident": incident,
        "offer": offer,
        "links": {
            "unsubscribe_url": unsubscribe_url,
            "support_url": support_url,
            "tracking_url": tracking_url,
        },
        "shop": dict(shop),
        "survey": survey,
        "correction": _correction(ctx.get("correction")),
        # The operator's note for the storm the message's incident belongs to, in the
        # customer's language (docs/storms.md); None without one.
        "storm": {"note": storm_note} if storm_note else None,
        "also": [
            {**item, "summary": line(str(item.get("kind")), item.get("order_id"), locale)}
            for item in ctx.get("also") or ()
        ],
        "intent": request.get("intent"),
        "message_kind": request.get("message_kind"),
        "reasons": [{"code": r.get("code"), "detail": r.get("detail")} for r in reasons],
    }


def _correction(told: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a correction's template may say of the message it corrects."""
    if not told:
        return None
    return {
        "kind": told.get("kind"),
        "resolution": told.get("resolution"),
        "told_at": _dt(told.get("told_at")),
    }


def _incident(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if not raw:
        return None
    facts = raw.get("facts") or {}
    return {
        "kind": raw.get("kind"),
        "severity": raw.get("severity"),
        "explanation": raw.get("explanation"),
        "status": facts.get("status"),
        "substatus": facts.get("substatus"),
        "detected_at": _dt(raw.get("detected_at")),
        "delay_days": facts.get("delay_days"),
    }
