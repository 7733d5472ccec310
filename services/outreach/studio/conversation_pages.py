"""The conversation view: the customers who answered us or were handed to a person
(newest first, searchable by customer or order id), and one customer's timeline
(studio/timeline.py) with as much personal data as the role allows. Opening a timeline
with personal data in it is audited (who looked at whom, when)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from aiohttp import web

from services.outreach.studio.accounts import CONVERSATIONS, PERSONAL_DATA
from services.outreach.studio.context import require, studio_of
from services.outreach.studio.timeline import Sight, summary, timeline

LIST_LIMIT = 100
TIMELINE_LIMIT = 100


@dataclass(frozen=True)
class Recent:
    customer_id: str
    last_at: datetime
    replies: int
    handoffs: int
    last_intent: str | None


async def conversations(request: web.Request) -> web.Response:
    require(request, CONVERSATIONS)
    studio = studio_of(request)
    q = request.query.get("q", "").strip()
    if q:
        by_order = await studio.ledger.history(order_id=q, limit=1)
        customer = by_order[0].customer_id if by_order else q
        raise web.HTTPSeeOther(f"/conversations/{quote(customer, safe='')}")
    found: dict[str, Recent] = {}
    for reply in reversed(await studio.replies.latest(LIST_LIMIT)):
        was = found.get(reply.customer_id)
        found[reply.customer_id] = Recent(
            reply.customer_id,
            reply.received_at if was is None else max(was.last_at, reply.received_at),
            (was.replies if was else 0) + 1,
            was.handoffs if was else 0,
            reply.intent,
        )
    for handoff in await studio.handoffs.latest(LIST_LIMIT):
        assert handoff.requested_at is not None
        was = found.get(handoff.customer_id)
        found[handoff.customer_id] = Recent(
            handoff.customer_id,
            handoff.requested_at if was is None else max(was.last_at, handoff.requested_at),
            was.replies if was else 0,
            (was.handoffs if was else 0) + 1,
            was.last_intent if was else None,
        )
    recent = sorted(found.values(), key=lambda r: r.last_at, reverse=True)
    return studio.page(request, "conversations.html", recent=recent, q=q)


async def conversation(request: web.Request) -> web.Response:
    user = require(request, CONVERSATIONS)
    studio = studio_of(request)
    customer_id = request.match_info["customer_id"]
    rows = await studio.ledger.history(customer_id=customer_id, limit=TIMELINE_LIMIT)
    decisions = [
        (row, [e.status for e in await studio.ledger.events_of(row.decision_id)]) for row in rows
    ]
    remedies = {
        row.decision_id: grant.explained()
        for row in rows
        if (grant := await studio.remedies.get(row.decision_id)) is not None
    }
    replies = await studio.replies.of_customer(customer_id, TIMELINE_LIMIT)
    handoffs = await studio.handoffs.of_customer(customer_id, TIMELINE_LIMIT)
    if not (rows or replies or handoffs):
        return studio.error(
            request, 404, "No conversation", f"Nothing is known of customer “{customer_id}”."
        )
    sight = Sight(messages=user.sees_messages, personal=user.can(PERSONAL_DATA))
    if sight.personal:
        await studio.accounts.audit(user.username, "viewed_conversation", customer_id)
    return studio.page(
        request,
        "conversation.html",
        head=summary(customer_id, rows, replies, handoffs),
        entries=timeline(decisions, replies, handoffs, sight, remedies),
        sight=sight,
    )
