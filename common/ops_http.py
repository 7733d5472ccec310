"""The small HTTP server every service runs for operations: /metrics, /livez, /readyz.

Liveness means the service's own loop is turning (its heartbeat is recent): a consumer
stuck in a poll loop, or a deadlocked event loop, fails it. Readiness means the service
can do its job now: each named check (Kafka assignment received, database reachable,
preferences reachable, ...) must pass. Both answer JSON saying which check failed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadinessCheck = Callable[[], Awaitable[bool] | bool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def operator_allowed(request: web.Request, token: str | None) -> bool:
    """An operator's call: the bearer token when OUTREACH_OPERATOR_TOKEN is set (compared
    in constant time); without one, only loopback callers (a developer's machine) —
    these ports also serve public webhooks and are reached through Services."""
    if token:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(sent) and hmac.compare_digest(sent.encode(), token.encode())
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def operator_only(token: str | None, handler: Handler) -> Handler:
    """`handler` for operators only (see `operator_allowed`); others get 401."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if not operator_allowed(request, token):
            return web.json_response({"error": "operator token required"}, status=401)
        return await handler(request)

    return guarded


#: Set on a request one replica passes to another: the second answers, never passes on.
FORWARDED_BY = "X-Outreach-Forwarded-By"


async def forward_get(base_url: str, request: web.Request, by: str) -> web.Response:
    """Ask the replica at `base_url` the same GET (path, query, the operator's token) and
    answer what it answers; 502 if it cannot be reached."""
    import aiohttp

    headers = {FORWARDED_BY: by}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    url = f"{base_url}{request.rel_url}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(url, headers=headers) as answer,
        ):
            body = await answer.read()
            return web.Response(status=answer.status, body=body, content_type="application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.json_response(
            {"error": "the replica that owns it did not answer", "replica": base_url,
             "reason": type(exc).__name__},
            status=502,
        )  # fmt: skip


class Heartbeat:
    """Beaten by the service's main loop; stale → not live."""

    def __init__(self, max_age_s: float = 30.0) -> None:
        self.max_age_s = max_age_s
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    @property
    def age_s(self) -> float:
        return time.monotonic() - self._last

    @property
    def alive(self) -> bool:
        return self.age_s <= self.max_age_s


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        heartbeat: Heartbeat,
        checks: dict[str, ReadinessCheck] | None = None,
        routes: list[web.RouteDef] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.heartbeat = heartbeat
        self.checks = dict(checks or {})
        self._routes = routes or []
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        self.add_routes_to(app)
        app.add_routes(self._routes)
        return app

    def add_routes_to(self, app: web.Application) -> None:
        """The ops routes on an application."""
        app.router.add_get("/metrics", self._metrics)
        self.add_health_to(app)

    def add_health_to(self, app: web.Application) -> None:
        """Health only (the studio's public port: its metrics are on the ops port)."""
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._readyz)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0 and site._server is not None:
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _livez(self, _request: web.Request) -> web.Response:
        ok = self.heartbeat.alive
        return web.json_response(
            {"live": ok, "heartbeat_age_s": round(self.heartbeat.age_s, 3)},
            status=200 if ok else 503,
        )

    async def _readyz(self, _request: web.Request) -> web.Response:
        results: dict[str, Any] = {}
        for name, check in self.checks.items():
            try:
                outcome = check()
                if asyncio.iscoroutine(outcome) or isinstance(outcome, Awaitable):
                    outcome = await asyncio.wait_for(outcome, timeout=2.0)
                results[name] = bool(outcome)
            except Exception as exc:  # a failing check is a "not ready", never a 500
                results[name] = f"error: {type(exc).__name__}"
        ready = all(v is True for v in results.values())
        return web.json_response({"ready": ready, "checks": results}, status=200 if ready else 503)
