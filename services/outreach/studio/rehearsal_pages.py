"""Rehearsals of drafts (docs/studio.md, "Rehearsals"; docs/rehearsal.md): the editor's
"Rehearse this draft" form, the list of rehearsals, and one rehearsal — its state while
it waits or runs (the page refreshes itself), then its report: whom the draft would have
reached over the period, what was held back, the storms, the difference against what
was really sent, and the messages it would have sent, its own kind first.

Asking for one needs EDIT, as saving the draft does: it starts nothing a customer sees,
but takes a while of the cluster's. Every role sees the rehearsals and their totals;
the samples are real customers' messages (names, orders) and are shown, as the outbox
shows message bodies, to roles that see messages. The runs themselves are rehearser.py;
the pure parts rehearsal_view.py."""

from __future__ import annotations

from aiohttp import web

from common.clock import wall_now
from common.metrics import STUDIO_ACTIONS
from services.outreach.studio import template_pages
from services.outreach.studio.accounts import EDIT, VIEW, AuditEntry
from services.outreach.studio.context import require, studio_of, template_key, template_url
from services.outreach.studio.rehearsal_view import (
    DONE,
    UNFINISHED,
    RehearsalError,
    period,
    read_days,
    shown,
)
from services.outreach.studio.rehearsals import RehearsalRow

LIST_LIMIT = 100
REFRESH_S = 5  # how often an unfinished rehearsal's page reloads itself


def rehearsal_url(rehearsal_id: int, suffix: str = "") -> str:
    return f"/rehearsals/{rehearsal_id}{suffix}"


async def rehearse(request: web.Request) -> web.StreamResponse:
    """Queue a rehearsal of one draft on the last N days (audited with the request),
    then follow it on its page."""
    user = require(request, EDIT)
    studio = studio_of(request)
    kind, channel, locale = template_key(request)
    number = int(request.match_info["version"])
    versions = await studio.store.versions(kind, channel, locale)
    draft = next((v for v in versions if v.version == number), None)
    if draft is None:
        raise web.HTTPNotFound(text="There is no such version.")
    form = await request.post()
    try:
        if draft.status != "draft":
            raise RehearsalError(f"version {number} is {draft.status}: only a draft is rehearsed")
        days = read_days(str(form.get("days", "")))
    except RehearsalError as exc:
        return await template_pages.editor(request, status=422, rehearse_error=str(exc))
    since, until = period(days, wall_now())
    key = f"{kind}/{channel}/{locale}"

    def record(row: RehearsalRow) -> AuditEntry:
        detail = {"version": number, "rehearsal": row.id, "days": days,
                  "since": since.isoformat(), "until": until.isoformat()}  # fmt: skip
        return studio.accounts.entry(user.username, "rehearsal_started", key, detail)

    row = RehearsalRow(
        requested_by=user.username, requested_at=until, template_version_id=draft.id,
        template_key=key, template_version=number, since=since, until=until,
    )  # fmt: skip
    queued = await studio.rehearsals.request(row, record)
    studio.rehearser.wake()
    STUDIO_ACTIONS.labels("rehearsal_started").inc()
    raise web.HTTPSeeOther(rehearsal_url(queued.id, "?flash=rehearsal_started"))


async def rehearsal_list(request: web.Request) -> web.Response:
    require(request, VIEW)
    studio = studio_of(request)
    rows = await studio.rehearsals.recent(LIST_LIMIT)
    return studio.page(request, "rehearsals.html", rehearsals=rows)


async def rehearsal(request: web.Request) -> web.Response:
    user = require(request, VIEW)
    studio = studio_of(request)
    raw = request.match_info["rehearsal_id"]
    found = await studio.rehearsals.get(int(raw)) if raw.isdigit() and len(raw) < 12 else None
    if found is None:
        return studio.error(request, 404, "No rehearsal", f"There is no rehearsal “{raw}”.")
    report = None
    if found.status == DONE and found.report is not None:
        report = shown(found.report, found.kind, found.locale, messages=user.sees_messages)
    kind, channel, locale = found.template_key.split("/")
    editor = template_url(kind, channel, locale, f"?version={found.template_version}")
    return studio.page(
        request,
        "rehearsal.html",
        rehearsal=found,
        report=report,
        editor_url=editor,
        refresh_s=REFRESH_S if found.status in UNFINISHED else None,
    )
