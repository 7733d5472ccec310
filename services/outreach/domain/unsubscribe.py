"""Signed unsubscribe tokens: the link in an email opts out exactly that customer and
channel, and cannot be forged or altered (HMAC-SHA256 with the service's secret)."""

from __future__ import annotations

import base64
import hashlib
import hmac


def token_for(customer_id: str, channel: str, decision_id: str, secret: str) -> str:
    payload = f"{customer_id}\x1f{channel}\x1f{decision_id}".encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    return _b64(payload) + "." + _b64(mac)


def read_token(token: str, secret: str) -> tuple[str, str, str] | None:
    """(customer_id, channel, decision_id), or None when the token is not ours."""
    try:
        body, mac = token.split(".", 1)
        payload = _unb64(body)
        expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        customer_id, channel, decision_id = payload.decode().split("\x1f")
    except (ValueError, UnicodeDecodeError):
        return None
    return customer_id, channel, decision_id


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
