"""The template studio: an aiohttp application with server-rendered pages.

Thin handlers around the template store, the accounts and the pure functions of
`catalog`; every page is a Jinja2 template in `pages/` (autoescaped, not the customer
templates' sandbox), every change is audited, every form carries the session's CSRF
token. See docs/studio.md.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from common.logs import get_logger
from services.outreach.studio import (
    activity,
    conversation_pages,
    outcome_pages,
    rehearsal_pages,
    remedy_pages,
    sign_in,
    storm_pages,
    template_pages,
)
from services.outreach.studio.accounts import SignedIn
from services.outreach.studio.context import (
    HERE,
    NEW_SESSION,
    PUBLIC_PATHS,
    SESSION_COOKIE,
    STUDIO,
    UNSAFE_METHODS,
    USER,
    Studio,
    cookie_flags,
)
from services.outreach.studio.security import (
    SECURITY_HEADERS,
)

log = get_logger(__name__)


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    for name, value in SECURITY_HEADERS.items():
        if name == "Cache-Control" and request.path.startswith("/static/"):
            continue
        response.headers.setdefault(name, value)
    if isinstance(response, web.HTTPException) and response.status >= 300:
        raise response
    return response


def auth_middleware(studio: Studio) -> Any:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith(PUBLIC_PATHS):
            return await handler(request)
        user = await studio.signed_in(request)
        if user is None:
            if request.method in UNSAFE_METHODS or request.path.startswith("/api/"):
                return studio.error(request, 401, "Signed out", "Please sign in again.")
            raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
        request[USER] = user
        if request.method in UNSAFE_METHODS and not await csrf_ok(request, user):
            log.warning("studio_csrf_refused", user=user.username, path=request.path)
            return studio.error(
                request,
                403,
                "Form expired",
                "This form was not sent from the studio, or it is too old. "
                "Reload the page and try again.",
            )
        new = request.get(NEW_SESSION)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # redirects too carry the new session's cookie
            if new is not None and new.token:
                exc.set_cookie(SESSION_COOKIE, new.token, **cookie_flags(studio.settings))
            raise
        if new is not None and new.token:
            response.set_cookie(SESSION_COOKIE, new.token, **cookie_flags(studio.settings))
        return response

    return middleware


async def csrf_ok(request: web.Request, user: SignedIn) -> bool:
    sent = request.headers.get("X-CSRF-Token", "")
    if not sent and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        sent = str((await request.post()).get("csrf_token", ""))
    return bool(sent) and hmac.compare_digest(sent, user.csrf_token)


async def favicon(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        HERE / "static" / "favicon.svg", headers={"Content-Type": "image/svg+xml"}
    )


async def home(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/templates")


def routes() -> list[web.AbstractRouteDef]:
    base = "/templates/{kind}/{channel}/{locale}"
    return [
        web.get("/login", sign_in.login_page),
        web.post("/login", sign_in.login),
        web.post("/logout", sign_in.logout),
        web.get("/", home),
        web.get("/favicon.ico", favicon),
        web.get("/templates", template_pages.template_list),
        web.get(base, template_pages.editor),
        web.post(base, template_pages.save),
        web.post(base + "/versions/{version:\\d+}/publish", template_pages.publish_version),
        web.post(base + "/versions/{version:\\d+}/rehearse", rehearsal_pages.rehearse),
        web.post(base + "/rollback", template_pages.rollback),
        web.get(base + "/history", template_pages.history),
        web.post(base + "/test-send", template_pages.test_send),
        web.post("/api/preview", template_pages.api_preview),
        web.get("/outbox", activity.outbox),
        web.get("/audit", activity.audit),
        web.get("/conversations", conversation_pages.conversations),
        web.get("/conversations/{customer_id}", conversation_pages.conversation),
        web.get("/storms", storm_pages.storm_list),
        web.get("/storms/{storm_id}", storm_pages.storm),
        web.post("/storms/{storm_id}", storm_pages.act),
        web.get("/rehearsals", rehearsal_pages.rehearsal_list),
        web.get("/outcomes", outcome_pages.outcomes),
        web.get("/remedies", remedy_pages.remedy_page),
        web.post("/remedies", remedy_pages.save),
        web.post("/remedies/versions/{version:\\d+}/publish", remedy_pages.publish),
        web.get("/rehearsals/{rehearsal_id:\\d+}", rehearsal_pages.rehearsal),
        web.static("/static", HERE / "static", append_version=True),
    ]


def create_app(
    studio: Studio, extra: Callable[[web.Application], None] | None = None
) -> web.Application:
    app = web.Application(
        middlewares=[security_headers, auth_middleware(studio)], client_max_size=512 * 1024
    )
    if extra is not None:
        extra(app)
    app[STUDIO] = studio
    app.add_routes(routes())
    return app
