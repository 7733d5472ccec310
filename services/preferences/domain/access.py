"""Who may call preferences' RPCs: pure, so that the rule is tested without a server.

Reads (GetContactPlan, GetPreferences, WatchChanges) take the read token or the write
token, or, with mTLS on, a client certificate the server verified; writes take the write
token. Tokens are compared in constant time. The development profile (`anonymous`)
lets every call through; it exists only when set explicitly.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

WRITE_METHODS = frozenset({"UpdatePreferences", "SetOptOut", "RecordConsent", "EraseCustomer"})
# Services every client (and the kubelet's probe) may call without credentials.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True)
class Credentials:
    read: str | None
    write: str | None
    mtls: bool = False
    anonymous: bool = False

    def allows(self, method: str, authorization: str | None) -> bool:
        """May a call of `method` (its short name) with this `authorization` metadata
        value proceed?"""
        if self.anonymous:
            return True
        sent = authorization.removeprefix("Bearer ") if authorization else None
        if sent is None or sent == authorization:
            sent = None  # not a bearer token
        if method in WRITE_METHODS:
            return _same(sent, self.write)
        if _same(sent, self.read) or _same(sent, self.write):
            return True
        return self.mtls  # the server verified the client's certificate

    def what_is_needed(self, method: str) -> str:
        if method in WRITE_METHODS:
            return "write methods need 'authorization: Bearer <write token>'"
        return "reads need 'authorization: Bearer <read token>'"


def open_method(full_method: str) -> bool:
    return full_method.startswith(OPEN_SERVICES)


def _same(sent: str | None, expected: str | None) -> bool:
    return (
        sent is not None
        and expected is not None
        and hmac.compare_digest(sent.encode(), expected.encode())
    )
