"""Storms (domain/storms.py): many incidents with one cause, whose messages may wait for
an operator. The list (those awaiting a decision first), one storm — who decided what
and when, its held messages by segment with a sample of what each segment's customers
will get, the customers it touches with their orders — and the operator's forms:
approve (with a note per language), hold, cancel (with a reason), change the note.

Every role sees the storms; deciding needs OPERATE (publishers, admins): it lets
hundreds of messages go, or stops them. A decision is written to the storm's own log
(in its transaction, by the storm store) and to the studio's audit right after; one
that cannot be taken (a cancelled storm approved, a note too long) is said on the page.
The pure parts are in storm_view.py."""

from __future__ import annotations

import functools
from urllib.parse import quote

from aiohttp import web

from common.clock import wall_now
from common.metrics import STUDIO_ACTIONS
from services.outreach.adapters.templates import default_templates
from services.outreach.domain.rendering import RenderError
from services.outreach.domain.storms import NOTE_MAX, StormError, describe
from services.outreach.runtime import Links
from services.outreach.studio.accounts import OPERATE, PERSONAL_DATA, VIEW
from services.outreach.studio.context import Studio, require, studio_of
from services.outreach.studio.storm_view import (
    AUDITED,
    Sample,
    SampleCase,
    affected,
    is_held,
    listing,
    message_counts,
    page_of,
    possible,
    read_form,
    sample_cases,
    shipped_languages,
    typed_notes,
)

LIST_LIMIT = 200
CUSTOMERS_PER_PAGE = 50


@functools.cache
def languages() -> tuple[str, ...]:
    """The languages a storm's note may be written in: those templates are shipped in."""
    return shipped_languages(t.locale for t in default_templates())


def storm_url(storm_id: str, suffix: str = "") -> str:
    return f"/storms/{quote(storm_id, safe='')}{suffix}"


async def storm_list(request: web.Request) -> web.Response:
    require(request, VIEW)
    studio = studio_of(request)
    storms = await studio.storms.recent(LIST_LIMIT)
    held = await studio.ledger.storm_held()
    return studio.page(request, "storms.html", storms=listing(storms, held))


async def storm(
    request: web.Request,
    *,
    status: int = 200,
    problem: str | None = None,
    typed: dict[str, str] | None = None,
) -> web.Response:
    """One storm; after a refused decision (`problem`) with the notes as typed."""
    user = require(request, VIEW)
    studio = studio_of(request)
    storm_id = request.match_info["storm_id"]
    found = await studio.storms.get(storm_id)
    if found is None:
        return studio.error(request, 404, "No storm", f"There is no storm “{storm_id}”.")
    rows = await studio.storm_messages.of_storm(found.storm_id)
    held = [r for r in rows if is_held(r)]
    personal = user.can(PERSONAL_DATA)
    _, policy = await studio.remedies.policy()
    cases = sample_cases(
        held, found.notes, personal=personal, links=_links(studio), remedy_policy=policy
    )
    samples = [await _render(studio, case) for case in cases]
    if any(case.named for case in cases):  # customers' names were shown: who saw them
        await studio.accounts.audit(user.username, "viewed_storm", found.storm_id)
    members = await studio.storms.members(found)
    customers = affected(members, held)
    return studio.page(
        request,
        "storm.html",
        status=status,
        storm=found,
        scope=describe(found.scope),
        url=storm_url(found.storm_id),
        counts=message_counts(rows),
        held=len(held),
        log=await studio.storms.log(found.storm_id),
        samples=samples,
        customers=page_of(customers, request.query.get("page", ""), CUSTOMERS_PER_PAGE),
        actions=possible(found.state),
        languages=languages(),
        notes=typed if typed is not None else dict(found.notes),
        note_max=NOTE_MAX,
        problem=problem,
    )


async def act(request: web.Request) -> web.StreamResponse:
    """An operator's decision: in the storm's log and the studio's audit, then back to the
    storm; refused (the page says why) if it cannot be taken."""
    user = require(request, OPERATE)
    studio = studio_of(request)
    storm_id = request.match_info["storm_id"]
    form = await request.post()
    try:
        asked = read_form(form, languages())
    except StormError as exc:
        typed = typed_notes(form, languages())
        return await storm(request, status=422, problem=str(exc), typed=typed)
    try:
        done = await studio.storms.act(
            storm_id, asked.action, user.username, wall_now(),
            notes=asked.notes, reason=asked.reason,
        )  # fmt: skip
    except StormError as exc:
        typed = typed_notes(form, languages())
        return await storm(request, status=409, problem=str(exc), typed=typed)
    action = AUDITED[asked.action]
    detail = {"state": done.state.value, "notes": dict(done.notes), "reason": asked.reason}
    await studio.accounts.audit(user.username, action, storm_id, detail)
    STUDIO_ACTIONS.labels(action).inc()
    raise web.HTTPSeeOther(storm_url(storm_id, f"?flash={action}"))


def _links(studio: Studio) -> Links:
    """What a sample's context takes from the settings (no unsubscribe secret: a sample
    carries no real unsubscribe link)."""
    settings = studio.settings
    return Links(
        public_base_url=settings.public_base_url.rstrip("/"),
        support_url=settings.support_url,
        shop_name=settings.shop_name,
        support_email=settings.support_email,
        support_phone=settings.support_phone,
    )


async def _render(studio: Studio, case: SampleCase) -> Sample:
    """A sample rendered by the studio's renderer (the sandbox, in the render pool) with
    the version that serves the carrier's template in its language (or its fallback)."""
    carrier = case.carrier
    if carrier.channel is None:
        return Sample(case, error="No channel is chosen for this message yet.")
    locale = carrier.locale or "en"
    source = await studio.store.latest_published(carrier.message_kind, carrier.channel, locale)
    if source is None:
        key = f"{carrier.message_kind}/{carrier.channel}/{locale}"
        return Sample(case, error=f"No template is published for {key} (nor its fallbacks).")
    zone = carrier.time_zone or "UTC"
    try:
        shown = await studio.renderer.render(source, case.context, locale=locale, timezone=zone)
    except RenderError as exc:
        return Sample(case, error=f"The template does not render: {exc.reason}")
    template = f"{source.message_kind}/{source.channel}/{source.locale} v{source.version}"
    return Sample(case, shown.subject, shown.html, shown.text, None, template)
