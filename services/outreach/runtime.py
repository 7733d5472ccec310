"""outreach's runtime: the ledger, the contact plans and the providers around the pure
handlers (handlers.py, domain/lifecycle.py).

`DeliveryService` reads what a decision needs, asks the handlers what to do, records
the decision in the ledger *before* any provider call, takes a last look at the moment
of sending (resolution, a newer revision, the pause, opt-outs and consent as of now,
quiet hours), renders, claims the row (a fenced compare-and-set), sends, and records
the outcome. An answer that leaves it open whether the provider took the message (a
timeout, a 5xx, a reset after the request left) puts the row in doubt: it is settled by
asking the provider, never by sending blindly again. The scheduler (`send_due`)
releases what quiet hours, a pause or a retry held back; the sweeper (`sweep`) takes
over rows whose holder died or stalled. docs/reliability.md lists the guarantees and
the faults they were tested against.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common import schemas
from common.clock import WatermarkClock, wall_now
from common.envelope import CloudEvent, InvalidEvent
from common.failpoints import failpoint
from common.logs import get_logger
from common.metrics import (
    IN_DOUBT,
    MESSAGES,
    RENDER_FAILURES,
    STALE_REPORTS,
    SUPPRESSIONS,
    SWEPT,
)
from common.outages import DependencyUnavailable
from services.outreach import handlers
from services.outreach.adapters.contact_plans import ContactPlans
from services.outreach.adapters.ledger import Delivery, DeliveryEvent, LedgerPort
from services.outreach.adapters.optouts import OptOuts
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.adapters.providers import (
    ABSENT,
    RETRY,
    MessageSender,
    OutboundMessage,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
)
from services.outreach.adapters.remedies import Grant, RemedyStore
from services.outreach.adapters.render_pool import Renderer
from services.outreach.adapters.storms import StormsPort
from services.outreach.adapters.templates import TemplateCache
from services.outreach.domain import consolidation, lifecycle, outcomes, storms, surveys
from services.outreach.domain import corrections as correcting
from services.outreach.domain import decisions as pipeline
from services.outreach.domain import experiments as trials
from services.outreach.domain.context import build_context
from services.outreach.domain.corrections import CorrectionPolicy
from services.outreach.domain.decisions import ContactPlan, DeliveryPolicy
from services.outreach.domain.lifecycle import CauseState, Moment, Move, Rendered, SendingPolicy
from services.outreach.domain.ramp import Paused
from services.outreach.domain.rendering import RenderError, metric_kind
from services.outreach.domain.states import UNDER_WAY, Report, Status
from services.outreach.domain.surveys import SurveyPolicy
from services.outreach.domain.unsubscribe import token_for

log = get_logger(__name__)
#: How long a message named in another waits for that one to leave before it goes on
#: its own (domain/consolidation.py).
CARRY_GRACE = timedelta(minutes=5)
#: How long a storm's note is used before it is read again (an operator's edit reaches
#: the messages that leave after it within this long).
NOTES_FRESH_S = 5.0


@dataclass
class Links:
    public_base_url: str = "http://127.0.0.1:8083"
    support_url: str = "https://shop.example/help"
    shop_name: str = "Example Shop"
    support_email: str = "help@shop.example"
    support_phone: str = "+49 30 1234567"
    unsubscribe_secret: str = ""

    def shop(self) -> dict[str, str]:
        """What a template may say of the shop (`shop` in its context)."""
        return {"name": self.shop_name, "support_email": self.support_email,
                "support_phone": self.support_phone}  # fmt: skip


class DeliveryService:
    def __init__(
        self,
        *,
        ledger: LedgerPort,
        plans: ContactPlans,
        senders: dict[str, MessageSender],
        renderer: MessageComposer,
        policy: DeliveryPolicy,
        sending: SendingPolicy,
        links: Links,
        optouts: OptOuts | None = None,
        paused: Paused | None = None,
        wall: Callable[[], datetime] | None = None,
        surveys: SurveyPolicy | None = None,
        corrections: CorrectionPolicy | None = None,
        storms: StormsPort | None = None,
    ) -> None:
        self.storms = storms
        self.outcomes: OutcomeStore | None = None  # forgets with erasure and retention
        self.remedies: RemedyStore | None = None  # what a message offers (docs/remedies.md)
        # The remedy each row in hand was rendered with, for its sent event.
        self._carried: weakref.WeakKeyDictionary[Delivery, Grant | None] = (
            weakref.WeakKeyDictionary()
        )
        self.release_batch = 100  # held messages released per round (whole customers)
        self.surveys = surveys or SurveyPolicy()
        self.corrections = corrections or CorrectionPolicy.parse(correcting.DEFAULT)
        self.ledger = ledger
        self.plans = plans
        self.senders = senders
        self.renderer = renderer
        self.policy = policy
        self.sending = sending
        self.links = links
        self.optouts = optouts
        self.paused = paused or Paused()
        # Leases, claims and operators' pauses run in wall time, whatever clock decides:
        # a replay in event time still holds a claim for real seconds.
        self.wall = wall or wall_now

    def _at(self, now: datetime) -> Moment:
        return handlers.moment(now, self.wall(), self.sending.in_doubt_after)

    async def _move(self, move: Move, row: Delivery | None = None) -> bool:
        """Write one move (a fenced compare-and-set); on success, `row` (the caller's
        copy) takes its values, as the ledger now has them."""
        event = None if move.entry is None else DeliveryEvent(**vars(move.entry), published=False)
        moved = await self.ledger.transition(
            move.decision_id, move.expected, event, fence=move.fence, **move.values
        )
        if moved and row is not None:
            for key, value in move.values.items():
                setattr(row, key, value)
        return moved

    # --- inputs --------------------------------------------------------------------

    async def on_incident(self, event: CloudEvent, now: datetime) -> None:
        """A new incident is counted in the scopes of its cause (domain/storms.py). A
        resolution stops what has not been sent yet, and a closing that contradicts a
        message already sent corrects it (domain/corrections)."""
        if event.type == "incident.opened" and self.storms is not None:
            await self._count(schemas.parse_payload(event, schemas.Incident), event.time)
        if event.type != "incident.resolved":
            return
        incident = schemas.parse_payload(event, schemas.Incident)
        await self.ledger.mark_resolved(
            incident.incident_id, event.time, incident.resolution or "resolved"
        )
        at = self._at(now)
        rule = "already resolved: incident closed while held"
        for row in await self.ledger.open_for_cause(incident.incident_id):
            reason = pipeline.Suppression.ALREADY_RESOLVED
            await self._end(row, lifecycle.suppress(row, reason, rule, at))
        if self.corrections.wants(incident.kind, incident.resolution):
            await self._correct(incident, event.time, now)

    async def _count(self, incident: schemas.Incident, at: datetime) -> None:
        assert self.storms is not None
        order = incident.order.model_dump() if incident.order else None
        scope = storms.scope_of(incident.kind, incident.facts, order)
        if scope is not None:
            await self.storms.record(
                scope,
                incident_id=incident.incident_id,
                customer_id=incident.customer_id,
                order_id=incident.order_id,
                kind=incident.kind,
                at=at,
            )

    async def _correct(
        self, incident: schemas.Incident, resolved_at: datetime, now: datetime
    ) -> None:
        """The correction of the latest message that told the customer about `incident`
        — its own, or one that named it among others (one per decision: the request id
        is derived from the decision about the incident)."""
        rows = await self.ledger.history(customer_id=incident.customer_id, limit=200)
        about = {
            r.decision_id: r
            for r in rows
            if r.cause_id == incident.incident_id and r.cause_type == "incident"
        }
        told = []
        for message in rows:
            if message.status not in UNDER_WAY or not message.channel:
                continue
            named = [str(i.get("decision_id")) for i in consolidation.carried(message.request)]
            for decision in (message.decision_id, *named):
                row = about.get(decision)
                if row is not None:
                    told.append(told_of(row, message))
        chosen = correcting.to_correct(told)
        if chosen is None:
            return  # nothing reached the customer: nothing to correct
        data = correcting.correction_request(chosen, str(incident.resolution), resolved_at)
        await self.decide(schemas.OutreachRequest.model_validate(data), now)

    async def on_resolution(self, event: CloudEvent, now: datetime) -> int:
        """An agent solved a hand-off (support.resolutions): the customer's check-ins not
        yet sent are not needed any more. Returns how many were suppressed."""
        if event.type != "support.handoff.resolved":
            return 0
        resolved = schemas.parse_payload(event, schemas.HandoffResolved)
        if resolved.outcome != "solved":
            return 0
        at, reason = self._at(now), pipeline.Suppression.RESOLVED_BY_AGENT
        rule = f"an agent solved the case (hand-off {resolved.handoff_id})"
        pending = [
            row
            for row in await self.ledger.history(customer_id=resolved.customer_id, limit=50)
            if row.intent == "check_in" and row.status in (Status.SCHEDULED, Status.DECIDED)
        ]
        for row in pending:  # the fence: one a worker claimed meanwhile goes its way
            await self._end(row, lifecycle.suppress(row, reason, rule, at))
        return len(pending)

    async def on_customer_event(self, event: CloudEvent) -> int:
        """commerce.customers: only an erasure matters here — the customer's personal
        data leaves the ledger (ledger.erase_customer). Returns the rows scrubbed."""
        if event.type != "customer.erased":
            return 0
        erased = schemas.parse_payload(event, schemas.CustomerErased)
        scrubbed = await self.ledger.erase_customer(erased.customer_id, self.wall())
        if self.storms is not None:
            await self.storms.forget_customer(erased.customer_id)
        if self.outcomes is not None:
            await self.outcomes.forget_customer(erased.customer_id)
        if self.remedies is not None:
            await self.remedies.forget_customer(erased.customer_id, self.renderer.offer_secret)
        log.info("customer_erased", customer_id=erased.customer_id, rows_scrubbed=scrubbed)
        return scrubbed

    async def scrub_due(self, retention: timedelta) -> int:
        """The ledger's retention: settled rows older than `retention` (and settled rows
        of erased customers) lose their personal data; the storms forget their incidents."""
        if self.storms is not None:
            await self.storms.forget_before(self.wall(), retention)
        if self.outcomes is not None:
            # Kept while a decision they follow is: the longest window after it.
            await self.outcomes.forget_before(self.wall() - retention - outcomes.LONGEST)
        return await self.ledger.scrub_due(self.wall() - retention)

    async def on_request(self, event: CloudEvent, now: datetime) -> None:
        if event.type != handlers.REQUEST_CREATED:
            raise InvalidEvent(f"outreach does not handle {event.type!r}", code="unknown_type")
        await self.decide(schemas.parse_payload(event, schemas.OutreachRequest), now)

    async def decide(self, request: schemas.OutreachRequest, now: datetime) -> None:
        """Decide a request (from risk_detector, or a correction of ours) and carry the
        decision out; a request decided before is not decided again."""
        revision = pipeline.revision_of(request.context)
        category = pipeline.category_of(handlers.facts_of(request)).value
        plan = await self.plans.get(request.customer_id, category)
        known = await self.ledger.cause_state(
            request.cause.type,
            request.cause.id,
            revision,
            recent=(request.customer_id, now - self.policy.cap_window),
        )
        asked = handlers.experience_to_ask(request)
        experienced = (
            True if asked is None else await self.ledger.reached_about(request.customer_id, asked)
        )
        templates = await self._templates(request.message_kind, plan)
        paused = self.paused.applies(request.intent.value)
        remedy = await self._offered(request)
        seen = handlers.Seen(plan, known, experienced, paused, templates, remedy)
        at = self._at(now)
        decided = handlers.on_request(request, seen, at, self.policy)
        row = Delivery(**vars(decided.row))
        if not await self.ledger.create(row, DeliveryEvent(**vars(decided.entry), published=False)):
            # Decided before (a redelivery after a crash, or another worker first): the
            # decision that stands is the first; finish what its delivery started.
            existing = await self.ledger.by_request(request.request_id)
            if existing is not None:
                await self._expose(existing)  # (again: the first time may have crashed)
            if existing is not None and existing.status == Status.DECIDED:
                if await self._admit([existing], self._at(now)):
                    await self._deliver(existing, now)
            return
        failpoint("outreach.after_decision")
        await self._expose(row)
        await self._decided(row, decided, at, plan, known)

    async def _decided(
        self,
        row: Delivery,
        decided: handlers.Decided,
        at: Moment,
        plan: ContactPlan | None,
        known: CauseState,
    ) -> None:
        outcome = decided.decision.outcome
        if outcome == "suppress":
            SUPPRESSIONS.labels(decided.decision.reason or "unknown").inc()
            MESSAGES.labels(row.channel or "none", "suppressed").inc()
            return
        if outcome == "schedule":
            MESSAGES.labels(row.channel or "none", "scheduled").inc()
        if decided.supersedes:
            await self._supersede_older(row, at)
        if outcome == "send" and await self._admit([row], at):
            # The last look needs nothing new of the ledger: it was read just now.
            await self._deliver(row, at.now, plan=plan, known=known)

    async def _supersede_older(self, row: Delivery, at: Moment) -> None:
        """A newer revision of a message replaces the older ones not yet handed over."""
        for older in await self.ledger.older_unsent(row.cause_type, row.cause_id, row.revision):
            rule = f"superseded: revision {row.revision} replaces revision {older.revision}"
            reason = pipeline.Suppression.SUPERSEDED
            await self._end(older, lifecycle.suppress(older, reason, rule, at))

    # --- time ----------------------------------------------------------------------

    async def send_due(self, now: datetime) -> int:
        """Release scheduled messages whose time has come (quiet hours over, a retry due)
        and, after a resume, the held ones (on the ramp); each gets the last look before
        it is sent. Returns how many were handled."""
        rows = await self.ledger.due(now)
        if not self.paused.all:
            held = await self._held()
            rows += [r for r in held if not self.paused.applies(r.intent)]
        rows = self._within_ramp(rows, self.wall())
        rows = [r for r in rows if not self.paused.applies(r.intent)]
        # Named in a message that has left: ended now, before a storm could hold them.
        rows = await self._settle_carried(rows, self._at(now))
        rows = await self._admit(rows, self._at(now))
        rows = await self._redecide_held(rows, now)
        rows = await self._consolidate(rows, self._at(now))
        for row in rows:
            at = self._at(now)
            if row.expires_at is not None and now > row.expires_at:
                await self._end(row, handlers.expired(row, at))
            elif await self._move(lifecycle.release(row, at), row):
                try:
                    await self._deliver(row, now)
                except DependencyUnavailable:
                    # No last look without preferences: back to waiting, a little later.
                    await self._move(lifecycle.wait_for_preferences(row, at))
                    raise
        return len(rows)

    async def _held(self) -> list[Delivery]:
        """Held messages whose pause or storm is over, by customer: a full round ends
        with all of its last customer's, so that theirs are released together (and
        merge) however big the backlog."""
        holding, limit = await self._holding(), self.release_batch
        held = await self.ledger.held(limit=limit, excluding=holding)
        if len(held) < limit:
            return held
        last, have = held[-1].customer_id, {r.decision_id for r in held}
        for row in await self.ledger.history(customer_id=last):
            waiting = row.status == Status.SCHEDULED and row.send_at is None
            if waiting and row.decision_id not in have and row.storm_id not in holding:
                held.append(row)
        return held

    async def _holding(self) -> list[str]:
        """The storms whose messages wait for an operator."""
        return [] if self.storms is None else await self.storms.holding()

    async def _admit(self, rows: list[Delivery], at: Moment) -> list[Delivery]:
        """Storms (domain/storms.py): a first attempt whose incident belongs to a storm
        that waits for an operator is held with it, one of a cancelled storm ends; the
        others go on (named in their storm, for its note and its view)."""
        first = {r.decision_id for r in rows if r.cause_type == "incident" and r.attempts == 0}
        if self.storms is None or not first:
            return rows
        found = await self.storms.storms_of(r.cause_id for r in rows if r.decision_id in first)
        going: list[Delivery] = []
        named: dict[str, list[str]] = {}
        for row in rows:
            storm = found.get(row.cause_id) if row.decision_id in first else None
            verdict = storm.verdict_at(at.now) if storm else None
            if storm is None or verdict is None:
                going.append(row)
            elif verdict is storms.Verdict.FLOW:
                if row.storm_id is None:
                    named.setdefault(storm.storm_id, []).append(row.decision_id)
                    row.storm_id = storm.storm_id
                going.append(row)
            elif verdict is storms.Verdict.HOLD:
                await self._move(lifecycle.storm_hold(row, storm.storm_id, at), row)
            else:
                rule = f"storm {storm.storm_id} cancelled by {storm.decided_by}"
                reason = pipeline.Suppression.STORM_CANCELLED
                await self._end(row, lifecycle.suppress(row, reason, rule, at))
        for storm_id, ids in named.items():
            await self.ledger.mark_storm(ids, storm_id)
        return going

    async def _redecide_held(self, rows: list[Delivery], now: datetime) -> list[Delivery]:
        """Rows held by a pause before a channel was chosen, or by a storm, are decided
        again now (plan, consent and cap as of now): released for now, they leave with
        the rest of this round, merged with the customer's other messages; an expired
        one stays in the round, to be ended."""
        held = {
            r.decision_id
            for r in rows
            if (r.channel is None or r.send_at is None)
            and not (r.expires_at and now > r.expires_at)
        }
        if not held:
            return rows
        for row in rows:
            if row.decision_id in held:
                await self._redecide(row, self._at(now))
        released = [r for r in await self.ledger.due(now) if r.decision_id in held]
        return [r for r in rows if r.decision_id not in held] + released

    async def _consolidate(self, rows: list[Delivery], at: Moment) -> list[Delivery]:
        """What leaves together for one customer leaves as one message
        (domain/consolidation.py) — with a gathering window, together with what is
        scheduled for them within it. The carriers are sent here; returns the other rows
        to send now.

        Nothing carried is lost: a carried row waits (`CARRY_GRACE`) named in its carrier
        and ends `consolidated` only once the carrier has left; if the carrier never
        does (suppressed at its last look, failed), the row comes due again and goes on
        its own. The carrier is released and named in one compare-and-set, so a worker
        holding an older copy of it cannot send it without the others."""
        found = {r.decision_id: r for r in rows if self._may_merge(r, at.now)}
        if self.policy.gather > timedelta(0):
            until, soon = at.now + self.policy.gather, []
            for customer in {r.customer_id for r in found.values()}:
                for other in await self.ledger.history(customer_id=customer, limit=50):
                    due = other.send_at is not None and other.send_at <= until
                    if other.status == Status.SCHEDULED and due and self._may_merge(other, at.now):
                        soon.append(other)
            soon = [r for r in soon if r.decision_id not in found]
            for other in await self._admit(soon, at):  # a storm's held ones stay
                found.setdefault(other.decision_id, other)
        merges = consolidation.plan(pending(r) for r in found.values())
        done: set[str] = set()
        for merge in merges:
            carrier = found[merge.carrier.decision_id]
            carried = [found[p.decision_id] for p in merge.merged]
            if await self._carry(carrier, carried, at):
                done |= {carrier.decision_id, *(r.decision_id for r in carried)}
        return [r for r in rows if r.decision_id not in done]

    def _may_merge(self, row: Delivery, now: datetime) -> bool:
        """A first attempt, not expired, not paused, about an incident."""
        expired = row.expires_at is not None and now > row.expires_at
        return (row.attempts == 0 and not expired and not self.paused.applies(row.intent)
                and gathers(row))  # fmt: skip

    async def _carry(self, carrier: Delivery, carried: list[Delivery], at: Moment) -> bool:
        """Send `carrier` naming `carried` (what they carried before included). False
        when another worker moved the carrier first (the carried ones come due again)."""
        waiting = []
        for row in carried:
            if await self._move(lifecycle.carried(row, carrier.decision_id, at, CARRY_GRACE), row):
                waiting.append(row)
        if not waiting:
            return False
        before = [i for r in (carrier, *waiting) for i in consolidation.carried(r.request)]
        context = dict(carrier.request.get("context") or {})
        context["also"] = consolidation.also_items([pending(r) for r in waiting], before)
        request = {**carrier.request, "context": context}
        if not await self._move(lifecycle.carry(carrier, request, at), carrier):
            return False
        try:
            await self._deliver(carrier, at.now)
        except DependencyUnavailable:
            await self._move(lifecycle.wait_for_preferences(carrier, at))
            raise
        await self._settle(carrier.decision_id, waiting, at)
        return True

    async def _settle(self, carrier_id: str, carried: list[Delivery], at: Moment) -> list[str]:
        """The carried rows end `consolidated` once their carrier has left (handed to a
        provider). Returns the ids ended."""
        carrier = await self.ledger.get(carrier_id)
        if carrier is None or carrier.status not in UNDER_WAY:
            return []
        ended = []
        rule = f"consolidated: named in the message {carrier_id}"
        for row in carried:
            move = lifecycle.suppress(row, pipeline.Suppression.CONSOLIDATED, rule, at)
            if await self._end(row, move):
                ended.append(row.decision_id)
        return ended

    async def _settle_carried(self, rows: list[Delivery], at: Moment) -> list[Delivery]:
        """Rows due again while named in a carrier (its send crashed, or is still under
        way): those whose carrier has left end `consolidated`; the others go on."""
        ended: set[str] = set()
        for row in rows:
            carrier_id = (row.request.get("context") or {}).get("carried_by")
            if carrier_id and row.status == Status.SCHEDULED:
                ended.update(await self._settle(str(carrier_id), [row], at))
        return [r for r in rows if r.decision_id not in ended]

    async def send_held(self, now: datetime) -> int:
        """`send_due` only if a pause held something and is over (on the event clock the
        consumer sends the rest in order with its records: `send_due_until`)."""
        if self.paused.all or not await self.ledger.held(limit=1, excluding=await self._holding()):
            return 0
        return await self.send_due(now)

    async def send_due_until(self, clock: WatermarkClock, until: float, inclusive: bool) -> None:
        """On the event clock: send the messages scheduled before `until` (or at it),
        earliest first, each at its own time (`clock` moved there), as the scheduler
        would have when it came."""
        last, repeats = None, 0
        while (due := await self.ledger.earliest_due()) is not None:
            moment = due.timestamp()
            if moment > until or (moment == until and not inclusive):
                return
            repeats = repeats + 1 if moment == last else 0
            if repeats > 2:
                return  # rows that stay due (held by a pause): the scheduler's turn
            last = moment
            clock.advance_to(due)
            await self.send_due(clock.now())

    def _within_ramp(self, rows: list[Delivery], now: datetime) -> list[Delivery]:
        """After a resume with a ramp, release the held backlog gradually: each ramp's
        budget limits how many of its rows go in this round; the rest wait their turn."""
        out: list[Delivery] = []
        wanted: dict[int, list[Delivery]] = {}
        budgets = {}
        for row in rows:
            budget = self.paused.ramping(row.intent, now)
            if budget is None:
                out.append(row)
                continue
            budgets[id(budget)] = budget
            wanted.setdefault(id(budget), []).append(row)
        for key, waiting in wanted.items():
            out.extend(waiting[: budgets[key].take(now, len(waiting))])
        return out

    async def _seen(self, row: Delivery, now: datetime, *, recent: bool = False) -> handlers.Seen:
        """What a held or decided row's (re)decision reads: the plan and the cause as of
        now (with the cap window, `recent`, for a decision taken again)."""
        plan = await self.plans.get(row.customer_id, row.category)
        window = (row.customer_id, now - self.policy.cap_window) if recent else None
        known = await self.ledger.cause_state(
            row.cause_type, row.cause_id, row.revision, recent=window
        )
        templates = await self._templates(row.message_kind, plan)
        remedy = await self._offered(schemas.OutreachRequest.model_validate(row.request))
        paused = self.paused.applies(row.intent)
        return handlers.Seen(plan, known, paused=paused, templates=templates, remedy=remedy)

    async def _offered(self, request: schemas.OutreachRequest) -> str | None:
        """The kind of remedy the remedy policy would offer the message first (for
        experiments on remedies); the budget decides when it is sent."""
        if self.remedies is None or request.cause.type == correcting.CAUSE_TYPE:
            return None  # a correction carries no remedy: it answers what we wrote
        _, policy = await self.remedies.policy()
        rule = policy.rule_for(handlers.remedy_facts(request, request.offer_tier))
        if rule is None:
            return None
        return "learned" if rule.learn is not None else rule.offer[0].kind

    async def _grant(
        self, row: Delivery, request: schemas.OutreachRequest, now: datetime
    ) -> Grant | None:
        """The message's remedy, granted within the budget once per decision, in the
        period it leaves in (none in a remedy experiment's control arm, nor for a
        correction)."""
        if self.remedies is None:
            return None
        if trials.without_remedy(row.experiments) or request.cause.type == correcting.CAUSE_TYPE:
            self._carried[row] = None  # rendered without one, whatever is stored
            return None
        facts = handlers.remedy_facts(request, request.offer_tier)
        grant = await self.remedies.grant(
            row.decision_id, row.customer_id, row.order_id, facts, now,
            self.renderer.offer_secret, retry=row.attempts > 0,
        )  # fmt: skip
        self._carried[row] = grant
        return grant

    async def _remedy_record(self, row: Delivery) -> dict[str, Any] | None:
        """What the sent message carried, for its ledger event (and the shop's systems):
        what this worker rendered it with, else (a send settled later) the grant."""
        if self.remedies is None:
            return None
        if row in self._carried:
            grant = self._carried.pop(row)
        else:
            grant = await self.remedies.get(row.decision_id)
        return grant.record() if grant is not None else None

    async def _templates(self, message_kind: str, plan: ContactPlan | None) -> dict[str, str]:
        """For experiments on a template version: the version that would serve the
        message on each of the customer's channels (none asked when no experiment is)."""
        if plan is None or not any(e.kind == "template" for e in self.policy.experiments):
            return {}
        found = {}
        for option in plan.channels:
            source = await self.renderer.cache.latest_published(
                message_kind, option.channel, plan.locale
            )
            if source is not None:
                key = f"{source.message_kind}.{source.channel}.{source.locale}"
                found[option.channel] = f"{key}@{source.version}"
        return found

    async def _redecide(self, row: Delivery, at: Moment) -> None:
        """A decision held by a pause is decided now, from the contact plan on."""
        seen = await self._seen(row, at.now, recent=True)
        move = handlers.on_held(row, seen, at, self.policy)
        if move.values.get("experiments"):  # the experiments were asked now (written
            await self._expose(row, move.values["experiments"], at.now)  # first: idempotent)
        await self._redecided(row, move, at, seen.plan)

    async def _expose(
        self, row: Delivery, arms: list[dict[str, Any]] | None = None, at: datetime | None = None
    ) -> None:
        """The decision's exposures to experiments (docs/outcomes.md), for the report (at
        its decision, or `at`: when a held one was decided again)."""
        arms = row.experiments if arms is None else arms
        if self.outcomes is not None and arms:
            await self.outcomes.expose(
                outcomes.Decided(
                    row.decision_id,
                    row.customer_id,
                    row.order_id,
                    at or row.decided_at,
                    row.message_kind,
                    row.intent,
                    row.status,
                    arms,
                )
            )

    async def _redecided(
        self, row: Delivery, move: Move, at: Moment, plan: ContactPlan | None
    ) -> None:
        """Write a (re)decision's move: suppressed, scheduled, or decided now and then
        delivered."""
        if move.values.get("status") == Status.SUPPRESSED:
            await self._end(row, move)
        elif await self._move(move) and move.values.get("status") == Status.DECIDED:
            refreshed = await self.ledger.get(row.decision_id)
            if refreshed is not None:
                await self._deliver(refreshed, at.now, plan=plan)

    # --- delivery ------------------------------------------------------------------

    async def _deliver(
        self,
        row: Delivery,
        now: datetime,
        *,
        plan: ContactPlan | None = None,
        known: CauseState | None = None,
    ) -> None:
        """decided → (the last look) → sending → sent | in doubt | retry | fallback |
        failed: at most one provider call per claim, the ledger written before it."""
        if plan is None:
            plan = await self.plans.get(row.customer_id, row.category)
        if known is None:
            known = await self.ledger.cause_state(row.cause_type, row.cause_id, row.revision)
        seen = handlers.Seen(plan, known, paused=self.paused.applies(row.intent))
        at = self._at(now)
        look = handlers.last_look(row, seen, at, self.policy)
        if isinstance(look, Move):
            await self._redecided(row, look, at, plan)
            return
        if (look.channel, look.address) != (row.channel, row.address):
            row.channel, row.address = look.channel, look.address
            row.fallbacks = [f.__dict__ for f in look.fallbacks]
        message = await self._claim(row, at)
        if message is None:
            return
        failpoint("outreach.before_provider_call")
        try:
            result = await self.senders[message.channel].send(message)
        except TransientProviderError as exc:
            at = self._at(now)
            if exc.maybe_sent:
                await self._in_doubt(row, str(exc), at)
            else:
                jitter = random.uniform(0.5, 1.0)
                await self._end(
                    row,
                    lifecycle.refused(
                        row,
                        str(exc),
                        at,
                        self.sending,
                        throttled=exc.throttled,
                        retry_after=exc.retry_after,
                        jitter=jitter,
                    ),
                )
            return
        except PermanentProviderError as exc:
            await self._on_permanent(row, exc, now)
            return
        failpoint("outreach.after_provider_call")
        await self._sent(row, result, now)

    async def _claim(self, row: Delivery, at: Moment) -> OutboundMessage | None:
        """Render, then claim the row for one provider call: decided → sending with the
        next attempt number (the fence) and a lease. None when the template fails to
        render (the message is failed) or another worker claimed it first."""
        assert row.channel is not None and row.address is not None
        request = schemas.OutreachRequest.model_validate(row.request)
        remedy = await self._grant(row, request, at.now)
        try:
            rendered = await self.renderer.render_for(
                request=request,
                row=row,
                links=self.links,
                now=at.now,
                survey=await self._survey(row),
                remedy=remedy,
            )
        except RenderError as exc:
            RENDER_FAILURES.labels(metric_kind(row.message_kind), row.channel).inc()
            reason = f"render_failed: {exc}"
            await self._end(row, lifecycle.fail(row, reason, at, expected=(Status.DECIDED,)))
            return None
        # Wall time again: rendering may have taken a while.
        at = self._at(at.now)
        if not await self._move(lifecycle.claim(row, rendered, at, address=row.address), row):
            return None
        return self._message(row, rendered.subject, rendered.html, rendered.text)

    async def survey_asked(self, row: Delivery) -> bool:
        """Whether the row's message asks how we did: its kind asks, and no message of a
        survey kind went to the customer within the quiet days before it was decided
        (domain/surveys.py). The same answer when it is sent and when it is answered."""
        if row.message_kind not in self.surveys.kinds:
            return False
        sent = [
            m.sent_at
            for m in await self.ledger.messages_to(row.customer_id, 20)
            if m.message_kind in self.surveys.kinds
            and m.sent_at is not None
            and m.decision_id != row.decision_id  # itself, once sent, is not an earlier one
        ]
        return surveys.asks(self.surveys, row.message_kind, row.decided_at, sent)

    async def _survey(self, row: Delivery) -> dict[str, Any] | None:
        """The survey a message asks (its one-click links), or None."""
        if not await self.survey_asked(row):
            return None
        secret = self.links.unsubscribe_secret
        url = self.links.public_base_url
        return {"links": surveys.links(url, row.customer_id, row.decision_id, secret)}

    async def _sent(self, row: Delivery, result: SendResult, now: datetime) -> None:
        move = lifecycle.sent(
            row,
            self._at(now),
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            outbox=result.outbox,
            remedy=await self._remedy_record(row),
        )
        if await self._move(move):
            MESSAGES.labels(row.channel, "sent").inc()
            failpoint("outreach.after_ledger_sent")

    def _message(
        self, row: Delivery, subject: str | None, html: str | None, text: str
    ) -> OutboundMessage:
        assert row.channel is not None and row.address is not None
        return OutboundMessage(
            decision_id=row.decision_id,
            channel=row.channel,
            to=row.address,
            subject=subject,
            html=html,
            text=text,
            message_kind=row.message_kind,
            intent=row.intent,
            unsubscribe_url=self._unsubscribe_url(row),
            status_callback_url=f"{self.links.public_base_url}/webhooks/twilio/status"
            f"?decision_id={row.decision_id}",
        )

    # --- in doubt, and rows whose holder went away ------------------------------------

    async def _in_doubt(self, row: Delivery, reason: str, at: Moment) -> None:
        """The provider may have the message: ask it later, never resend now."""
        move = lifecycle.in_doubt(row, reason, at, look_in=self.sending.in_doubt_settle)
        if await self._move(move):
            log.warning("send_in_doubt", decision_id=row.decision_id, reason=reason[:200])

    async def sweep(self, now: datetime) -> int:
        """Take over rows whose lease ran out: decided but never claimed (its holder
        died before the provider call) → delivered now; sending with no answer recorded
        (its holder died or stalled during the call) or in doubt and due for a look →
        the provider is asked. Returns how many were settled."""
        settled = 0
        for row in await self.ledger.stale(self.wall()):
            SWEPT.labels(row.status).inc()
            if row.status == Status.DECIDED:
                # Decided, and its holder died before it passed the storms' gate, maybe.
                if await self._admit([row], self._at(now)):
                    await self._deliver(row, now)
                settled += 1
            else:
                settled += int(await self._reconcile(row, now))
        return settled

    async def _reconcile(self, row: Delivery, now: datetime) -> bool:
        """Ask the provider whether it has the message of this row's last claim: found →
        sent; certainly absent → sent again, once, after the last look; it cannot say →
        failed with reason in_doubt for a person (or, if it could not be asked now,
        asked again later). The look is itself leased and fenced, so two sweepers never
        both act on one claim."""
        if row.channel is None or row.address is None:
            return False
        if not await self._move(lifecycle.look(row, self._at(now)), row):
            return False
        sender = self.senders[row.channel]
        claimed_at = row.claimed_at or self.wall()
        message = self._message(row, row.subject, row.body_html, row.body_text or "")
        lookup = await sender.find_sent(message, claimed_at)
        if lookup.state == "unknown" and row.channel in self.sending.confirmed_by_events:
            lookup = ABSENT if await self._events_would_have_come(claimed_at) else RETRY
        IN_DOUBT.labels(row.channel, lookup.state).inc()
        log.warning("in_doubt_reconciled", decision_id=row.decision_id, outcome=lookup.state)
        at = self._at(now)
        if lookup.state == "found":
            found = lifecycle.sent(
                row,
                at,
                provider=sender.provider,
                provider_message_id=lookup.provider_message_id,
                outbox=False,
                reconciled=True,
                remedy=await self._remedy_record(row),
            )
            if moved := await self._move(found):
                MESSAGES.labels(row.channel, "sent").inc()
            return moved
        if lookup.state == "absent":
            return await self._absent(row, at)
        if lookup.state == "retry" and self.wall() - claimed_at < self.sending.in_doubt_give_up:
            await self._move(lifecycle.look_again(row, at, settle=self.sending.in_doubt_settle))
            return False
        reason = "in_doubt: the provider cannot tell whether it was sent"
        await self._end(row, lifecycle.fail(row, reason, at, expected=(Status.IN_DOUBT,)))
        return True

    async def _events_would_have_come(self, claimed_at: datetime) -> bool:
        """Would the provider's report of a message claimed at `claimed_at` have reached
        us by now? Yes if a worker (our webhooks) has been up without a break since the
        claim — the report's first delivery found it; or, if they were all down at some
        point since (a crash of the only worker), once one has been up for longer than
        the provider takes to retry a report it could not deliver."""
        wall = self.wall()
        up_since = await self.ledger.receivers_up_since(wall, self.sending.worker_seen_within)
        if up_since is None:
            return False
        return up_since <= claimed_at or wall - up_since >= self.sending.events_retried_within

    async def _absent(self, row: Delivery, at: Moment) -> bool:
        """Certainly not at the provider: decided again (counted as a failed attempt)
        and delivered after the last look, under a new claim."""
        move = lifecycle.absent(row, at, self.sending)
        if move.values.get("status") == Status.FAILED:
            await self._end(row, move)
            return True
        if moved := await self._move(move):
            await self._deliver_again(row.decision_id, at.now)
        return moved

    async def _deliver_again(self, decision_id: str, now: datetime) -> None:
        refreshed = await self.ledger.get(decision_id)
        if refreshed is not None:
            await self._deliver(refreshed, now)

    async def _on_permanent(
        self, row: Delivery, exc: PermanentProviderError, now: datetime
    ) -> None:
        if exc.opt_out and self.optouts is not None:
            await self.optouts.opted_out(
                row.customer_id, row.channel or "", "provider_error", now, code=str(exc.code)
            )
        move = lifecycle.rejected(row, str(exc.code), exc.reason, self._at(now))
        if move.values.get("status") == Status.FAILED:
            await self._end(row, move)
        elif await self._move(move):
            MESSAGES.labels(row.channel or "none", "failed").inc()
            await self._deliver_again(row.decision_id, now)

    async def _end(self, row: Delivery, move: Move) -> bool:
        """Write a move that may end the message (failed, suppressed), counting it.
        False: another worker moved the row first."""
        if not await self._move(move):
            return False
        channel = row.channel or "none"
        if move.values.get("status") == Status.FAILED:
            reason = move.values.get("last_error") or ""
            MESSAGES.labels(channel, "failed").inc()
            log.warning("message_failed", decision_id=row.decision_id, reason=reason[:200])
        elif move.values.get("status") == Status.SUPPRESSED:
            SUPPRESSIONS.labels(move.values.get("reason") or "unknown").inc()
            MESSAGES.labels(channel, "suppressed").inc()
        return True

    # --- provider feedback (webhooks) -------------------------------------------------

    async def on_delivery_status(
        self, decision_id: str, status: str, now: datetime, **detail: Any
    ) -> bool:
        """A provider reported the fate of a message: accepted, delivered or failed.
        States only move forward: a report the message is already past (a late, repeated
        or reordered webhook) changes nothing and returns False, as does one for an
        unknown decision. A report for a row still sending or in doubt is proof the
        provider took it."""
        try:
            said = Report(status)
        except ValueError:
            return False
        row = await self.ledger.get(decision_id)
        if row is None:
            return False
        provider = self.senders[row.channel].provider if row.channel else None
        if row.status in (Status.SENDING, Status.IN_DOUBT):  # the report settles the send
            detail = {**detail, "remedy": await self._remedy_record(row)}
        move = lifecycle.report(row, said, self._at(now), provider=provider, detail=detail)
        if move is None:
            STALE_REPORTS.labels(said.value, row.status).inc()
            return False
        moved = await self._move(move)
        if moved:
            MESSAGES.labels(row.channel or "none", str(move.values.get("status"))).inc()
        return moved

    async def customer_for_address(self, channel: str, address: str) -> str | None:
        row = await self.ledger.latest_to(channel, address)
        return row.customer_id if row is not None else None

    def _unsubscribe_url(self, row: Delivery) -> str:
        token = token_for(
            row.customer_id, row.channel or "email", row.decision_id, self.links.unsubscribe_secret
        )
        return f"{self.links.public_base_url}/unsubscribe?token={token}"


class MessageComposer:
    """Chooses the template (kind × channel × locale, with fallbacks), builds the context
    and renders it through the renderer (a pool of processes under hard limits). If the
    newest published version fails to render — an error, a limit reached — the last one
    that does serves (its version is recorded with the decision), and the failure is
    counted and logged; if none renders, RenderError (the message is failed with it)."""

    def __init__(
        self,
        cache: TemplateCache,
        offer_secret: str,
        renderer: Renderer,
        storms: StormsPort | None = None,
    ) -> None:
        self.cache = cache
        self.offer_secret = offer_secret
        self.renderer = renderer
        self.storms = storms
        self._notes: dict[str, tuple[float, dict[str, str]]] = {}

    async def storm_note(self, storm_id: str | None, locale: str) -> str | None:
        """The note an operator wrote for the storm, in the customer's language (read
        at most every `NOTES_FRESH_S` per storm)."""
        if storm_id is None or self.storms is None:
            return None
        kept = self._notes.get(storm_id)
        if kept is None or kept[0] < time.monotonic():
            storm = await self.storms.get(storm_id)
            kept = (time.monotonic() + NOTES_FRESH_S, dict(storm.notes) if storm else {})
            self._notes[storm_id] = kept
        return storms.note_for(kept[1], locale)

    async def render_for(
        self,
        *,
        request: schemas.OutreachRequest,
        row: Delivery,
        links: Links,
        now: datetime,
        survey: dict[str, Any] | None = None,
        remedy: Grant | None = None,
    ) -> Rendered:
        """The rendered message, its template key, the version that served and the newer
        published versions skipped because they failed."""
        assert row.channel is not None
        locale, timezone = row.locale or "en", row.time_zone or "UTC"
        note = await self.storm_note(row.storm_id, locale)
        context = self._context(row, links, survey, note, remedy)
        good = await self.cache.last_good(
            row.message_kind,
            row.channel,
            locale,
            context,
            timezone=timezone,
            renderer=self.renderer,
        )
        for template, exc in good.failures:
            RENDER_FAILURES.labels(metric_kind(row.message_kind), row.channel).inc()
            log.error(
                "template_render_failed",
                message_kind=row.message_kind,
                channel=row.channel,
                locale=template.locale,
                version=template.version,
                reason=exc.reason,
                served_version=good.template.version,
            )
        template, rendered = good.template, good.rendered
        return Rendered(
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            template_key=f"{template.message_kind}.{template.channel}.{template.locale}",
            template_version=template.version,
            skipped=[t.version for t, _ in good.failures],
        )

    def _context(
        self,
        row: Delivery,
        links: Links,
        survey: dict[str, Any] | None,
        storm_note: str | None = None,
        remedy: Grant | None = None,
    ) -> dict[str, Any]:
        """The template context of the row's message (domain/context.py)."""
        assert row.channel is not None
        offer = remedy.offer() if remedy is not None else None
        token = token_for(row.customer_id, row.channel, row.decision_id, links.unsubscribe_secret)
        return build_context(
            row.request,
            first_name=str(row.request.get("first_name") or ""),
            locale=row.locale or "en",
            timezone=row.time_zone or "UTC",
            offer=offer,
            unsubscribe_url=f"{links.public_base_url}/unsubscribe?token={token}",
            support_url=links.support_url,
            shop=links.shop(),
            survey=survey,
            storm_note=storm_note,
        )


def pending(row: Delivery) -> consolidation.Pending:
    return consolidation.Pending(
        decision_id=row.decision_id,
        customer_id=row.customer_id,
        category=row.category,
        channel=row.channel,
        cause_type=row.cause_type,
        cause_kind=row.cause_kind,
        order_id=row.order_id,
        severity=row.severity,
        intent=row.intent,
        decided_at=row.decided_at,
    )


def gathers(row: Delivery) -> bool:
    return consolidation.merges(pending(row))


def told_of(row: Delivery, message: Delivery) -> correcting.Told:
    """What a correction needs of the decision `row` about an incident, told to the
    customer by `message` (the same row, or one that carried it)."""
    return correcting.Told(
        decision_id=row.decision_id,
        customer_id=row.customer_id,
        order_id=row.order_id,
        cause_id=row.cause_id,
        cause_kind=row.cause_kind,
        channel=str(message.channel),
        sent_at=message.sent_at or message.updated_at,
        request=row.request,
        message_id=message.decision_id,
    )
