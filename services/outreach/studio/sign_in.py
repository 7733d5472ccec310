"""Signing in and out of the studio (a form with its own CSRF cookie, throttled per
user and per address) — docs/studio.md, "Accounts"."""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

from common.logs import get_logger
from common.metrics import STUDIO_LOGIN_FAILURES
from services.outreach.studio.context import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    TYPED_USERNAME,
    cookie_flags,
    studio_of,
)
from services.outreach.studio.security import (
    client_address,
    safe_next,
)

log = get_logger(__name__)


async def login_form(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    # One token per browser for the sign-in form: a second tab, or the browser's own
    # request for /favicon.ico, must not invalidate the form already shown.
    studio = studio_of(request)
    existing = request.cookies.get(LOGIN_COOKIE, "")
    token = existing if 24 <= len(existing) <= 64 else secrets.token_urlsafe(24)
    response = studio.page(
        request,
        "login.html",
        status=status,
        login_csrf=token,
        error=error,
        next=safe_next(request.query.get("next")),
        username=request.get(TYPED_USERNAME, ""),
    )
    flags = cookie_flags(studio.settings) | {"samesite": "Strict"}
    response.set_cookie(LOGIN_COOKIE, token, max_age=3600, **flags)
    return response


async def login_page(request: web.Request) -> web.Response:
    return await login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    studio = studio_of(request)
    accounts = studio.accounts
    form = await request.post()
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = str(form.get("csrf_token", ""))
    if not cookie or not hmac.compare_digest(cookie, sent):
        STUDIO_LOGIN_FAILURES.labels("csrf").inc()
        return await login_form(
            request, error="The sign-in form expired. Please try again.", status=403
        )
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    request[TYPED_USERNAME] = username
    # Behind an Ingress the peer is the proxy: the throttle keys on the client.
    address_key = client_address(request.remote, request.headers, studio.proxies)
    user_key = username.lower()
    wait = max(studio.throttle.wait_s(user_key), studio.address_throttle.wait_s(address_key))
    if wait > 0:
        STUDIO_LOGIN_FAILURES.labels("throttled").inc()
        minutes = max(1, round(wait / 60))
        return await login_form(
            request,
            error=f"Too many failed sign-ins. Try again in {minutes} minute(s).",
            status=429,
        )
    user = await accounts.authenticate(username, password) if username and password else None
    if user is None:
        studio.throttle.failed(user_key)
        studio.address_throttle.failed(address_key)
        STUDIO_LOGIN_FAILURES.labels("wrong").inc()
        log.info("studio_login_failed", user=username[:64], remote=request.remote)
        return await login_form(request, error="Wrong user name or password.", status=401)
    studio.throttle.succeeded(user_key)
    session = await accounts.start_session(user.username)
    response = web.HTTPSeeOther(safe_next(str(form.get("next", ""))))
    assert session.token is not None
    response.set_cookie(SESSION_COOKIE, session.token, **cookie_flags(studio.settings))
    response.del_cookie(LOGIN_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    studio = studio_of(request)
    accounts = studio.accounts
    token = request.cookies.get(SESSION_COOKIE, "")
    if token:
        await accounts.end_session(token)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response
