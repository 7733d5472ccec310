"""Remedies (docs/remedies.md): the remedy policy — which remedy for which message,
within which budget — its versions, and what the current period has spent.

Every role sees the policy and the spending; only admins save a new version (a draft,
checked before it is kept: what is wrong is said on the page) and publish one (an older
version published again is a rollback). Both are in the studio's audit; the workers
pick a published version up within seconds."""

from __future__ import annotations

import json

from aiohttp import web

from common.clock import wall_now
from services.outreach.adapters.templates import TemplateVersion
from services.outreach.domain import remedies
from services.outreach.domain.remedies import PolicyError
from services.outreach.domain.rendering import RenderError
from services.outreach.domain.samples import REMEDY_OFFERS, sample_contexts
from services.outreach.studio.accounts import ADMIN, VIEW
from services.outreach.studio.context import Studio, require, studio_of

DOCUMENT_MAX = 64 * 1024


async def remedy_page(
    request: web.Request, *, status: int = 200, problem: str | None = None, typed: str = ""
) -> web.Response:
    require(request, VIEW)
    studio = studio_of(request)
    version, policy = await studio.remedies.policy()
    versions = await studio.remedies.versions()
    published = next((v for v in versions if v.version == version), None)
    document = published.document if published else remedies.DEFAULT_DOCUMENT
    period = policy.period_of(wall_now())
    return studio.page(
        request,
        "remedies.html",
        status=status,
        version=version,
        policy=policy,
        document=json.dumps(document, indent=2, ensure_ascii=False),
        draft=typed or json.dumps(document, indent=2, ensure_ascii=False),
        versions=versions,
        period=period,
        spent=await studio.remedies.spent(period),
        summary=await studio.remedies.summary(period),
        problem=problem,
    )


async def save(request: web.Request) -> web.StreamResponse:
    """A new version of the policy, kept as a draft when it can be used."""
    user = require(request, ADMIN)
    studio = studio_of(request)
    form = await request.post()
    text, note = str(form.get("document", "")), str(form.get("note", ""))[:2000]
    if len(text) > DOCUMENT_MAX:
        return await remedy_page(request, status=422, problem="The policy is too long.", typed="")
    try:
        document = json.loads(text)
        version = await studio.remedies.save_draft(document, user.username, note, wall_now())
    except json.JSONDecodeError as exc:
        problem = f"Not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
        return await remedy_page(request, status=422, problem=problem, typed=text)
    except PolicyError as exc:
        return await remedy_page(request, status=422, problem=str(exc), typed=text)
    await studio.accounts.audit(user.username, "saved_remedy_policy", f"v{version}", {"note": note})
    raise web.HTTPSeeOther("/remedies?flash=saved")


async def unsaid(studio: Studio, policy: remedies.Policy) -> list[str]:
    """The serving templates that cannot say a remedy the policy may give: each one of
    the message kinds its rules cover, rendered with an offer of each kind it gives —
    one that fails, or that does not show the code (or shows "None"), is listed."""
    kinds = {r.kind for rule in policy.rules for r in rule.offer}
    covered = None
    if all(rule.kinds is not None for rule in policy.rules):
        covered = {k for rule in policy.rules for k in rule.kinds or ()}
    serving: dict[tuple[str, str, str], TemplateVersion] = {}
    for row in await studio.store.published():  # every published version: the newest serves
        key = (row.message_kind, row.channel, row.locale)
        if key not in serving or row.version > serving[key].version:
            serving[key] = row
    problems = []
    for row in serving.values():
        source = row.source()
        if covered is not None and source.message_kind not in covered:
            continue
        context = sample_contexts(source.message_kind)["delay of 2 days"]
        for kind in sorted(kinds):
            offer = REMEDY_OFFERS[kind]
            name = f"{source.message_kind}.{source.channel}.{source.locale} v{source.version}"
            try:
                rendered = await studio.renderer.render(
                    source, {**context, "offer": offer}, locale=source.locale, timezone="UTC"
                )
            except RenderError as exc:
                problems.append(f"{name} cannot say {kind}: {exc.reason}")
                continue
            if (offer["code"] and offer["code"] not in rendered.text) or "None" in rendered.text:
                problems.append(f"{name} does not say {kind} (its code or its value)")
    return problems


async def publish(request: web.Request) -> web.StreamResponse:
    """A version serves from now on (an older one: a rollback) — unless a serving
    template cannot say a remedy it gives: those are named, and nothing changes."""
    user = require(request, ADMIN)
    studio = studio_of(request)
    version = int(request.match_info["version"])
    found = next((v for v in await studio.remedies.versions() if v.version == version), None)
    if found is None:
        return await remedy_page(request, status=404, problem=f"No version {version}.")
    problems = await unsaid(studio, remedies.parse(found.document))
    if problems:
        shown = "; ".join(problems[:8]) + (
            f"; and {len(problems) - 8} more" if len(problems) > 8 else ""
        )
        problem = f"Not published: templates would not tell customers their remedy — {shown}."
        return await remedy_page(request, status=409, problem=problem)
    try:
        await studio.remedies.publish(version, user.username, wall_now())
    except PolicyError as exc:
        return await remedy_page(request, status=409, problem=str(exc))
    await studio.accounts.audit(user.username, "published_remedy_policy", f"v{version}")
    raise web.HTTPSeeOther("/remedies?flash=published")
