"""Zendesk, through its maintained Python client (zenpy): a hand-off becomes a ticket
(one per case, found again by its external id), a later reply to the same case a note on
it; and the signature of Zendesk's webhooks. zenpy is synchronous: its calls run in a
thread. Zendesk unreachable, throttling past the budget or answering 5xx is an outage
(the consumer holds the hand-off until it is back), never a lost case."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from typing import Any
from urllib.parse import urlsplit

from common.outages import DependencyUnavailable
from services.outreach.domain.helpdesk import TicketDraft


class ZendeskDesk:
    def __init__(
        self,
        subdomain: str,
        email: str,
        token: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        ratelimit_budget_s: float = 30.0,
    ) -> None:
        from zenpy import Zenpy

        if base_url:  # a regional proxy or a test double instead of <subdomain>.zendesk.com
            parts = urlsplit(base_url)
            os.environ["ZENPY_FORCE_SCHEME"] = parts.scheme
            os.environ["ZENPY_FORCE_NETLOC"] = parts.netloc
        self.client = Zenpy(
            subdomain=subdomain,
            email=email,
            token=token,
            timeout=timeout_s,
            ratelimit_budget=ratelimit_budget_s,
            disable_cache=True,
        )

    async def open_case(self, draft: TicketDraft, note: str, note_tag: str | None) -> int:
        """The case's ticket id: created with `draft` if there is none yet; otherwise
        `note` added to it once (`note_tag` marks it as added)."""
        return await asyncio.to_thread(self._guarded, self._open_case, draft, note, note_tag)

    def _open_case(self, draft: TicketDraft, note: str, note_tag: str | None) -> int:
        from zenpy.lib.api_objects import Comment, Ticket

        found = list(self.client.tickets(external_id=draft.external_id))
        if not found:
            created = self.client.tickets.create(
                Ticket(
                    subject=draft.subject,
                    comment=Comment(body=draft.body, public=False),
                    tags=list(draft.tags),
                    priority=draft.priority,
                    external_id=draft.external_id,
                )
            )
            return int(created.ticket.id)
        ticket = found[0]
        if note_tag is not None and note_tag not in (ticket.tags or []):
            ticket.comment = Comment(body=note, public=False)
            ticket.tags = [*(ticket.tags or []), note_tag]
            self.client.tickets.update(ticket)
        return int(ticket.id)

    def _guarded(self, call: Any, *args: Any) -> Any:
        import requests
        from zenpy.lib.exception import APIException, RatelimitBudgetExceeded

        try:
            return call(*args)
        except (requests.ConnectionError, requests.Timeout, RatelimitBudgetExceeded) as exc:
            raise DependencyUnavailable("zendesk", type(exc).__name__) from None
        except (APIException, requests.HTTPError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
            if status >= 500 or status == 429:
                raise DependencyUnavailable("zendesk", f"HTTP {status}") from None
            raise


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """X-Zendesk-Webhook-Signature: base64 HMAC-SHA256 of the timestamp and the body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def webhook_valid(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return bool(signature) and hmac.compare_digest(
        webhook_signature(secret, timestamp, body), signature
    )
