"""The templates: the list, the editor with its live preview, drafts, publishing,
rollback, history and test sends — docs/studio.md."""

from __future__ import annotations

import uuid
from datetime import timedelta
from html import escape as html_escape
from typing import Any

import phonenumbers
from aiohttp import web
from email_validator import EmailNotValidError, validate_email

from common.clock import wall_now
from common.metrics import STUDIO_ACTIONS
from services.outreach.adapters.providers import (
    OutboundMessage,
    PermanentProviderError,
    TransientProviderError,
)
from services.outreach.adapters.templates import PublishRejected, TemplateVersion
from services.outreach.domain.rendering import (
    CHANNELS,
    MESSAGE_KINDS,
    TemplateSource,
    locale_chain,
)
from services.outreach.domain.samples import sample_contexts
from services.outreach.studio import catalog
from services.outreach.studio.accounts import EDIT, PUBLISH, SignedIn, TestSend
from services.outreach.studio.context import (
    Studio,
    current_user,
    locale_ok,
    mask,
    require,
    studio_of,
    template_key,
    template_url,
)
from services.outreach.studio.rehearsal_view import DAYS_DEFAULT, DAYS_MAX


async def template_list(request: web.Request) -> web.Response:
    studio = studio_of(request)
    store = studio.store
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
    studio = studio_of(request)
    store = studio.store
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
        url=template_url(kind, channel, locale),
        publish_problems=override.pop("publish_problems", None),
        send_error=override.pop("send_error", None),
        rehearse_error=override.pop("rehearse_error", None),
        rehearse_days=(DAYS_DEFAULT, DAYS_MAX),
        **override,
    )


async def save(request: web.Request) -> web.StreamResponse:
    studio = studio_of(request)
    store = studio.store
    accounts = studio.accounts
    user = require(request, EDIT)
    kind, channel, locale = template_key(request)
    form = await request.post()
    source = _draft_source(kind, channel, locale, form)
    action = str(form.get("action", "save"))
    message = str(form.get("message", "")).strip()[:500]
    if channel == "email" and not ((source.subject or "").strip() and (source.html or "").strip()):
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
        return await publish(request, user, row, message, source)
    raise web.HTTPSeeOther(
        template_url(kind, channel, locale, f"?version={row.version}&flash={flash}")
    )


async def publish(
    request: web.Request,
    user: SignedIn,
    row: TemplateVersion,
    message: str,
    source: TemplateSource | None = None,
) -> web.StreamResponse:
    studio = studio_of(request)
    store = studio.store
    accounts = studio.accounts
    if not user.can(PUBLISH):
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
        template_url(
            row.message_kind, row.channel, row.locale, f"?version={row.version}&flash=published"
        )
    )


async def publish_version(request: web.Request) -> web.StreamResponse:
    studio = studio_of(request)
    store = studio.store
    user = require(request, PUBLISH)
    kind, channel, locale = template_key(request)
    number = int(request.match_info["version"])
    row = next(
        (v for v in await store.versions(kind, channel, locale) if v.version == number), None
    )
    if row is None:
        raise web.HTTPNotFound(text="There is no such version.")
    form = await request.post()
    return await publish(request, user, row, str(form.get("message", "")).strip()[:500])


async def rollback(request: web.Request) -> web.StreamResponse:
    studio = studio_of(request)
    store = studio.store
    accounts = studio.accounts
    user = require(request, PUBLISH)
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
        template_url(kind, channel, locale, f"?version={row.version}&flash=rolled_back")
    )


async def history(request: web.Request) -> web.Response:
    studio = studio_of(request)
    store = studio.store
    kind, channel, locale = template_key(request)
    versions = await store.versions(kind, channel, locale)
    if not versions:
        raise web.HTTPNotFound(text="This template has no versions yet.")
    by_number = {v.version: v for v in versions}

    def pick(name: str, default: int) -> TemplateVersion:
        value = request.query.get(name, "")
        return (
            by_number.get(int(value), by_number[default]) if value.isdigit() else by_number[default]
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
        url=template_url(kind, channel, locale),
    )


async def api_preview(request: web.Request) -> web.Response:
    studio = studio_of(request)
    current_user(request)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "the request is not JSON"}, status=400)
    kind, channel, locale = (str(body.get(k, "")) for k in ("kind", "channel", "locale"))
    if kind not in MESSAGE_KINDS or channel not in CHANNELS or not locale_ok(locale):
        return web.json_response({"error": "unknown template"}, status=400)
    source = _draft_source(kind, channel, locale, body)
    return web.json_response(
        (await catalog.preview(source, body.get("sample"), studio.renderer)).as_json()
    )


async def test_send(request: web.Request) -> web.StreamResponse:
    studio = studio_of(request)
    accounts = studio.accounts
    user = require(request, EDIT)
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
        raise web.HTTPSeeOther(template_url(kind, channel, locale, "?flash=test_sent"))
    limit = studio.settings.studio_test_sends_per_hour
    since = wall_now() - timedelta(hours=1)
    if await accounts.test_sends_since(user.username, since) >= limit:
        return await refuse(f"You sent {limit} test messages in the last hour; wait a little.")
    shown = await catalog.preview(source, str(form.get("sample", "")) or None, studio.renderer)
    if shown.error is not None or shown.text is None:
        return await refuse(f"The draft does not render: {shown.error}")
    row = _test_message(user, send_key, (kind, channel, locale), to, shown)
    row.based_on_version = int(str(form.get("based_on", "0")) or 0) or None
    await _send_test(studio, row, kind)
    await accounts.record_test_send(
        row,
        accounts.entry(
            user.username, "test_sent", row.template_key,
            {"channel": channel, "to": mask(to), "error": row.error, "outbox": row.outbox},
        ),
    )  # fmt: skip
    STUDIO_ACTIONS.labels("test_sent").inc()
    if row.error:
        return await refuse(f"The provider refused the test: {row.error}")
    raise web.HTTPSeeOther(template_url(kind, channel, locale, "?flash=test_sent"))


def _test_message(
    user: SignedIn, send_key: str, key: tuple[str, str, str], to: str, shown: Any
) -> TestSend:
    """The test send of a rendered draft (`shown`), marked as a test in every part."""
    kind, channel, locale = key
    html = (
        '<p style="background:#fff3cd;padding:8px"><strong>TEST</strong> — sent from '
        f"the studio by {html_escape(user.username)}; "
        "no customer received this.</p>" + shown.html
        if shown.html is not None
        else None
    )
    return TestSend(
        send_key=send_key, at=wall_now(), actor=user.username,
        template_key=f"{kind}/{channel}/{locale}",
        channel=channel, to=to,
        subject=f"[TEST] {shown.subject}" if shown.subject is not None else None,
        html=html, text=f"[TEST] {shown.text}",
    )  # fmt: skip


async def _send_test(studio: Studio, row: TestSend, kind: str) -> None:
    """Hand the test to the channel's provider; what it answered goes into `row`."""
    try:
        result = await studio.senders[row.channel].send(
            OutboundMessage(
                decision_id=f"studio-test-{row.send_key}",
                channel=row.channel,
                to=row.to,
                subject=row.subject,
                html=row.html,
                text=row.text,
                message_kind=kind,
                intent="test",
                test=True,
            )
        )
        row.provider, row.provider_message_id = result.provider, result.provider_message_id
        row.outbox = result.outbox
    except (PermanentProviderError, TransientProviderError) as exc:
        row.error = str(exc)[:500]


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
