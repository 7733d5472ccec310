"""Telling preferences that a contact point opted out or back in (a STOP reply, a
provider's "unsubscribed" answer, the unsubscribe page): the port, the adapter that
publishes `contact.opted_out` / `contact.opted_in` on `outreach.optouts` (docs/events.md),
and a recording fake for tests."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from common.envelope import derived_id, new_event
from common.kafka import ProducerPort
from common.schemas import ContactChoice

CONTENT_TYPE = ("content-type", b"application/cloudevents+json")


class OptOuts(Protocol):
    """Where a contact point's opt-out (and opt-in) goes. Each call is idempotent by its
    cause (customer, channel, source, moment); raises when it could not be handed over."""

    async def opted_out(
        self, customer_id: str, channel: str, source: str, at: datetime, code: str | None = None
    ) -> None: ...

    async def opted_in(self, customer_id: str, channel: str, source: str, at: datetime) -> None: ...


class OptOutPublisher:
    """Publishes them on `topic`, keyed by customer, for preferences to apply."""

    def __init__(self, producer: ProducerPort, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def opted_out(
        self, customer_id: str, channel: str, source: str, at: datetime, code: str | None = None
    ) -> None:
        await self._publish(
            "contact.opted_out",
            derived_id("optout", customer_id, channel, source, at.isoformat()),
            ContactChoice.model_validate(
                {
                    "customer_id": customer_id,
                    "channel": channel,
                    "source": source,
                    "evidence": code or "",
                    "occurred_at": at,
                }
            ),
        )

    async def opted_in(self, customer_id: str, channel: str, source: str, at: datetime) -> None:
        await self._publish(
            "contact.opted_in",
            derived_id("optin", customer_id, channel, source, at.isoformat()),
            ContactChoice.model_validate(
                {
                    "customer_id": customer_id,
                    "channel": channel,
                    "source": source,
                    "occurred_at": at,
                }
            ),
        )

    async def _publish(self, type_: str, event_id: str, choice: ContactChoice) -> None:
        """The choice as its event, at the moment it was made (`occurred_at`)."""
        assert choice.occurred_at is not None
        event = new_event(
            type=type_,
            source="/outreach/outreach",
            subject=choice.customer_id,
            time=choice.occurred_at,
            id=event_id,
            data=choice.model_dump(mode="json", exclude_none=True),
        )
        await self.producer.send(
            self.topic, choice.customer_id.encode(), event.to_bytes(), [CONTENT_TYPE]
        )


class RecordingOptOuts:
    """Keeps what it is told: ("out" or "in", customer, channel, source), and each opt-out's
    evidence (the provider's code) in `evidence`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []
        self.evidence: list[str | None] = []

    async def opted_out(
        self, customer_id: str, channel: str, source: str, at: datetime, code: str | None = None
    ) -> None:
        self.seen.append(("out", customer_id, channel, source))
        self.evidence.append(code)

    async def opted_in(self, customer_id: str, channel: str, source: str, at: datetime) -> None:
        self.seen.append(("in", customer_id, channel, source))


__all__ = ["OptOutPublisher", "OptOuts", "RecordingOptOuts"]
