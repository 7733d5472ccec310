"""What SendGrid posts to outreach, checked and read: email replies as its Inbound Parse
posts them (multipart form fields `from`, `to`, `cc`, `text`, `html`, `headers`, ...) —
who sent it, which message of ours it answers (the signed reply-to address it was sent
to), its own words, its Message-ID —, the HTTP Basic check of the Parse URL's
credentials, and the signature of its Event Webhook (ECDSA)."""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from email.parser import Parser
from email.utils import getaddresses, parseaddr
from html import unescape

from services.outreach.domain.replies import read_reply_address, without_quote


@dataclass(frozen=True)
class InboundEmail:
    sender: str
    decision_id: str
    text: str
    message_id: str


def read(fields: dict[str, str], secret: str) -> InboundEmail | None:
    """The reply, or None when it answers no message of ours (or has no sender)."""
    decision_id = None
    for _, address in getaddresses([fields.get("to", ""), fields.get("cc", "")]):
        decision_id = decision_id or read_reply_address(address, secret)
    sender = parseaddr(fields.get("from", ""))[1].lower()
    if not sender or decision_id is None:
        return None
    headers = Parser().parsestr(fields.get("headers", ""), headersonly=True)
    return InboundEmail(
        sender=sender,
        decision_id=decision_id,
        text=without_quote(fields.get("text", "") or html_text(fields.get("html", ""))),
        message_id=str(headers.get("Message-ID", "")).strip(),
    )


def html_text(html: str) -> str:
    """An HTML-only reply's text: quoted blocks, styles and scripts out, tags out,
    entities read."""
    html = re.sub(r"(?is)<(blockquote|style|script)\b.*?</\1>", "", html)
    html = re.sub(r"(?i)<br\s*/?>|</p>|</div>", "\n", html)
    return unescape(re.sub(r"<[^>]+>", "", html))


def basic_auth_ok(header: str, user: str, password: str) -> bool:
    """Whether an Authorization header carries these HTTP Basic credentials (compared
    in constant time)."""
    if not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return False
    given_user, _, given_password = given.partition(":")
    same_user = hmac.compare_digest(given_user.encode(), user.encode())
    return hmac.compare_digest(given_password.encode(), password.encode()) and same_user


def event_webhook_refusal(
    key: str | None, payload: str, signature: str, timestamp: str, now: float, max_age_s: float
) -> str | None:
    """Why a signed Event Webhook request is refused (unsigned, a signature that does
    not verify, a valid one over an old timestamp: a replay), or None to accept it."""
    if key is None or not signature or not timestamp:
        return "unsigned"
    from sendgrid.helpers.eventwebhook import EventWebhook

    try:
        valid = EventWebhook(key).verify_signature(payload, signature, timestamp)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        return "invalid signature"
    try:
        stamped = float(timestamp)
    except ValueError:
        stamped = 0.0
    return "stale timestamp" if abs(now - stamped) > max_age_s else None
