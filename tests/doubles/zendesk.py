"""A local Zendesk Support API, enough of it for the helpdesk adapter's client (zenpy):
tickets listed by external id, created and updated (`/api/v2/tickets.json`,
`/api/v2/tickets/{id}.json`), with HTTP Basic `{email}/token:{token}` as Zendesk checks
it; and the webhook Zendesk's trigger sends when an agent changes a ticket, signed as
Zendesk signs (X-Zendesk-Webhook-Signature: base64 HMAC-SHA256 of timestamp + body)."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from services.outreach.adapters.zendesk import webhook_signature
from tests.doubles.base import Fault, ProviderDouble, Reply
from tests.doubles.callbacks import post


class ZendeskDouble(ProviderDouble):
    """`tickets`: id → the ticket as Zendesk keeps it (`comments`: every comment body)."""

    def __init__(self, latency_s: float = 0.0) -> None:
        super().__init__(latency_s)
        self.subdomain = "shop"
        self.email = "bot@shop.example"
        self.token = secrets.token_urlsafe(24)
        self.webhook_secret = secrets.token_urlsafe(24)
        self.tickets: dict[int, dict[str, Any]] = {}
        self._ids = iter(range(1001, 10**6))
        self._tickets_lock = threading.Lock()

    def creates_message(self, method: str, path: str) -> bool:
        return method == "POST" and path.split("?")[0] == "/api/v2/tickets.json"

    def fault_reply(self, fault: Fault) -> Reply:
        headers = {"Retry-After": str(int(fault.retry_after or 1))} if fault.status == 429 else {}
        return Reply.json(fault.status, {"error": "unavailable"}, **headers)

    def _authorised(self, headers: dict[str, str]) -> bool:
        expected = base64.b64encode(f"{self.email}/token:{self.token}".encode()).decode()
        return headers.get("authorization") == f"Basic {expected}"

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if not self._authorised(headers):
            return Reply.json(401, {"error": "Couldn't authenticate you"})
        route, _, query = path.partition("?")
        params = urllib.parse.parse_qs(query)
        if route == "/api/v2/tickets.json" and method == "GET":
            wanted = (params.get("external_id") or [None])[0]
            with self._tickets_lock:
                found = [t for t in self.tickets.values() if t["external_id"] == wanted]
            return Reply.json(200, {"tickets": found, "next_page": None, "count": len(found)})
        if route == "/api/v2/tickets.json" and method == "POST":
            return self._create(json.loads(body)["ticket"])
        if route.startswith("/api/v2/tickets/") and method == "PUT":
            ticket_id = int(route.removeprefix("/api/v2/tickets/").removesuffix(".json"))
            return self._update(ticket_id, json.loads(body)["ticket"])
        return Reply.json(404, {"error": "InvalidEndpoint"})

    def _create(self, given: dict[str, Any]) -> Reply:
        if not given.get("comment", {}).get("body"):
            return Reply.json(422, {"error": "RecordInvalid", "details": {"comment": "blank"}})
        now = datetime.now(UTC).isoformat()
        with self._tickets_lock:
            ticket = {
                "id": next(self._ids),
                "url": "",
                "subject": given.get("subject"),
                "status": "new",
                "priority": given.get("priority"),
                "tags": list(given.get("tags") or []),
                "external_id": given.get("external_id"),
                "created_at": now,
                "updated_at": now,
                "comments": [given["comment"]["body"]],
            }
            self.tickets[ticket["id"]] = ticket
        self.record({"ticket": ticket["id"]})
        return Reply.json(201, {"ticket": _public(ticket), "audit": {"id": 1, "events": []}})

    def _update(self, ticket_id: int, given: dict[str, Any]) -> Reply:
        with self._tickets_lock:
            ticket = self.tickets.get(ticket_id)
            if ticket is None:
                return Reply.json(404, {"error": "RecordNotFound"})
            if given.get("comment", {}).get("body"):
                ticket["comments"].append(given["comment"]["body"])
            if "tags" in given:
                ticket["tags"] = list(given["tags"])
            ticket["updated_at"] = datetime.now(UTC).isoformat()
        return Reply.json(200, {"ticket": _public(ticket), "audit": {"id": 2, "events": []}})

    # --- what an agent does --------------------------------------------------------

    def agent_sets(
        self, url: str, ticket_id: int, status: str, tags: list[str] = (), secret: str = ""
    ) -> int:
        """An agent sets the ticket's status and adds `tags`; the trigger posts its
        webhook to `url` (signed with `secret`, by default the webhook's own). Returns the
        HTTP status the receiver answered."""
        with self._tickets_lock:
            ticket = self.tickets[ticket_id]
            ticket["status"] = status
            ticket["tags"] = [*ticket["tags"], *tags]
            payload = {
                "ticket_id": ticket_id,
                "external_id": ticket["external_id"],
                "status": status,
                "tags": " ".join(ticket["tags"]),  # {{ticket.tags}}: space-separated
                "agent": "Agent Smith",
            }
        body = json.dumps(payload).encode()
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return post(
            url,
            body,
            {
                "Content-Type": "application/json",
                "X-Zendesk-Webhook-Signature-Timestamp": stamp,
                "X-Zendesk-Webhook-Signature": webhook_signature(
                    secret or self.webhook_secret, stamp, body
                ),
            },
        )


def _public(ticket: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ticket.items() if k != "comments"}
