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
from services.outreach.domain import remedies
from services.outreach.domain.remedies import PolicyError
from services.outreach.studio.accounts import ADMIN, VIEW
from services.outreach.studio.context import require, studio_of

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


async def publish(request: web.Request) -> web.StreamResponse:
    """A version serves from now on (an older one: a rollback)."""
    user = require(request, ADMIN)
    studio = studio_of(request)
    version = int(request.match_info["version"])
    try:
        await studio.remedies.publish(version, user.username, wall_now())
    except PolicyError as exc:
        return await remedy_page(request, status=409, problem=str(exc))
    await studio.accounts.audit(user.username, "published_remedy_policy", f"v{version}")
    raise web.HTTPSeeOther("/remedies?flash=published")
