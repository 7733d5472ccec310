"""Provider webhooks: Twilio status callbacks and inbound SMS/WhatsApp
(X-Twilio-Signature), SendGrid's signed Event Webhook (ECDSA) and its Inbound Parse
(email replies, HTTP Basic). An unsigned or forged request changes nothing; a valid one
moves the ledger, hands a reply to the conversations (services/outreach/conversations.py)
and, for unsubscribes and spam reports, tells preferences through outreach.optouts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.logs import get_logger
from services.outreach.adapters import sendgrid_inbound
from services.outreach.conversations import Inbound, Received

if TYPE_CHECKING:
    from services.outreach.bootstrap import Outreach

log = get_logger(__name__)
TWILIO_FAILED = frozenset({"failed", "undelivered"})
SENDGRID_FAILED = frozenset({"bounce", "dropped"})
SENDGRID_OPT_OUT = frozenset({"unsubscribe", "group_unsubscribe", "spamreport"})


def _twiml(message: str | None = None) -> web.Response:
    body = '<?xml version="1.0" encoding="UTF-8"?><Response>'
    if message:
        from xml.sax.saxutils import escape

        body += f"<Message>{escape(message)}</Message>"
    return web.Response(text=body + "</Response>", content_type="application/xml")


class Webhooks:
    """The handlers, each checking its provider's signature first."""

    def __init__(self, outreach: Outreach) -> None:
        self.outreach = outreach
        self.settings = outreach.settings
        self.delivery = outreach.delivery
        self.base = self.settings.public_base_url.rstrip("/")

    def twilio_valid(self, request: web.Request, params: dict[str, str]) -> bool:
        token = self.settings.twilio_auth_token
        if token is None:
            return False
        from twilio.request_validator import RequestValidator

        url = self.base + request.path_qs
        signature = request.headers.get("X-Twilio-Signature", "")
        return bool(signature) and RequestValidator(token.get_secret_value()).validate(
            url, params, signature
        )

    async def twilio_status(self, request: web.Request) -> web.Response:
        params = {k: str(v) for k, v in (await request.post()).items()}
        if not self.twilio_valid(request, params):
            return web.Response(status=403, text="invalid signature")
        delivery = self.delivery
        decision_id = request.query.get("decision_id", "")
        status = params.get("MessageStatus", "")
        now = self.outreach.wall.now()
        if status in ("queued", "sending", "sent", "accepted", "scheduled"):
            await delivery.on_delivery_status(
                decision_id, "accepted", now, provider_message_id=params.get("MessageSid")
            )
        elif status == "delivered":
            await delivery.on_delivery_status(
                decision_id, "delivered", now, provider_message_id=params.get("MessageSid")
            )
        elif status in TWILIO_FAILED:
            code = params.get("ErrorCode", "")
            await delivery.on_delivery_status(
                decision_id, "failed", now, reason=f"twilio_{status}_{code}".rstrip("_")
            )
            if code == "21610" and delivery.optouts is not None:
                row = await self.outreach.ledger.get(decision_id)
                if row is not None:
                    await delivery.optouts.opted_out(
                        row.customer_id, row.channel or "sms", "twilio_error_21610", now, code=code
                    )
        return web.Response(status=204)

    async def twilio_inbound(self, request: web.Request) -> web.Response:
        """An SMS or WhatsApp reply: kept with its conversation and read; STOP, START
        and HELP in every shipped language; HELP answered in the customer's language."""
        params = {k: str(v) for k, v in (await request.post()).items()}
        if not self.twilio_valid(request, params):
            return web.Response(status=403, text="invalid signature")
        sender = params.get("From", "")
        inbound = Inbound(
            channel="whatsapp" if sender.startswith("whatsapp:") else "sms",
            address=sender.removeprefix("whatsapp:"),
            text=params.get("Body", ""),
            provider_id=params.get("MessageSid", ""),
            received_at=self.outreach.wall.now(),
        )
        received = await self._receive(inbound)
        if received is None:
            return web.Response(status=503, text="try again")
        # The carrier and Twilio confirm STOP themselves; HELP is answered here.
        return _twiml(received.answer)

    async def _receive(self, inbound: Inbound) -> Received | None:
        """The reply handed to the conversations; None when not all of it could be
        carried out (what was kept, the sweep finishes; the provider may retry)."""
        try:
            return await self.outreach.conversations.receive(inbound)
        except Exception as exc:
            log.warning("reply_not_carried_out", channel=inbound.channel, error=repr(exc))
            return None

    async def sendgrid_inbound(self, request: web.Request) -> web.Response:
        """An email reply through SendGrid's Inbound Parse (multipart form: from, to,
        text, headers, ...). The Parse URL carries HTTP Basic credentials; the reply-to
        address it was sent to names the message it answers."""
        user, password = self.settings.inbound_parse_user, self.settings.inbound_parse_password
        if user is None or password is None:
            return web.Response(status=404)
        given = request.headers.get("Authorization", "")
        if not sendgrid_inbound.basic_auth_ok(given, user, password.get_secret_value()):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="inbound"'})
        form = await request.post()
        secret = self.settings.secret(self.settings.reply_secret, "replies")
        email = sendgrid_inbound.read({k: v for k, v in form.items() if isinstance(v, str)}, secret)
        if email is None:
            log.info("inbound_email_not_ours")
            return web.Response(status=204)  # acknowledged: retrying would not help
        inbound = Inbound(
            channel="email",
            address=email.sender,
            text=email.text,
            provider_id=email.message_id,
            received_at=self.outreach.wall.now(),
            decision_id=email.decision_id,
        )
        received = await self._receive(inbound)
        return web.Response(status=503 if received is None else 204)

    async def sendgrid_events(self, request: web.Request) -> web.Response:
        payload = await request.text()
        now = self.outreach.wall.now()
        refusal = sendgrid_inbound.event_webhook_refusal(
            self.settings.sendgrid_webhook_public_key,
            payload,
            request.headers.get("X-Twilio-Email-Event-Webhook-Signature", ""),
            request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", ""),
            now.timestamp(),
            self.settings.webhook_max_age_s,
        )
        if refusal is not None:
            return web.Response(status=403, text=refusal)
        try:
            events: Any = json.loads(payload)
        except json.JSONDecodeError:
            return web.Response(status=400, text="not JSON")
        if not isinstance(events, list):
            return web.Response(status=400, text="not a list of events")
        for event in events:
            if isinstance(event, dict):  # anything else is not SendGrid's, not ours to act on
                await self._sendgrid_event(event, now)
        return web.Response(status=204)

    async def _sendgrid_event(self, event: dict[str, Any], now: datetime) -> None:
        delivery = self.delivery
        kind = str(event.get("event", ""))
        decision_id = str(event.get("decision_id", ""))
        if kind in ("processed", "deferred"):
            await delivery.on_delivery_status(
                decision_id, "accepted", now, provider_message_id=event.get("sg_message_id")
            )
        elif kind == "delivered":
            await delivery.on_delivery_status(
                decision_id, "delivered", now, provider_message_id=event.get("sg_message_id")
            )
        elif kind in SENDGRID_FAILED:
            await delivery.on_delivery_status(decision_id, "failed", now, reason=f"sendgrid_{kind}")
        if kind in SENDGRID_OPT_OUT and delivery.optouts is not None:
            row = await self.outreach.ledger.get(decision_id)
            if row is not None:
                source = "spam_report" if kind == "spamreport" else "email_unsubscribe"
                await delivery.optouts.opted_out(row.customer_id, "email", source, now)


def routes(outreach: Outreach) -> list[web.RouteDef]:
    hooks = Webhooks(outreach)
    return [
        web.post("/webhooks/twilio/status", hooks.twilio_status),
        web.post("/webhooks/twilio/inbound", hooks.twilio_inbound),
        web.post("/webhooks/sendgrid/inbound", hooks.sendgrid_inbound),
        web.post("/webhooks/sendgrid/events", hooks.sendgrid_events),
    ]
