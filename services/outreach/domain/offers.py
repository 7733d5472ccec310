"""Goodwill offers: a discount code deterministic for a decision (a retry gives the same
code), unguessable without the secret, one per decision.

The code is an HMAC of the decision id: 8 characters from base32 with the look-alikes O
and I replaced by 8 and 9 (40 bits; guessing one takes ~10^12 tries), grouped as
`SORRY-7KQ2-MX9P`. Single use is the shop's coupon system's job: we hand it exactly one
code per decision. What a code is worth comes from an `OfferPolicy`: a table by the
customer's offer tier (risk_detector's `offer_tier`) and the incident severity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

OfferKind = Literal["percent", "amount"]
ANY_SEVERITY = "*"
CODE_PATTERN = re.compile(r"^[A-Z]+-[A-Z2-9]{4}-[A-Z2-9]{4}$")


@dataclass(frozen=True)
class OfferRule:
    kind: OfferKind
    value: Decimal
    currency: str | None = None  # amount offers: None means the order's currency

    @classmethod
    def parse(cls, text: str) -> OfferRule:
        """`"10%"` → 10 percent; `"5 EUR"` → 5.00 EUR; `"5"` → 5 in the order's currency."""
        raw = text.strip()
        try:
            if raw.endswith("%"):
                return cls("percent", Decimal(raw[:-1].strip()))
            amount, _, currency = raw.partition(" ")
            return cls("amount", Decimal(amount), currency.strip().upper() or None)
        except InvalidOperation:
            raise ValueError(f"not an offer: {text!r} (try '10%' or '5 EUR')") from None


def _pct(value: str) -> OfferRule:
    return OfferRule("percent", Decimal(value))


def _default_rules() -> dict[str, dict[str, OfferRule]]:
    return {
        "standard": {"info": _pct("10"), "warning": _pct("10"), "critical": _pct("15")},
        "returns_goodwill": {ANY_SEVERITY: _pct("10")},
        "high_value": {"info": _pct("15"), "warning": _pct("15"), "critical": _pct("20")},
    }


@dataclass(frozen=True)
class OfferPolicy:
    """tier → severity (or "*") → what the offer is worth; unknown tiers use "standard"."""

    rules: Mapping[str, Mapping[str, OfferRule]] = field(default_factory=_default_rules)
    valid_for: timedelta = timedelta(days=30)
    prefix: str = "SORRY"

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Mapping[str, str]], *, valid_days: int = 30, prefix: str = "SORRY"
    ) -> OfferPolicy:
        """From configuration: `{"standard": {"warning": "10%", "critical": "15%"},
        "high_value": {"*": "20 EUR"}}`."""
        rules = {
            tier: {sev: OfferRule.parse(v) for sev, v in by_severity.items()}
            for tier, by_severity in table.items()
        }
        if "standard" not in rules:
            raise ValueError("an offer table needs a 'standard' tier")
        if not re.fullmatch(r"[A-Z]{2,12}", prefix):
            raise ValueError(f"offer code prefix must be 2-12 capital letters, got {prefix!r}")
        return cls(rules=rules, valid_for=timedelta(days=valid_days), prefix=prefix)

    def rule(self, tier: str, severity: str) -> OfferRule | None:
        table = self.rules.get(tier) or self.rules.get("standard") or {}
        return table.get(severity) or table.get(ANY_SEVERITY)


DEFAULT_POLICY = OfferPolicy()


@dataclass(frozen=True)
class Offer:
    code: str
    kind: str  # percent | amount
    value: str  # decimal string: "15" (percent) or "10.00" (amount)
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
    if not secret:
        raise ValueError("an offer secret is required: without it codes are guessable")
    digest = hmac.new(secret.encode(), decision_id.encode(), hashlib.sha256).digest()
    chars = base64.b32encode(digest).decode().rstrip("=").replace("O", "8").replace("I", "9")
    return f"{prefix}-{chars[:4]}-{chars[4:8]}"


def make_offer(
    decision_id: str,
    tier: str | None,
    severity: str,
    decided_at: datetime,
    secret: str,
    policy: OfferPolicy | None = None,
    *,
    currency: str | None = None,
) -> Offer | None:
    """The offer for a decision, or None (no tier, or the policy gives nothing).

    Deterministic: the same decision, policy and secret always give the same offer, so
    a retried or replayed decision sends the same code."""
    if not tier:
        return None
    rules = policy or DEFAULT_POLICY
    rule = rules.rule(tier, severity)
    if rule is None or rule.value <= 0:
        return None
    if rule.kind == "percent":
        value, offer_currency = format(rule.value.normalize(), "f"), None
    else:
        offer_currency = rule.currency or currency
        if not offer_currency:
            return None  # an amount without a currency means nothing to a customer
        value = str(rule.value.quantize(Decimal("0.01")))
    return Offer(
        code=offer_code(decision_id, secret, rules.prefix),
        kind=rule.kind,
        value=value,
        currency=offer_currency,
        expires_at=decided_at + rules.valid_for,
    )
