"""Goodwill offers: a discount code deterministic for a decision (a retry gives the same
code), unguessable without the secret, single-use by construction (one per decision)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

# Percent off by offer tier, and the extra for a critical incident.
DEFAULT_TIERS: dict[str, Decimal] = {
    "standard": Decimal("10"),
    "returns_goodwill": Decimal("10"),
    "high_value": Decimal("15"),
}
CRITICAL_BONUS = Decimal("5")
VALID_FOR = timedelta(days=30)


@dataclass(frozen=True)
class Offer:
    code: str
    kind: str  # percent | amount
    value: str
    currency: str | None
    expires_at: datetime

    def as_context(self) -> dict[str, object]:
        return {
            "code": self.code,
            "kind": self.kind,
            "value": self.value,
            "currency": self.currency,
            "expires_at": self.expires_at,
        }


def offer_code(decision_id: str, secret: str, prefix: str = "SORRY") -> str:
    digest = hmac.new(secret.encode(), decision_id.encode(), hashlib.sha256).digest()
    chars = base64.b32encode(digest).decode().rstrip("=").replace("O", "8").replace("I", "9")
    return f"{prefix}-{chars[:4]}-{chars[4:8]}"


def make_offer(
    decision_id: str,
    tier: str | None,
    severity: str,
    decided_at: datetime,
    secret: str,
    tiers: dict[str, Decimal] | None = None,
) -> Offer | None:
    if not tier:
        return None
    table = tiers or DEFAULT_TIERS
    percent = table.get(tier, table["standard"])
    if severity == "critical":
        percent += CRITICAL_BONUS
    return Offer(
        code=offer_code(decision_id, secret),
        kind="percent",
        value=str(percent.normalize()),
        currency=None,
        expires_at=decided_at + VALID_FOR,
    )
