"""Remedy codes (docs/remedies.md): a discount code deterministic for a decision (a retry
gives the same code), unguessable without the secret, one per decision.

The code is an HMAC of the decision id: 8 characters from base32 with the look-alikes O
and I replaced by 8 and 9 (40 bits; guessing one takes ~10^12 tries), grouped as
`SORRY-7KQ2-MX9P`. The shop's coupon system accepts it once (outreach hands it over on
`outreach.actions`, `discount_code`) and outreach counts its uses from the orders that
carry it. What a code is worth is the remedy policy's (domain/remedies.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

CODE_PATTERN = re.compile(r"^[A-Z]+-[A-Z2-9]{4}-[A-Z2-9]{4}$")


def offer_code(decision_id: str, secret: str, prefix: str = "SORRY") -> str:
    if not secret:
        raise ValueError("an offer secret is required: without it codes are guessable")
    digest = hmac.new(secret.encode(), decision_id.encode(), hashlib.sha256).digest()
    chars = base64.b32encode(digest).decode().rstrip("=").replace("O", "8").replace("I", "9")
    return f"{prefix}-{chars[:4]}-{chars[4:8]}"
