"""The studio's web security in plain functions: the sign-in throttle, safe redirects,
trusted-proxy checks and the response headers every page carries."""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlsplit

# Scripts and styles only from the studio itself; the email preview is a sandboxed
# iframe (srcdoc) that may show images but runs nothing. CodeMirror sets inline styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: https:; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginThrottle:
    """At most `limit` failed sign-ins per key (a user name, an address) in `window_s`;
    beyond that the key waits until its oldest failure leaves the window."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self.clock()
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def wait_s(self, *keys: str) -> float:
        """Seconds before any of `keys` may try again (0: now)."""
        wait = 0.0
        for key in keys:
            failures = self._recent(key)
            if len(failures) >= self.limit:
                wait = max(wait, self.window_s - (self.clock() - failures[0]))
        return wait

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


def safe_next(target: str | None, default: str = "/templates") -> str:
    """Where to go after sign-in: only a path on this site, never another origin. Browsers
    drop tabs and newlines from a URL (`/\t/evil` is `//evil` to them) and some read a
    backslash as a slash, so anything with whitespace, control characters (also
    percent-encoded), backslashes, or a scheme or host once parsed is refused."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return default
    decoded = unquote(target)
    if any(c.isspace() or ord(c) < 32 or c == "\\" for c in decoded) or decoded.startswith("//"):
        return default
    parts = urlsplit(decoded)
    if parts.scheme or parts.netloc:
        return default
    return target


def client_address(
    remote: str | None,
    headers: Mapping[str, str],
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> str:
    """The address a request came from: the peer, or — when the peer is a trusted proxy
    (an Ingress) — the last address in X-Forwarded-For that is not a trusted proxy
    itself (the addresses before it were written by the client, and may be anything)."""
    peer = remote or ""
    if not trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


def parse_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [
        ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()
    ]


def trusted(
    remote: str | None, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in network for network in networks)
