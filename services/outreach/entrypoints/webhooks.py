"""Provider webhooks: Twilio status callbacks and inbound SMS (X-Twilio-Signature), and
SendGrid's signed Event Webhook (ECDSA). An unsigned or forged request gets 403 and
changes nothing; a valid one moves the ledger and, for STOP/unsubscribe/spam reports,
tells preferences through outreach.optouts."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.logs import get_logger

if TYPE_CHECKING:
    from services.outreach.bootstrap import Outreach

log = get_logger(__name__)
STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "STOPP", "ARRET", "ARRÊT"}
)
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO", "HILFE", "AIDE"})
TWILIO_FAILED = frozenset({"failed", "undelivered"})
SENDGRID_FAILED = frozenset({"bounce", "dropped"})
SENDGRID_OPT_OUT = frozenset({"unsubscribe", "group_unsubscribe", "spamreport"})


def _twiml(message: str | None = None) -> web.Response:
    body = '<?xml version="1.0" encoding="UTF-8"?><Response>'
    if message:
        from xml.sax.saxutils import escape

        body += f"<Message>{escape(message)}</Message>"
    return web.Response(text=body + "</Response>", content_type="application/xml")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


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
        params = {k: str(v) for k, v in (await request.post()).items()}
        if not self.twilio_valid(request, params):
            return web.Response(status=403, text="invalid signature")
        delivery = self.delivery
        word = params.get("Body", "").strip().upper()
        sender = params.get("From", "")
        channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
        address = sender.removeprefix("whatsapp:")
        customer_id = await delivery.customer_for_address(channel, address)
        now = self.outreach.wall.now()
        if word in STOP_WORDS:
            if customer_id and delivery.optouts is not None:
                await delivery.optouts.opted_out(customer_id, channel, "sms_stop", now)
            log.info("inbound_stop", known_customer=bool(customer_id), channel=channel)
            return _twiml()  # the carrier/Twilio confirms STOP itself
        if word in START_WORDS:
            if customer_id and delivery.optouts is not None:
                await delivery.optouts.opted_in(customer_id, channel, "sms_start", now)
            return _twiml()
        if word in HELP_WORDS:
            links = delivery.links
            return _twiml(
                f"{links.shop_name}: help at {links.support_url} or "
                f"{links.support_phone}. Reply STOP to opt out."
            )
        return _twiml()

    async def sendgrid_events(self, request: web.Request) -> web.Response:
        key = self.settings.sendgrid_webhook_public_key
        payload = await request.text()
        signature = request.headers.get("X-Twilio-Email-Event-Webhook-Signature", "")
        timestamp = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
        if key is None or not signature or not timestamp:
            return web.Response(status=403, text="unsigned")
        from sendgrid.helpers.eventwebhook import EventWebhook

        try:
            verifier = EventWebhook(key)
            valid = verifier.verify_signature(payload, signature, timestamp)
        except (ValueError, TypeError):
            valid = False
        if not valid:
            return web.Response(status=403, text="invalid signature")
        now = self.outreach.wall.now()
        # A valid signature over an old timestamp is a replayed request.
        if abs(now.timestamp() - _number(timestamp)) > self.settings.webhook_max_age_s:
            return web.Response(status=403, text="stale timestamp")
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
        web.post("/webhooks/sendgrid/events", hooks.sendgrid_events),
    ]
