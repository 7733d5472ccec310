"""What the conversation view keeps of the support topics: every hand-off (from a reply
or the churn-risk score, `support.handoffs`) and the agent's outcome
(`support.resolutions`), read by their own consumer group beside the worker's decisions.
Nothing here decides anything, so it reads on the wall clock even when the worker's
decisions run on the event clock, and a replay is not held up by it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.envelope import CloudEvent
from common.flowing import FlowingConsumerLoop
from common.kafka import DeadLetters, InputMessage, MessageProcessor
from common.ops_http import Heartbeat
from services.outreach.config import Settings
from services.outreach.entrypoints.inputs import SERVICE

if TYPE_CHECKING:
    from services.outreach.bootstrap import Outreach

GROUP = "handoff-records"


class HandoffRecords:
    """The consumer (group `{prefix}outreach-handoff-records`) that keeps hand-offs
    and their outcomes in outreach's database (ConversationService.on_handoff_event)."""

    def __init__(
        self,
        settings: Settings,
        outreach: Outreach,
        heartbeat: Heartbeat,
        deadletters: DeadLetters,
    ) -> None:
        self.outreach = outreach
        topics = settings.topics
        processor = MessageProcessor(SERVICE, self._handle, deadletters, outreach.wall)
        self.consumer = FlowingConsumerLoop(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"{settings.topic_prefix}{SERVICE}-{GROUP}",
            topics=[topics.handoffs, topics.resolutions],
            processor=processor,
            heartbeat=heartbeat,
            client_id=f"{SERVICE}-{GROUP}",
            session_timeout_s=settings.kafka_session_timeout_s,
        )

    async def _handle(self, _msg: InputMessage, event: CloudEvent) -> None:
        await self.outreach.conversations.on_handoff_event(event)

    async def start(self) -> None:
        await self.consumer.start()

    async def run(self) -> None:
        await self.consumer.run()

    async def stop(self) -> None:
        await self.consumer.stop()


__all__ = ["GROUP", "HandoffRecords"]
