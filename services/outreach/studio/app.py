"""The template studio: an aiohttp application with server-rendered pages.

Thin handlers around the template store, the accounts and the pure functions of
`catalog`; every page is a Jinja2 template in `pages/` (autoescaped, not the customer
templates' sandbox), every change is audited, every form carries the session's CSRF
token. See docs/studio.md.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape as html_escape
from pathlib import Path
from typing import Any

import jinja2
import phonenumbers
from aiohttp import web
from email_validator import EmailNotValidError, validate_email

from common.logs import get_logger
from common.metrics import STUDIO_ACTIONS, STUDIO_LOGIN_FAILURES
from services.outreach.adapters.ledger import Delivery, Ledger
from services.outreach.adapters.providers import (
    MessageSender,
    OutboundMessage,
    PermanentProviderError,
    TransientProviderError,
)
from services.outreach.adapters.render_pool import Renderer
from services.outreach.adapters.templates import PublishRejected, TemplateStore, TemplateVersion
from services.outreach.config import Settings
from services.outreach.domain.rendering import (
    CHANNELS,
    MESSAGE_KINDS,
    TemplateSource,
    locale_chain,
)
from services.outreach.domain.samples import sample_contexts
from services.outreach.studio import catalog
from services.outreach.studio.accounts import Accounts, SignedIn, TestSend, role_at_least
from services.outreach.studio.security import (
    SECURITY_HEADERS,
    LoginThrottle,
    client_address,
    parse_networks,
    safe_next,
    trusted,
)

log = get_logger(__name__)

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
}


USER = web.RequestKey("user", SignedIn)
NEW_SESSION = web.RequestKey("new_session", SignedIn)  # opened by the trusted proxy
TYPED_USERNAME = web.RequestKey("typed_username", str)  # kept in the form after a failure


@dataclass
class Studio:
    settings: Settings
    store: TemplateStore
    ledger: Ledger
    accounts: Accounts
    senders: dict[str, MessageSender]
    throttle: LoginThrottle
    renderer: Renderer  # previews, test sends and checks render here (the render pool)

    def __post_init__(self) -> None:
        self.pages = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "pages"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.pages.globals.update(
            roles_at_least=role_at_least, channels=CHANNELS, kinds=MESSAGE_KINDS
        )
        self.proxies = parse_networks(self.settings.studio_trusted_proxies)
        # An address may fail more often than one user (an office behind one NAT), but
        # not endlessly: that is password spraying across users.
        self.address_throttle = LoginThrottle(
            self.throttle.limit * ADDRESS_LIMIT_FACTOR, self.throttle.window_s, self.throttle.clock
        )

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


def cookie_flags(settings: Settings) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "Lax",
        "secure": settings.studio_secure_cookies,
        "path": "/",
    }


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


def current_user(request: web.Request) -> SignedIn:
    user = request.get(USER)
    assert isinstance(user, SignedIn)
    return user


def require(request: web.Request, role: str) -> SignedIn:
    user = current_user(request)
    if not user.can(role):
        raise web.HTTPForbidden(
            text=f"Your role ({user.role}) cannot do this; it needs {role}.",
        )
    return user


def template_key(request: web.Request) -> tuple[str, str, str]:
    kind = request.match_info["kind"]
    channel = request.match_info["channel"]
    locale = request.match_info["locale"]
    if kind not in MESSAGE_KINDS or channel not in CHANNELS or not _locale_ok(locale):
        raise web.HTTPNotFound(text="There is no such template.")
    return kind, channel, locale


def _locale_ok(tag: str) -> bool:
    parts = tag.split("-")
    return 1 <= len(parts) <= 3 and all(p.isalnum() and 1 <= len(p) <= 8 for p in parts)


def _url(kind: str, channel: str, locale: str, suffix: str = "") -> str:
    return f"/templates/{kind}/{channel}/{locale}{suffix}"


def _draft_source(
    kind: str, channel: str, locale: str, form: Any, version: int = 0
) -> TemplateSource:
    def field(name: str) -> str | None:
        value = form.get(name)
        return str(value).replace("\r\n", "\n") if value is not None else None

    email = channel == "email"
    return TemplateSource(
        kind,
        channel,
        locale,
        version,
        (field("subject") or "") if email else None,
        (field("html") or "") if email else None,
        field("text") or "",
    )


def _same_content(row: TemplateVersion, source: TemplateSource) -> bool:
    return (row.subject, row.html, row.text) == (source.subject, source.html, source.text)


# --- handlers ------------------------------------------------------------------------


def routes(studio: Studio) -> list[web.AbstractRouteDef]:
    store, accounts = studio.store, studio.accounts

    async def login_form(
        request: web.Request, *, error: str = "", status: int = 200
    ) -> web.Response:
        # One token per browser for the sign-in form: a second tab, or the browser's own
        # request for /favicon.ico, must not invalidate the form already shown.
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
        token = request.cookies.get(SESSION_COOKIE, "")
        if token:
            await accounts.end_session(token)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    async def favicon(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            HERE / "static" / "favicon.svg", headers={"Content-Type": "image/svg+xml"}
        )

    async def home(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/templates")

    async def template_list(request: web.Request) -> web.Response:
        rows = await store.all_versions()
        infos = [
            catalog.VersionInfo(
                r.message_kind,
                r.channel,
                r.locale,
                r.version,
                r.status,
                r.author,
                r.published_at or r.created_at,
            )
            for r in rows
        ]
        all_rows = catalog.template_rows(infos)
        q = request.query
        shown = catalog.filter_rows(
            all_rows,
            query=q.get("q", ""),
            status=q.get("status", ""),
            channel=q.get("channel", ""),
            locale=q.get("locale", ""),
        )
        counts = {
            s: sum(1 for r in all_rows if r.status == s) for s in ("published", "draft", "missing")
        }
        return studio.page(
            request,
            "list.html",
            rows=shown,
            counts=counts,
            total=len(all_rows),
            locales=sorted({r.locale for r in all_rows}),
            q=q,
        )

    async def editor(request: web.Request, **override: Any) -> web.Response:
        kind, channel, locale = template_key(request)
        versions = await store.versions(kind, channel, locale)
        wanted = request.query.get("version")
        current: TemplateVersion | None = None
        if wanted and wanted.isdigit():
            current = next((v for v in versions if v.version == int(wanted)), None)
        if current is None and versions:
            current = versions[-1]
        based_on = None
        if current is not None:
            source = current.source()
        else:  # a missing translation: start from the nearest published one
            for tag in locale_chain(locale)[1:]:
                found = await store.latest_published(kind, channel, tag)
                if found is not None:
                    based_on = tag
                    source = TemplateSource(
                        kind, channel, locale, 0, found.subject, found.html, found.text
                    )
                    break
            else:
                source = TemplateSource(
                    kind, channel, locale, 0,
                    "" if channel == "email" else None, "" if channel == "email" else None, "",
                )  # fmt: skip
        source = override.pop("source", source)
        sample = request.query.get("sample") or override.pop("sample", None)
        shown = await catalog.preview(source, sample, studio.renderer)
        published = [v for v in versions if v.status == "published"]
        return studio.page(
            request,
            "editor.html",
            status=override.pop("status", 200),
            kind=kind,
            channel=channel,
            locale=locale,
            source=source,
            current=current,
            serving=published[-1] if published else None,
            versions=list(reversed(versions)),
            based_on=based_on,
            preview=shown,
            variables=catalog.variables_for(kind),
            send_key=uuid.uuid4().hex,
            url=_url(kind, channel, locale),
            publish_problems=override.pop("publish_problems", None),
            send_error=override.pop("send_error", None),
            **override,
        )

    async def save(request: web.Request) -> web.StreamResponse:
        user = require(request, "editor")
        kind, channel, locale = template_key(request)
        form = await request.post()
        source = _draft_source(kind, channel, locale, form)
        action = str(form.get("action", "save"))
        message = str(form.get("message", "")).strip()[:500]
        if channel == "email" and not (
            (source.subject or "").strip() and (source.html or "").strip()
        ):
            return await editor(
                request,
                source=source,
                status=422,
                publish_problems=["An email needs a subject and an HTML part."],
            )
        versions = await store.versions(kind, channel, locale)
        latest = versions[-1] if versions else None
        if latest is not None and _same_content(latest, source):
            row = latest
            flash = "unchanged"
        else:
            row = await store.save_draft(
                kind, channel, locale,
                subject=source.subject, html=source.html, text=source.text, author=user.username,
                record=accounts.recorder(user.username, "draft_saved"),
            )  # fmt: skip
            STUDIO_ACTIONS.labels("draft_saved").inc()
            errors = [
                p
                for p in (await catalog.preview(source, None, studio.renderer)).problems
                if p.severity == "error"
            ]
            flash = "saved_with_errors" if errors else "saved"
        if action == "publish":
            return await _publish(request, user, row, message, source)
        raise web.HTTPSeeOther(_url(kind, channel, locale, f"?version={row.version}&flash={flash}"))

    async def _publish(
        request: web.Request,
        user: SignedIn,
        row: TemplateVersion,
        message: str,
        source: TemplateSource | None = None,
    ) -> web.StreamResponse:
        if not user.can("publisher"):
            raise web.HTTPForbidden(text="Publishing needs the publisher role.")
        try:
            await store.publish(
                row.id,
                author=user.username,
                message=message or "published",
                samples=sample_contexts(row.message_kind),
                record=accounts.recorder(user.username, "published", message=message),
            )  # fmt: skip
        except PublishRejected as exc:
            problems = [
                f"{p.part} line {p.line}: {p.message}" if p.line else f"{p.part}: {p.message}"
                for p in exc.problems
            ]
            request.match_info  # noqa: B018 - the editor reads the same key
            return await editor(
                request,
                source=source or row.source(),
                status=422,
                publish_problems=problems,
            )
        STUDIO_ACTIONS.labels("published").inc()
        raise web.HTTPSeeOther(
            _url(
                row.message_kind, row.channel, row.locale, f"?version={row.version}&flash=published"
            )
        )

    async def publish_version(request: web.Request) -> web.StreamResponse:
        user = require(request, "publisher")
        kind, channel, locale = template_key(request)
        number = int(request.match_info["version"])
        row = next(
            (v for v in await store.versions(kind, channel, locale) if v.version == number), None
        )
        if row is None:
            raise web.HTTPNotFound(text="There is no such version.")
        form = await request.post()
        return await _publish(request, user, row, str(form.get("message", "")).strip()[:500])

    async def rollback(request: web.Request) -> web.StreamResponse:
        user = require(request, "publisher")
        kind, channel, locale = template_key(request)
        form = await request.post()
        target = str(form.get("to_version", ""))
        if not target.isdigit():
            raise web.HTTPBadRequest(text="Choose the version to roll back to.")
        try:
            row = await store.rollback(
                kind, channel, locale, int(target), author=user.username,
                record=accounts.recorder(user.username, "rolled_back", to=int(target)),
            )  # fmt: skip
        except KeyError:
            raise web.HTTPNotFound(text="There is no such version.") from None
        STUDIO_ACTIONS.labels("rolled_back").inc()
        raise web.HTTPSeeOther(
            _url(kind, channel, locale, f"?version={row.version}&flash=rolled_back")
        )

    async def history(request: web.Request) -> web.Response:
        kind, channel, locale = template_key(request)
        versions = await store.versions(kind, channel, locale)
        if not versions:
            raise web.HTTPNotFound(text="This template has no versions yet.")
        by_number = {v.version: v for v in versions}

        def pick(name: str, default: int) -> TemplateVersion:
            value = request.query.get(name, "")
            return (
                by_number.get(int(value), by_number[default])
                if value.isdigit()
                else by_number[default]
            )

        new = pick("b", versions[-1].version)
        old = pick("a", versions[-2].version if len(versions) > 1 else versions[-1].version)
        old_parts = catalog.version_parts(old.subject, old.html, old.text)
        new_parts = catalog.version_parts(new.subject, new.html, new.text)
        diffs = {
            part: catalog.side_by_side(old_parts.get(part, ""), new_parts.get(part, ""))
            for part in new_parts
        }
        return studio.page(
            request,
            "history.html",
            kind=kind,
            channel=channel,
            locale=locale,
            versions=list(reversed(versions)),
            old=old,
            new=new,
            diffs=diffs,
            url=_url(kind, channel, locale),
        )

    async def api_preview(request: web.Request) -> web.Response:
        current_user(request)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the request is not JSON"}, status=400)
        kind, channel, locale = (str(body.get(k, "")) for k in ("kind", "channel", "locale"))
        if kind not in MESSAGE_KINDS or channel not in CHANNELS or not _locale_ok(locale):
            return web.json_response({"error": "unknown template"}, status=400)
        source = _draft_source(kind, channel, locale, body)
        return web.json_response(
            (await catalog.preview(source, body.get("sample"), studio.renderer)).as_json()
        )

    async def test_send(request: web.Request) -> web.StreamResponse:
        user = require(request, "editor")
        kind, channel, locale = template_key(request)
        form = await request.post()
        source = _draft_source(kind, channel, locale, form)
        send_key = str(form.get("send_key", ""))[:64] or uuid.uuid4().hex
        to_raw = str(form.get("to", "")).strip()

        async def refuse(reason: str) -> web.Response:
            return await editor(request, source=source, status=422, send_error=reason)

        try:
            to = _recipient(channel, to_raw)
        except ValueError as exc:
            return await refuse(str(exc))
        if await accounts.test_send(send_key) is not None:  # the same form sent twice
            raise web.HTTPSeeOther(_url(kind, channel, locale, "?flash=test_sent"))
        limit = studio.settings.studio_test_sends_per_hour
        since = datetime.now(UTC) - timedelta(hours=1)
        if await accounts.test_sends_since(user.username, since) >= limit:
            return await refuse(f"You sent {limit} test messages in the last hour; wait a little.")
        shown = await catalog.preview(source, str(form.get("sample", "")) or None, studio.renderer)
        if shown.error is not None or shown.text is None:
            return await refuse(f"The draft does not render: {shown.error}")
        subject = f"[TEST] {shown.subject}" if shown.subject is not None else None
        html = (
            '<p style="background:#fff3cd;padding:8px"><strong>TEST</strong> — sent from '
            f"the studio by {html_escape(user.username)}; "
            "no customer received this.</p>" + shown.html
            if shown.html is not None
            else None
        )
        text = f"[TEST] {shown.text}"
        row = TestSend(
            send_key=send_key, at=datetime.now(UTC), actor=user.username,
            template_key=f"{kind}/{channel}/{locale}",
            based_on_version=int(str(form.get("based_on", "0")) or 0) or None,
            channel=channel, to=to, subject=subject, html=html, text=text,
        )  # fmt: skip
        sender = studio.senders[channel]
        try:
            result = await sender.send(
                OutboundMessage(
                    decision_id=f"studio-test-{send_key}",
                    channel=channel,
                    to=to,
                    subject=subject,
                    html=html,
                    text=text,
                    message_kind=kind,
                    intent="test",
                    test=True,
                )
            )
            row.provider, row.provider_message_id = result.provider, result.provider_message_id
            row.outbox = result.outbox
        except (PermanentProviderError, TransientProviderError) as exc:
            row.error = str(exc)[:500]
        await accounts.record_test_send(
            row,
            accounts.entry(
                user.username, "test_sent", row.template_key,
                {"channel": channel, "to": _mask(to), "error": row.error, "outbox": row.outbox},
            ),
        )  # fmt: skip
        STUDIO_ACTIONS.labels("test_sent").inc()
        if row.error:
            return await refuse(f"The provider refused the test: {row.error}")
        raise web.HTTPSeeOther(_url(kind, channel, locale, "?flash=test_sent"))

    async def outbox(request: web.Request) -> web.Response:
        q = request.query.get("q", "").strip()
        rows: list[Delivery]
        if q:
            by_customer = await studio.ledger.history(customer_id=q, limit=100)
            by_order = await studio.ledger.history(order_id=q, limit=100)
            seen: dict[str, Delivery] = {r.decision_id: r for r in by_customer + by_order}
            rows = sorted(seen.values(), key=lambda r: r.decided_at, reverse=True)
        else:
            rows = await studio.ledger.history(limit=100)
        return studio.page(
            request,
            "outbox.html",
            rows=rows,
            q=q,
            mask=_mask,
            tests=await accounts.test_sends(q, limit=50),
        )

    async def audit(request: web.Request) -> web.Response:
        require(request, "publisher")
        q = request.query.get("q", "").strip()
        return studio.page(request, "audit.html", entries=await accounts.audit_log(q), q=q)

    base = "/templates/{kind}/{channel}/{locale}"
    return [
        web.get("/login", login_page),
        web.post("/login", login),
        web.post("/logout", logout),
        web.get("/", home),
        web.get("/favicon.ico", favicon),
        web.get("/templates", template_list),
        web.get(base, editor),
        web.post(base, save),
        web.post(base + "/versions/{version:\\d+}/publish", publish_version),
        web.post(base + "/rollback", rollback),
        web.get(base + "/history", history),
        web.post(base + "/test-send", test_send),
        web.post("/api/preview", api_preview),
        web.get("/outbox", outbox),
        web.get("/audit", audit),
        web.static("/static", HERE / "static", append_version=True),
    ]


def _recipient(channel: str, raw: str) -> str:
    if not raw:
        raise ValueError("Type the address or number to send the test to.")
    if channel == "email":
        try:
            return validate_email(raw, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(f"That is not an email address: {exc}") from None
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise ValueError("Type the number with its country code, e.g. +44 7911 123456.") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("That phone number is not valid.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _mask(address: str | None) -> str:
    if not address:
        return ""
    if "@" in address:
        name, _, domain = address.partition("@")
        return f"{name[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}"


def create_app(
    studio: Studio, extra: Callable[[web.Application], None] | None = None
) -> web.Application:
    app = web.Application(
        middlewares=[security_headers, auth_middleware(studio)], client_max_size=512 * 1024
    )
    if extra is not None:
        extra(app)
    app.add_routes(routes(studio))
    return app
