"""SendGrid v3 Mail Send, as far as we use it: POST /v3/mail/send.

Checks the bearer key, validates like the real API (personalizations, from, subject,
content order, custom_args and header types, categories) and answers 202 with
X-Message-Id; errors in SendGrid's {"errors": [...]} shape.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from typing import Any

from tests.doubles.base import Fault, ProviderDouble, Reply

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _error(status: int, message: str, field: str | None = None, **headers: str) -> Reply:
    return Reply.json(
        status, {"errors": [{"message": message, "field": field, "help": None}]}, **headers
    )


class SendGridDouble(ProviderDouble):
    def __init__(self, api_key: str | None = None, latency_s: float = 0.0) -> None:
        super().__init__(latency_s)
        self.api_key = api_key or "SG." + secrets.token_urlsafe(16) + "." + secrets.token_urlsafe(
            24
        )

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
