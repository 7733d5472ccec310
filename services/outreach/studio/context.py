"""What every studio handler needs of a request: the studio (its stores, settings and
pages), who is asking and with which role, and the template a URL names. The handlers
themselves are module-level functions per resource: sign_in.py, template_pages.py,
activity.py, conversation_pages.py, storm_pages.py, rehearsal_pages.py; app.py puts them
behind the middlewares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from common.logs import mask_address
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.ledger import LedgerPort
from services.outreach.adapters.providers import (
    MessageSender,
)
from services.outreach.adapters.remedies import RemedyStore
from services.outreach.adapters.render_pool import Renderer
from services.outreach.adapters.storms import StormStore
from services.outreach.adapters.templates import TemplateStore
from services.outreach.config import Settings
from services.outreach.domain.rendering import (
    CHANNELS,
    MESSAGE_KINDS,
)
from services.outreach.studio.accounts import Accounts, SignedIn, roles_with
from services.outreach.studio.rehearsals import RehearsalStore
from services.outreach.studio.rehearser import Rehearser
from services.outreach.studio.security import (
    LoginThrottle,
    parse_networks,
    trusted,
)
from services.outreach.studio.storm_messages import StormMessages

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "studio_session"
LOGIN_COOKIE = "studio_login_csrf"
PUBLIC_PATHS = ("/login", "/static/", "/favicon.ico", "/livez", "/readyz", "/healthz")
ADDRESS_LIMIT_FACTOR = 4
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FLASH = {
    "saved": "Draft saved.",
    "saved_with_errors": "Draft saved. It has errors: fix them before publishing.",
    "published": "Published. Running workers use it within seconds.",
    "rolled_back": "Rolled back: the old text is published again as a new version.",
    "test_sent": "Test message sent.",
    "unchanged": "Nothing changed since the last version.",
    "storm_approved": "Approved: its held messages leave with the workers' next round, "
    "one per customer.",
    "storm_held": "Held: its messages wait until someone approves or cancels the storm.",
    "storm_cancelled": "Cancelled: its held messages, and those still to come, are not sent.",
    "storm_note": "Note saved: the storm's messages that leave from now on carry it.",
    "rehearsal_started": "Rehearsal asked for: it runs in the background, one at a time, "
    "and this page follows it until its report is ready.",
}


USER = web.RequestKey("user", SignedIn)
NEW_SESSION = web.RequestKey("new_session", SignedIn)  # opened by the trusted proxy
TYPED_USERNAME = web.RequestKey("typed_username", str)  # kept in the form after a failure


@dataclass
class Studio:
    settings: Settings
    store: TemplateStore
    ledger: LedgerPort
    accounts: Accounts
    senders: dict[str, MessageSender]
    throttle: LoginThrottle
    renderer: Renderer  # previews, test sends and checks render here (the render pool)
    replies: ReplyStore  # the conversation view reads these two with the ledger
    handoffs: HandoffStore

    def __post_init__(self) -> None:
        self.pages = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "pages"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.pages.globals.update(roles_with=roles_with, channels=CHANNELS, kinds=MESSAGE_KINDS)
        self.proxies = parse_networks(self.settings.studio_trusted_proxies)
        # An address may fail more often than one user (an office behind one NAT), but
        # not endlessly: that is password spraying across users.
        self.address_throttle = LoginThrottle(
            self.throttle.limit * ADDRESS_LIMIT_FACTOR, self.throttle.window_s, self.throttle.clock
        )
        # Storms are decided here (storm_pages.py). Their tables and the messages they
        # hold are in the outreach database the accounts are in, read with the policy the
        # workers count them by (the same OUTREACH_STORM_* settings).
        self.storms = StormStore(self.accounts.sessions, self.settings.storm_policy())
        self.storm_messages = StormMessages(self.accounts.sessions)
        # The remedy policy is edited here (remedy_pages.py), in the same database.
        self.remedies = RemedyStore(self.accounts.sessions)
        # Outcome reports by period, each with when it goes stale (outcome_pages.py).
        self.outcome_reports: dict[int, tuple[float, dict[str, Any]]] = {}
        # Rehearsals of drafts (rehearsal_pages.py) are asked for here and kept in the
        # same database; this process runs them once serve() has started the rehearser.
        self.rehearsals = RehearsalStore(self.accounts.sessions)
        self.rehearser = Rehearser(self.rehearsals, self.settings.data_dir / "rehearsals")

    # -- pages --

    def page(
        self, request: web.Request, name: str, status: int = 200, **context: Any
    ) -> web.Response:
        user = request.get(USER)
        flash = FLASH.get(request.query.get("flash", ""))
        body = self.pages.get_template(name).render(
            user=user, csrf=user.csrf_token if user else "", flash=flash, path=request.path,
            **context,
        )  # fmt: skip
        return web.Response(text=body, content_type="text/html", status=status)

    def error(self, request: web.Request, status: int, title: str, detail: str) -> web.Response:
        return self.page(request, "error.html", status=status, title=title, detail=detail)

    # -- who is asking --

    async def signed_in(self, request: web.Request) -> SignedIn | None:
        header = self.settings.studio_trusted_user_header
        if header and trusted(request.remote, self.proxies):
            name = request.headers.get(header, "").strip()
            if name:
                return await self._sso(request, name)
        return await self.accounts.session(request.cookies.get(SESSION_COOKIE, ""))

    async def _sso(self, request: web.Request, name: str) -> SignedIn | None:
        role_header = self.settings.studio_trusted_role_header
        role = (request.headers.get(role_header, "") if role_header else "").strip().lower()
        role = role or self.settings.studio_trusted_default_role
        current = await self.accounts.session(request.cookies.get(SESSION_COOKIE, ""))
        if current is not None and current.username == name and current.role == role:
            return current
        user = await self.accounts.sso_user(name, role)
        # Audited like a password sign-in: who, with which role, through which proxy.
        session = await self.accounts.start_session(user.username, {"via": "sso", "role": role})
        request[NEW_SESSION] = session
        return session


#: The studio an application serves (set by app.create_app).
STUDIO = web.AppKey("studio", Studio)


def studio_of(request: web.Request) -> Studio:
    return request.app[STUDIO]


def cookie_flags(settings: Settings) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "Lax",
        "secure": settings.studio_secure_cookies,
        "path": "/",
    }


def current_user(request: web.Request) -> SignedIn:
    user = request.get(USER)
    assert isinstance(user, SignedIn)
    return user


def require(request: web.Request, permission: str) -> SignedIn:
    user = current_user(request)
    if not user.can(permission):
        raise web.HTTPForbidden(
            text=f"Your role ({user.role}) cannot do this; it needs one of: "
            f"{', '.join(roles_with(permission))}.",
        )
    return user


def template_key(request: web.Request) -> tuple[str, str, str]:
    kind = request.match_info["kind"]
    channel = request.match_info["channel"]
    locale = request.match_info["locale"]
    if kind not in MESSAGE_KINDS or channel not in CHANNELS or not locale_ok(locale):
        raise web.HTTPNotFound(text="There is no such template.")
    return kind, channel, locale


def locale_ok(tag: str) -> bool:
    parts = tag.split("-")
    return 1 <= len(parts) <= 3 and all(p.isalnum() and 1 <= len(p) <= 8 for p in parts)


def template_url(kind: str, channel: str, locale: str, suffix: str = "") -> str:
    return f"/templates/{kind}/{channel}/{locale}{suffix}"


def mask(address: str | None) -> str:
    return mask_address(address) if address else ""
