"""Twilio Programmable Messaging, as far as we use it: create and fetch a Message.

Checks HTTP Basic credentials, validates like the real API (error codes 20003, 21211,
21602, 21603, 21610, 21617, 63007) and answers with the real resource shape. With
`auto_callbacks`, a message with a StatusCallback reports `sent` then `delivered` (or
`undelivered` 30003 for a number in `undeliverable`) there, signed as Twilio signs.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
import urllib.parse
from email.utils import formatdate
from typing import Any

from tests.doubles.base import Fault, ProviderDouble, Reply
from tests.doubles.callbacks import Callback, post, post_reading, twilio_signature

E164 = re.compile(r"^\+[1-9]\d{7,14}$")
MESSAGES = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages(?:/([^/.]+))?\.json")
GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXT = set("^{}\\[~]|€\f")


def segments(body: str) -> int:
    if all(c in GSM7 or c in GSM7_EXT for c in body):
        units = sum(2 if c in GSM7_EXT else 1 for c in body)
        return 1 if units <= 160 else -(-units // 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


class TwilioDouble(ProviderDouble):
    """`opted_out`: numbers answered with 21610. `auto_callbacks` (False): post status
    callbacks by itself, `sent` after `sent_after_s` (0.05) and `delivered` (or
    `undelivered` for a number in `undeliverable`) after `delivered_after_s` (0.2),
    through `dispatcher`."""

    def __init__(
        self, account_sid: str | None = None, auth_token: str | None = None, latency_s: float = 0.0
    ) -> None:
        super().__init__(latency_s)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.opted_out: set[str] = set()
        self.undeliverable: set[str] = set()
        self.auto_callbacks = False
        self.sent_after_s = 0.05
        self.delivered_after_s = 0.2
        self._by_sid: dict[str, dict[str, Any]] = {}

    def _error(self, status: int, code: int, message: str, **headers: str) -> Reply:
        return Reply.json(
            status,
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            **headers,
        )

    def fault_reply(self, fault: Fault) -> Reply:
        extra = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after else {}
        if fault.status == 429:
            return self._error(429, 20429, "Too Many Requests", **extra)
        return self._error(fault.status, 20500, "Internal Server Error", **extra)

    def _authorised(self, headers: dict[str, str]) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return headers.get("authorization") == f"Basic {expected}"

    def creates_message(self, method: str, path: str) -> bool:
        match = MESSAGES.match(path)
        return method == "POST" and match is not None and match.group(2) is None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        match = MESSAGES.match(path)
        if match is None:
            return self._error(404, 20404, "The requested resource was not found")
        if not self._authorised(headers) or match.group(1) != self.account_sid:
            return self._error(401, 20003, "Authenticate")
        if method == "GET" and match.group(2):
            found = self._by_sid.get(match.group(2))
            return Reply.json(200, found) if found else self._error(404, 20404, "Not found")
        if method == "GET":
            return self._list(path)
        if method != "POST":
            return self._error(405, 20004, "Method not allowed")
        form = {
            k: v[-1]
            for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()
        }
        to, sender, text = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        whatsapp = to.startswith("whatsapp:")
        number = to.removeprefix("whatsapp:")
        if not E164.match(number):
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not sender and not form.get("MessagingServiceSid"):
            return self._error(
                400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required"
            )
        if whatsapp != sender.startswith("whatsapp:"):
            return self._error(
                400, 63007, "Twilio could not find a Channel with the specified From address"
            )
        if not text and not form.get("MediaUrl"):
            return self._error(400, 21602, "Message body is required.")
        if len(text) > 1600:
            return self._error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if number in self.opted_out:
            return self._error(400, 21610, "Attempt to send to unsubscribed recipient")
        sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=True)
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": text,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": str(segments(text)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "to": to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
        }
        self._by_sid[sid] = resource
        self.record({"sid": sid, **form, "resource": resource})
        return Reply.json(201, resource)

    def _list(self, path: str) -> Reply:
        """GET .../Messages.json?To=&From=&PageSize=: newest first, one page."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
        size = min(int(query.get("PageSize", 50)), 1000)
        with self._lock:
            rows = list(self._by_sid.values())
        rows = [
            r
            for r in reversed(rows)
            if query.get("To", r["to"]) == r["to"] and query.get("From", r["from"]) == r["from"]
        ][:size]
        uri = path.split("?", 1)[0]
        return Reply.json(
            200,
            {
                "messages": rows,
                "end": max(len(rows) - 1, 0),
                "first_page_uri": uri,
                "next_page_uri": None,
                "previous_page_uri": None,
                "page": 0,
                "page_size": size,
                "start": 0,
                "uri": path,
            },
        )

    # --- status callbacks ---------------------------------------------------------

    def encode_callback(
        self, url: str, payloads: list[dict[str, Any]]
    ) -> tuple[bytes, dict[str, str]]:
        """One form POST, with X-Twilio-Signature over the original `url`."""
        (params,) = payloads
        return urllib.parse.urlencode(params).encode(), {
            "X-Twilio-Signature": twilio_signature(self.auth_token, url, params),
            "Content-Type": "application/x-www-form-urlencoded",
        }

    def status_callback(
        self, message: dict[str, Any], status: str, error_code: str | None = None
    ) -> Callback:
        """The callback Twilio sends to the message's StatusCallback for `status`."""
        url = message["StatusCallback"]
        params = {
            "MessageSid": message["sid"],
            "MessageStatus": status,
            "AccountSid": self.account_sid,
            "To": message["To"],
            "From": message.get("From", ""),
            "ApiVersion": "2010-04-01",
        }
        if error_code:
            params["ErrorCode"] = error_code
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        return Callback(url, params, status, (query.get("decision_id") or [None])[0])

    def accepted(self, message: dict[str, Any]) -> None:
        if not (self.auto_callbacks and message.get("StatusCallback")):
            return
        undelivered = self.status_callback(message, "undelivered", "30003")
        to = message["To"]
        failed = to in self.undeliverable or to.removeprefix("whatsapp:") in self.undeliverable
        final = undelivered if failed else self.status_callback(message, "delivered")
        self.dispatcher.schedule(
            [
                (self.sent_after_s, self.status_callback(message, "sent")),
                (self.delivered_after_s, final),
            ],
            contradiction=None if failed else undelivered,
        )

    def deliver_status(self, sid: str, status: str = "delivered") -> int:
        """Post a signed status callback for a message now, as Twilio does; returns the
        HTTP status our webhook answered."""
        message = next(m for m in self.messages if m["sid"] == sid)
        if not message.get("StatusCallback"):
            raise AssertionError(f"message {sid} has no StatusCallback")
        callback = self.status_callback(message, status)
        body, headers = self.encode_callback(callback.url, [callback.payload])
        return post(callback.url, body, headers, timeout_s=5)

    # --- inbound messages ----------------------------------------------------------

    def inbound(
        self,
        url: str,
        from_: str,
        body: str,
        *,
        to: str = "+15005550006",
        sid: str | None = None,
        auth_token: str | None = None,
    ) -> tuple[int, str]:
        """A customer's SMS (or WhatsApp, `from_` "whatsapp:+…") to our number, posted
        to our inbound webhook as Twilio does: a signed form (`auth_token` another token
        to forge it). Returns the status and the TwiML our webhook answered."""
        params = {
            "MessageSid": sid or "SM" + secrets.token_hex(16),
            "SmsSid": sid or "SM" + secrets.token_hex(16),
            "AccountSid": self.account_sid,
            "MessagingServiceSid": "",
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": str(segments(body)),
            "ApiVersion": "2010-04-01",
        }
        params["SmsSid"] = params["MessageSid"]
        signature = twilio_signature(auth_token or self.auth_token, url, params)
        return post_reading(
            url,
            urllib.parse.urlencode(params).encode(),
            {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
        )


__all__ = ["TwilioDouble", "segments", "threading"]


def provider_env(twilio: TwilioDouble, sendgrid: Any = None) -> dict[str, str]:
    """The environment that points the services' provider SDKs at these doubles (Twilio
    alone without `sendgrid`)."""
    env = {
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": twilio.base_url,
    }
    if sendgrid is not None:
        env["SENDGRID_API_KEY"] = sendgrid.api_key
        env["SENDGRID_FROM_EMAIL"] = "care@shop.example"
        env["SENDGRID_API_BASE_URL"] = sendgrid.base_url
    return env
