"""Input events the preferences tests feed in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from common.envelope import CloudEvent, new_event

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def customer_upserted(cid: str, **data: Any) -> CloudEvent:
    """A customer.upserted for `cid` (German, Berlin, email only, no marketing opt-in
    unless `data` says otherwise); its id is derived from the customer."""
    return new_event(
        type="customer.upserted",
        source="/t",
        subject=cid,
        time=T0,
        id=f"up-{cid}",
        data={
            "customer_id": cid,
            "first_name": "Ada",
            "email": "ada@example.com",
            "locale": "de-DE",
            "timezone": "Europe/Berlin",
            "marketing_opt_in": False,
            **data,
        },
    )
