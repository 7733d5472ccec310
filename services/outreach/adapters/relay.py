"""The transactional outbox's relay: ledger changes published to `outreach.messages` in
the order they were written (docs/delivery.md). One worker at a time holds the relay's
lease, so that two workers never publish the same rows in different orders."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from common import tracing
from common.clock import EPOCH, wall_now
from common.envelope import CloudEvent
from common.kafka import Outgoing, ProducerPort
from services.outreach.adapters.ledger import DeliveryEvent, LedgerPort
from services.outreach.domain.states import PUBLIC

PUBLIC_STATUSES = frozenset(s.value for s in PUBLIC)


class MessageRelay:
    """`publish` sends the ledger's unpublished public changes, each as the event
    `to_event` makes of it (keyed by customer), and what `also` makes of it on
    `also_topic` (the care actions a sent message promised), and marks them published.
    A round cut short is sent again whole: every event's id is derived from its change."""

    def __init__(
        self,
        ledger: LedgerPort,
        producer: ProducerPort,
        topic: str,
        holder: str,
        lease: timedelta,
        to_event: Callable[[DeliveryEvent], CloudEvent],
        wall: Callable[[], datetime] = wall_now,
        also: tuple[str, Callable[[DeliveryEvent], list[CloudEvent]]] | None = None,
    ) -> None:
        self.ledger = ledger
        self.producer = producer
        self.topic = topic
        self.holder = holder
        self.lease = lease
        self.to_event = to_event
        self.wall = wall
        self.also = also
        self._held_until = EPOCH  # this worker holds the relay's lease until then

    async def publish(self) -> bool:
        """One round: whether there may be more to publish at once (False also when
        another worker holds the lease)."""
        wall = self.wall()
        if self._held_until - wall < self.lease / 2:  # renewed when half of it is left
            if not await self.ledger.hold_lease("relay", self.holder, wall + self.lease, wall):
                self._held_until = EPOCH
                return False
            self._held_until = wall + self.lease
        rows = await self.ledger.unpublished()
        for row in rows:
            if row.status not in PUBLIC_STATUSES:
                continue
            await self._send(self.topic, row.customer_id, self.to_event(row))
            if self.also is not None:
                topic, make = self.also
                for extra in make(row):
                    await self._send(topic, row.customer_id, extra)
        await self.ledger.mark_published([r.id for r in rows])
        return bool(rows)

    async def _send(self, topic: str, key: str, event: CloudEvent) -> None:
        with tracing.producing(topic, event) as traced:
            record = Outgoing(topic, key, traced)
            await self.producer.send(
                topic, record.key.encode(), traced.to_bytes(), record.headers()
            )


__all__ = ["PUBLIC_STATUSES", "MessageRelay"]
