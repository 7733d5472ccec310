"""What outreach keeps of topics it decides nothing on, each read by its own consumer
group beside the worker's decisions:

- the hand-offs (from a reply or the churn-risk score, `support.handoffs`) and the
  agents' outcomes (`support.resolutions`), for the conversation view;
- the outcomes of our decisions (docs/outcomes.md): the shop's orders, returns and
  refunds, its feedback and support contacts, and opt-outs (`outreach.optouts`).

Nothing here decides anything, so they read on the wall clock even when the worker's
decisions run on the event clock, and a replay is not held up by them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from common import schemas
from common.envelope import CloudEvent
from common.flowing import FlowingConsumerLoop
from common.kafka import DeadLetters, InputMessage, MessageProcessor
from common.ops_http import Heartbeat
from services.outreach.config import Settings
from services.outreach.domain import outcomes
from services.outreach.entrypoints.inputs import SERVICE

if TYPE_CHECKING:
    from services.outreach.bootstrap import Outreach

GROUP = "handoff-records"
OUTCOMES_GROUP = "outcomes"
# Of the topics the outcome recorder reads, the types it has nothing to keep of.
NOT_OUTCOMES = frozenset({"return.received", "contact.opted_in"})


class Records:
    """One consumer (group `{prefix}outreach-{group}`) handing each event to `handle`;
    an event it cannot take is dead-lettered, and the next one read."""

    def __init__(
        self,
        settings: Settings,
        outreach: Outreach,
        heartbeat: Heartbeat,
        deadletters: DeadLetters,
        *,
        group: str,
        topics: list[str],
        handle: Callable[[InputMessage, CloudEvent], Awaitable[None]],
    ) -> None:
        processor = MessageProcessor(SERVICE, handle, deadletters, outreach.wall)
        self.consumer = FlowingConsumerLoop(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.topic_prefix}{SERVICE}-{group}",
            topics=topics,
            processor=processor,
            heartbeat=heartbeat,
            client_id=f"{SERVICE}-{group}",
            session_timeout_s=settings.kafka_session_timeout_s,
        )

    async def start(self) -> None:
        await self.consumer.start()

    async def run(self) -> None:
        await self.consumer.run()

    async def stop(self) -> None:
        await self.consumer.stop()


def handoff_records(
    settings: Settings, outreach: Outreach, heartbeat: Heartbeat, deadletters: DeadLetters
) -> Records:
    """Hand-offs and their outcomes into outreach's database
    (ConversationService.on_handoff_event)."""

    async def handle(_msg: InputMessage, event: CloudEvent) -> None:
        await outreach.conversations.on_handoff_event(event)

    topics = [settings.topics.handoffs, settings.topics.resolutions]
    return Records(
        settings, outreach, heartbeat, deadletters, group=GROUP, topics=topics, handle=handle
    )


async def record_outcome(outreach: Outreach, topic: str, event: CloudEvent) -> None:
    """An outcome fact (domain/outcomes.py) of a shop's event or an opt-out into
    `outcome_events`, with the redemption of the remedy codes an order carried; an event
    that fails its schema raises InvalidEvent (the caller dead-letters it)."""
    t = outreach.settings.topics
    if event.type in NOT_OUTCOMES:
        return
    if topic == t.optouts:
        data = schemas.parse_payload(event, schemas.ContactChoice).model_dump(mode="json")
    else:
        schemas.parse_input(event, t.unprefixed(topic))
        data = event.data
    fact = outcomes.fact_of(event.type, event.id, event.time, data)
    if fact is None:
        return
    codes = data.get("discount_codes") if event.type == "order.placed" else None

    async def redeemed(s: Any) -> None:  # a remedy's codes (docs/remedies.md)
        await outreach.remedies.redeem_in(s, codes or (), fact.order_id, event.time)

    await outreach.outcomes.record(fact, redeemed if codes else None)


def outcome_records(
    settings: Settings, outreach: Outreach, heartbeat: Heartbeat, deadletters: DeadLetters
) -> Records:
    """The outcome facts into `outcome_events` (record_outcome), each from its own
    consumer group on the wall clock."""
    t = settings.topics

    async def handle(msg: InputMessage, event: CloudEvent) -> None:
        await record_outcome(outreach, msg.topic, event)

    return Records(
        settings, outreach, heartbeat, deadletters,
        group=OUTCOMES_GROUP, topics=[t.orders, t.returns, t.feedback, t.optouts], handle=handle,
    )  # fmt: skip


__all__ = [
    "GROUP",
    "OUTCOMES_GROUP",
    "Records",
    "handoff_records",
    "outcome_records",
    "record_outcome",
]
