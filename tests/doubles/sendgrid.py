"""SendGrid v3 Mail Send, as far as we use it: POST /v3/mail/send.

Checks the bearer key, validates like the real API (personalizations, from, subject,
content order, custom_args and header types, categories) and answers 202 with
X-Message-Id; errors in SendGrid's {"errors": [...]} shape. With an
`event_webhook_url`, each recipient's `processed` then `delivered` (or `bounce` for an
address in `undeliverable`) is posted there, signed as SendGrid's Event Webhook signs.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import secrets
import string
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.doubles.base import Fault, ProviderDouble, Reply
from tests.doubles.callbacks import Callback, post, sendgrid_signature

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _error(status: int, message: str, field: str | None = None, **headers: str) -> Reply:
    return Reply.json(
        status, {"errors": [{"message": message, "field": field, "help": None}]}, **headers
    )


BOUNCE = {
    "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
    "status": "5.1.1",
    "type": "bounce",
}


class SendGridDouble(ProviderDouble):
    """`event_webhook_url` (None: no events): where events about accepted mail go,
    `processed` after `processed_after_s` (0.05), `delivered` (or `bounce` for an address
    in `undeliverable`) after `delivered_after_s` (0.2), through `dispatcher`, signed
    with `signing_key` (verify with `webhook_public_key`)."""

    batch_callbacks = True

    def __init__(self, api_key: str | None = None, latency_s: float = 0.0) -> None:
        super().__init__(latency_s)
        self.api_key = api_key or "SG." + secrets.token_urlsafe(16) + "." + secrets.token_urlsafe(
            24
        )
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.event_webhook_url: str | None = None
        self.undeliverable: set[str] = set()
        self.processed_after_s = 0.05
        self.delivered_after_s = 0.2

    @property
    def webhook_public_key(self) -> str:
        """Base64 DER SubjectPublicKeyInfo: SENDGRID_WEBHOOK_PUBLIC_KEY for the receiver."""
        der = self.signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def creates_message(self, method: str, path: str) -> bool:
        return method == "POST" and path.split("?")[0] == "/v3/mail/send"

    def fault_reply(self, fault: Fault) -> Reply:
        headers = {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "1",
        }
        if fault.retry_after:
            headers["Retry-After"] = str(int(fault.retry_after))
        if fault.status == 429:
            return _error(429, "too many requests", **headers)
        return _error(fault.status, "internal server error", **headers)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if path.split("?")[0] != "/v3/mail/send" or method != "POST":
            return _error(404, "not found")
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "The provided authorization grant is invalid, expired, or revoked")
        try:
            mail = json.loads(body)
        except json.JSONDecodeError:
            return _error(400, "Bad Request", None)
        problem = validate(mail)
        if problem is not None:
            return _error(400, problem[1], problem[0])
        message_id = "".join(
            secrets.choice(string.ascii_letters + string.digits + "-_") for _ in range(22)
        )
        self.record({"message_id": message_id, "json": mail, "headers": headers})
        return Reply(202, b"", {"X-Message-Id": message_id})

    # --- Inbound Parse -------------------------------------------------------------

    def inbound_parse(
        self,
        url: str,
        *,
        from_: str,
        to: str,
        text: str,
        subject: str = "Re: your order",
        html: str = "",
        message_id: str | None = None,
        auth: tuple[str, str] | None = None,
    ) -> int:
        """An email reply as SendGrid's Inbound Parse posts it to `url` (multipart form
        data: headers, from, to, subject, text, html, envelope, charsets, SPF, ...), with
        HTTP Basic `auth` as the Parse URL's user:password@ gives it."""
        message_id = message_id or f"<{secrets.token_hex(12)}@mail.example>"
        raw_headers = (
            f"Received: by mx.sendgrid.net\nFrom: {from_}\nTo: {to}\n"
            f"Subject: {subject}\nMessage-ID: {message_id}\nMIME-Version: 1.0\n"
        )
        fields = {
            "headers": raw_headers,
            "dkim": "{@mail.example : pass}",
            "to": to,
            "from": from_,
            "subject": subject,
            "text": text,
            "html": html,
            "sender_ip": "192.0.2.10",
            "envelope": json.dumps({"to": [to.split("<")[-1].rstrip(">")], "from": from_}),
            "attachments": "0",
            "charsets": json.dumps(
                {"to": "UTF-8", "from": "UTF-8", "subject": "UTF-8", "text": "UTF-8"}
            ),
            "SPF": "pass",
        }
        boundary = "xYzZY" + secrets.token_hex(8)
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        ]
        body = ("".join(parts) + f"--{boundary}--\r\n").encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return post(url, body, headers)

    # --- event webhook -------------------------------------------------------------

    def encode_callback(
        self, url: str, payloads: list[dict[str, Any]]
    ) -> tuple[bytes, dict[str, str]]:
        """A JSON array of events, signed over timestamp + body."""
        body = json.dumps(payloads)
        stamp = str(int(time.time()))
        return body.encode(), {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": sendgrid_signature(
                self.signing_key, stamp, body
            ),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }

    def event(
        self,
        message: dict[str, Any],
        email: str,
        args: dict[str, str],
        name: str,
        at: float,
        **extra: Any,
    ) -> Callback:
        """One event about `email` as SendGrid posts it; custom `args` are top-level."""
        assert self.event_webhook_url is not None
        payload = {
            **args,
            "email": email,
            "timestamp": int(at),
            "event": name,
            "sg_event_id": secrets.token_urlsafe(16),
            "sg_message_id": f"{message['message_id']}.filterdrecv-1.0",
            "category": list(message["json"].get("categories") or []),
            **extra,
        }
        return Callback(self.event_webhook_url, payload, name, args.get("decision_id"))

    def accepted(self, message: dict[str, Any]) -> None:
        if self.event_webhook_url is None:
            return
        at, first, last = message["accepted_at"], self.processed_after_s, self.delivered_after_s
        for email, args in recipients(message["json"]):
            event = functools.partial(self.event, message, email, args)
            failed = email in self.undeliverable
            final = (
                event("bounce", at + last, **BOUNCE) if failed else event("delivered", at + last)
            )
            self.dispatcher.schedule(
                [(first, event("processed", at + first)), (last, final)],
                contradiction=None if failed else event("bounce", at, **BOUNCE),  # stale stamp
            )


