"""HTTP routes of the outreach worker: explain and the kill switch (operators),
unsubscribe and the survey's page (customers)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.logs import mask_address
from common.ops_http import operator_only
from services.outreach.adapters.controls import ControlError
from services.outreach.domain import corrections
from services.outreach.domain.ramp import GLOBAL
from services.outreach.domain.unsubscribe import read_token
from services.outreach.entrypoints.survey_page import routes as survey_routes
from services.outreach.entrypoints.webhooks import routes as webhook_routes

if TYPE_CHECKING:
    from services.outreach.bootstrap import Outreach


async def _remedy(outreach: Outreach, decision_id: str) -> dict[str, Any] | None:
    """The decision's remedy and why (docs/remedies.md); the code is the customer's."""
    grant = await outreach.remedies.get(decision_id)
    return grant.explained() if grant is not None else None


async def _explain(
    outreach: Outreach, *, customer_id: str | None = None, order_id: str | None = None
) -> list[dict[str, Any]]:
    out = []
    for row in await outreach.ledger.history(customer_id=customer_id, order_id=order_id):
        events = await outreach.ledger.events_of(row.decision_id)
        out.append(
            {
                "decision_id": row.decision_id,
                "request_id": row.request_id,
                "customer_id": row.customer_id,
                "order_id": row.order_id,
                "cause": {"type": row.cause_type, "id": row.cause_id, "kind": row.cause_kind},
                "intent": row.intent,
                "message_kind": row.message_kind,
                "severity": row.severity,
                "category": row.category,
                "status": row.status,
                "reason": row.reason,
                "rule": row.rule,
                # The arm of each experiment covering it (docs/outcomes.md).
                "experiments": row.experiments or [],
                "remedy": await _remedy(outreach, row.decision_id),
                "channel": row.channel,
                "address": mask_address(row.address) if row.address else row.address,
                "template": row.template_key,
                "template_version": row.template_version,
                "provider": row.provider,
                "provider_message_id": row.provider_message_id,
                "outbox": row.outbox,
                "decided_at": row.decided_at.isoformat(),
                "sent_at": row.sent_at.isoformat() if row.sent_at else None,
                "reasons": row.request.get("reasons", []),
                # A correction names the message it corrects (docs/corrections.md).
                "corrects": corrections.corrects(row.request),
                "timeline": [
                    {
                        "at": e.at.isoformat(),
                        "status": e.status,
                        **{
                            k: v
                            for k, v in e.payload.items()
                            if k
                            in (
                                "reason",
                                "channel",
                                "provider_message_id",
                                "fallback_to",
                                "template_skipped",
                                "send_at",
                                "outbox",
                            )
                        },
                    }
                    for e in events
                ],
            }
        )
    return out


class WorkerRoutes:
    """The worker's own HTTP handlers, over one outreach."""

    def __init__(self, outreach: Outreach) -> None:
        self.outreach = outreach

    async def sending_state(self) -> dict[str, Any]:
        outreach = self.outreach
        return {
            "paused": [s.as_json() for s in await outreach.controls.state() if s.paused],
            "controls": [s.as_json() for s in await outreach.controls.state()],
            "history": [
                {
                    "at": h.at.isoformat(),
                    "scope": h.scope,
                    "action": h.action,
                    "actor": h.actor,
                    "reason": h.reason,
                    "ramp_minutes": h.ramp_minutes,
                }
                for h in await outreach.controls.history(20)
            ],
        }

    async def sending(self, request: web.Request) -> web.Response:
        outreach, settings = self.outreach, self.outreach.settings
        if request.method == "GET":
            return web.json_response(await self.sending_state())
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        action = request.match_info["action"]
        scope = str(body.get("scope") or GLOBAL)
        actor = str(body.get("actor") or "")
        try:
            if action == "pause":
                await outreach.controls.pause(
                    scope, actor=actor, reason=str(body.get("reason", ""))
                )
            else:
                ramp = body.get("ramp_minutes")
                await outreach.controls.resume(
                    scope,
                    actor=actor,
                    ramp_minutes=settings.resume_ramp_minutes if ramp is None else float(ramp),
                )
        except (ControlError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        await outreach.controls_watcher.refresh()  # this worker at once, the others within 1 s
        return web.json_response(await self.sending_state())

    async def explain_customer(self, request: web.Request) -> web.Response:
        outreach = self.outreach
        customer_id = request.match_info["customer_id"]
        return web.json_response(
            {
                "customer_id": customer_id,
                "decisions": await _explain(outreach, customer_id=customer_id),
            }
        )

    async def explain_order(self, request: web.Request) -> web.Response:
        outreach = self.outreach
        order_id = request.match_info["order_id"]
        return web.json_response(
            {"order_id": order_id, "decisions": await _explain(outreach, order_id=order_id)}
        )

    async def unsubscribe(self, request: web.Request) -> web.Response:
        outreach = self.outreach
        token = request.query.get("token", "")
        parsed = read_token(token, outreach.delivery.links.unsubscribe_secret)
        if parsed is None:
            return web.Response(status=400, text="This unsubscribe link is not valid.")
        customer_id, channel, _decision = parsed
        if request.method == "GET":
            page = (
                f"<!doctype html><html><body><form method='post'>"
                f"<p>Stop messages by {html.escape(channel)}?</p>"
                f"<button type='submit'>Unsubscribe</button></form></body></html>"
            )
            return web.Response(text=page, content_type="text/html")
        if outreach.delivery.optouts is not None:
            await outreach.delivery.optouts.opted_out(
                customer_id, channel, "email_unsubscribe", outreach.wall.now()
            )
        return web.Response(text="You are unsubscribed. We will not message you this way again.")


def routes(outreach: Outreach) -> list[web.RouteDef]:
    settings = outreach.settings
    token = settings.operator_token.get_secret_value() if settings.operator_token else None
    handlers = WorkerRoutes(outreach)
    return [
        *webhook_routes(outreach),
        *survey_routes(outreach),
        # Operators only: who was written to, why, and the kill switch.
        web.get(
            "/customers/{customer_id}/explain", operator_only(token, handlers.explain_customer)
        ),
        web.get("/orders/{order_id}/explain", operator_only(token, handlers.explain_order)),
        web.get("/ops/sending", operator_only(token, handlers.sending)),
        web.post("/ops/sending/{action:pause|resume}", operator_only(token, handlers.sending)),
        web.get("/unsubscribe", handlers.unsubscribe),
        web.post("/unsubscribe", handlers.unsubscribe),
    ]
