"""outreach in one process: its delivery service as the worker wires it (bootstrap), on
its own event clock, with the ledger in memory, its contact plans read from the
in-process preferences (stages.py) instead of over gRPC, the outbox for every channel
(rendered and recorded, nothing leaves), rendering in this process (sandboxed as ever)
and the storms counted in memory. Its templates, remedies and outcomes are in the
rehearsal's own SQLite database under its work directory; outcomes are kept when a
remedy rule learns from them (the only decisions they change)."""

from __future__ import annotations

from datetime import time as dtime

from common.clock import WatermarkClock
from common.envelope import CloudEvent, InvalidEvent
from replay.stages import DeadLetters, moment
from services.outreach.adapters.contact_plans import ContactPlans
from services.outreach.adapters.memory_ledger import InMemoryLedger
from services.outreach.adapters.memory_storms import InMemoryStormStore
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.adapters.providers import OutboxSender
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.bootstrap import Outreach, bootstrap
from services.outreach.config import Settings
from services.outreach.domain.decisions import ChannelOption, ContactPlan
from services.outreach.domain.rendering import CHANNELS
from services.outreach.entrypoints.records import record_outcome
from services.preferences.handlers import Preferences


class PlansFromPreferences(ContactPlans):
    """The contact plans preferences would answer over gRPC, asked in this process."""

    def __init__(self, preferences: Preferences) -> None:
        self.preferences = preferences

    async def get(self, customer_id: str, category: str) -> ContactPlan | None:
        plan = await self.preferences.plan(customer_id, category)
        if not plan.known:
            return None
        return ContactPlan(
            customer_id=plan.customer_id,
            known=True,
            first_name=plan.first_name,
            locale=plan.locale or "en",
            time_zone=plan.time_zone or "UTC",
            quiet_start=plan.quiet_start or dtime(21, 0),
            quiet_end=plan.quiet_end or dtime(8, 0),
            marketing_opt_in=plan.marketing_opt_in,
            channels=tuple(
                ChannelOption(c.channel, c.address, c.usable, c.reason) for c in plan.channels
            ),
        )


class OutreachStage:
    """Decides each request, incident, resolution and customer record at its moment,
    after sending what was scheduled before it, as the worker does on the event clock."""

    def __init__(self, settings: Settings, preferences: Preferences, dead: DeadLetters) -> None:
        self.clock = WatermarkClock()
        self.ledger = InMemoryLedger()
        self.topics = settings.topics
        self.dead = dead
        # (the ledger's version, the moment of the next scheduled message then)
        self._due: tuple[int, float | None] | None = None
        outbox = OutboxSender()
        self.app: Outreach = bootstrap(
            settings,
            plans=PlansFromPreferences(preferences),
            senders=dict.fromkeys(CHANNELS, outbox),
            clock=self.clock,
            renderer=InlineRenderer(),
            optouts=RecordingOptOuts(),
            ledger=self.ledger,
            storms=InMemoryStormStore(settings.storm_policy()),
        )

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()

    async def send_due(self, at: float, *, inclusive: bool = False) -> None:
        """Send what is scheduled before `at` (or at it), each at its own moment. The
        ledger is asked only when it changed since it last said when the next one is."""
        version = self.ledger.version
        if self._due is not None and self._due[0] == version:
            earliest = self._due[1]
            if earliest is None or earliest > at or (earliest == at and not inclusive):
                return
        await self.app.delivery.send_due_until(self.clock, at, inclusive=inclusive)
        due = await self.ledger.earliest_due()
        self._due = (self.ledger.version, None if due is None else due.timestamp())

    async def learns(self) -> bool:
        """Whether the remedy policy has a rule that learns from outcomes."""
        _version, policy = await self.app.remedies.policy()
        return any(rule.learn is not None for rule in policy.rules)

    async def on_outcome(self, at: float, topic: str, event: CloudEvent) -> None:
        """What became of a customer (an order, a return, feedback, an opt-out) kept at
        its moment, as the outcome recorder keeps it when it arrives."""
        self.clock.advance_to(moment(at))
        try:
            await record_outcome(self.app, topic, event)
        except InvalidEvent as exc:
            self.dead["outreach", exc.code] += 1

    async def on_record(self, at: float, topic: str, event: CloudEvent) -> None:
        delivery = self.app.delivery
        await self.send_due(at)
        self.clock.advance_to(moment(at))
        now = self.clock.now()
        try:
            if topic == self.topics.incidents:
                await delivery.on_incident(event, now)
            elif topic == self.topics.resolutions:
                await delivery.on_resolution(event, now)
            elif topic == self.topics.customers:
                await delivery.on_customer_event(event)
            else:
                await delivery.on_request(event, now)
        except InvalidEvent as exc:
            self.dead["outreach", exc.code] += 1


__all__ = ["OutreachStage", "PlansFromPreferences"]