def recipients(mail: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(address, custom_args) for every to/cc/bcc of every personalization; a
    personalization's custom_args override the mail's."""
    found = []
    for p in mail["personalizations"]:
        args = {**(mail.get("custom_args") or {}), **(p.get("custom_args") or {})}
        for kind in ("to", "cc", "bcc"):
            found += [(r["email"], args) for r in p.get(kind) or []]
    return found


def validate(mail: Any) -> tuple[str, str] | None:
    """(field, message) of the first problem, or None."""
    if not isinstance(mail, dict):
        return None, "Bad Request"  # type: ignore[return-value]
    personalizations = mail.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return (
            "personalizations",
            "The personalizations field is required and must have at least one personalization.",
        )
    for p in personalizations:
        to = p.get("to") if isinstance(p, dict) else None
        if not isinstance(to, list) or not to:
            return (
                "personalizations.0.to",
                "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
            )
        for recipient in to:
            if not EMAIL.match(str(recipient.get("email", ""))):
                return "personalizations.0.to.0.email", "Does not contain a valid address."
    sender = mail.get("from")
    if not isinstance(sender, dict) or not EMAIL.match(str(sender.get("email", ""))):
        return "from.email", "The from email does not contain a valid address."
    if not mail.get("template_id"):
        if not mail.get("subject") and not any(p.get("subject") for p in personalizations):
            return (
                "subject",
                "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
            )
        content = mail.get("content")
        if not isinstance(content, list) or not content:
            return (
                "content",
                "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.",
            )
        types = [c.get("type") for c in content]
        if (
            "text/plain" in types
            and "text/html" in types
            and types.index("text/plain") > types.index("text/html")
        ):
            return (
                "content",
                "If present, text/plain and text/html may only be provided in the following order: text/plain, text/html.",
            )
        if any(not c.get("value") for c in content):
            return (
                "content.0.value",
                "The content value must be a string at least one character in length.",
            )
    for field in ("custom_args", "headers"):
        values = mail.get(field) or {}
        if any(not isinstance(v, str) for v in values.values()):
            return (
                field,
                f"Invalid type. Expected: string, given: number. ({field} values must be strings)",
            )
    categories = mail.get("categories") or []
    if len(categories) > 10 or any(not isinstance(c, str) for c in categories):
        return "categories", "You can only add up to 10 categories, each a string."
    return None
