"""What went out and who did what: the outbox (decisions and test sends, searchable by
customer or order) and the audit log."""

from __future__ import annotations

from aiohttp import web

from common.logs import get_logger
from services.outreach.adapters.ledger import Delivery
from services.outreach.studio.accounts import PUBLISH
from services.outreach.studio.context import mask, require, studio_of

log = get_logger(__name__)


async def outbox(request: web.Request) -> web.Response:
    studio = studio_of(request)
    accounts = studio.accounts
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
        mask=mask,
        tests=await accounts.test_sends(q, limit=50),
    )


async def audit(request: web.Request) -> web.Response:
    studio = studio_of(request)
    accounts = studio.accounts
    require(request, PUBLISH)
    q = request.query.get("q", "").strip()
    return studio.page(request, "audit.html", entries=await accounts.audit_log(q), q=q)
