"""outreach's handlers: an outreach request in, one decision and at most one message out.

`DeliveryService` runs the pure decision pipeline, records the decision in the ledger
*before* any provider call, takes a last look at the moment of sending (resolution, a
newer revision, the pause, opt-outs and consent as of now, quiet hours), renders, claims
the row (a fenced compare-and-set), sends, and records the outcome. An answer that
leaves it open whether the provider took the message (a timeout, a 5xx, a reset after
the request left) puts the row in doubt: it is settled by asking the provider, never by
sending blindly again. The scheduler (`send_due`) releases what quiet hours, a pause or
a retry held back; the sweeper (`sweep`) takes over rows whose holder died or stalled.
docs/reliability.md lists the guarantees and the faults they were tested against.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common import schemas, tracing
from common.clock import WatermarkClock, wall_now
from common.envelope import CloudEvent, InvalidEvent, derived_id, new_event
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
from services.outreach.adapters.contact_plans import ContactPlans
from services.outreach.adapters.ledger import CauseState, Delivery, DeliveryEvent, LedgerPort
from services.outreach.adapters.optouts import OptOuts
from services.outreach.adapters.providers import (
    ABSENT,
    RETRY,
    MessageSender,
    OutboundMessage,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
)
from services.outreach.adapters.render_pool import Renderer
from services.outreach.adapters.templates import TemplateCache
from services.outreach.domain import decisions as pipeline
from services.outreach.domain.decisions import ChannelOption, ContactPlan, DeliveryPolicy
from services.outreach.domain.ramp import Paused
from services.outreach.domain.rendering import RenderError, metric_kind
from services.outreach.domain.states import Report, Status, reported

# Key of a ledger change's payload holding the trace context (never published as data).
TRACE_KEY = "_trace"
# A released message whose last look cannot be taken (preferences away) waits this long.
OUTAGE_PAUSE = timedelta(seconds=10)
log = get_logger(__name__)
SOURCE = "/outreach/outreach"


@dataclass
class SendingPolicy:
    # Provider calls that may fail (other than by throttling) before a message is failed.
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    # The lease of a claimed send: longer than any provider call can take (the SDK
    # timeouts), so a row still in `sending` after it was left by a process that died or
    # stalled. Decided rows carry the same lease between their decision and their claim.
    in_doubt_after: timedelta = timedelta(minutes=10)
    # After an ambiguous answer (a timeout, a 5xx, a reset after the request left), how
    # long before the provider is asked whether it has the message: long enough for a
    # request still on its way to land, and for a signed event to report it.
    in_doubt_settle: timedelta = timedelta(seconds=30)
    # How long a send may stay in doubt while the provider cannot be asked before it is
    # failed for a person to look at.
    in_doubt_give_up: timedelta = timedelta(hours=24)
    # Channels whose provider confirms every accepted message by a signed event (email,
    # when SENDGRID_WEBHOOK_PUBLIC_KEY is set): no event by the time we ask = not sent —
    # provided our webhooks could hear it (see `_events_would_have_come`).
    confirmed_by_events: frozenset[str] = frozenset()
    # How long the provider may take to retry an event our webhooks did not take (they
    # were down): after a worker has been up this long, a missing event means no message.
    events_retried_within: timedelta = timedelta(hours=1)
    # A worker not seen for this long is down (workers record themselves every second).
    worker_seen_within: timedelta = timedelta(seconds=5)


@dataclass
class Links:
    public_base_url: str = "http://127.0.0.1:8083"
    support_url: str = "https://shop.example/help"
    shop_name: str = "Example Shop"
    support_email: str = "help@shop.example"
    support_phone: str = "+49 30 1234567"
    unsubscribe_secret: str = ""


def _facts(request: schemas.OutreachRequest) -> pipeline.RequestFacts:
    return pipeline.RequestFacts(
        request_id=request.request_id,
        customer_id=request.customer_id,
        intent=request.intent.value,
        message_kind=request.message_kind,
        severity=request.severity.value,
        cause_id=request.cause.id,
        offer_tier=request.offer_tier,
    )


class DeliveryService:
    def __init__(
        self,
        *,
        ledger: LedgerPort,
        plans: ContactPlans,
        senders: dict[str, MessageSender],
        renderer: Any,
        offers: Any,
        policy: DeliveryPolicy,
        sending: SendingPolicy,
        links: Links,
        optouts: OptOuts | None = None,
        paused: Paused | None = None,
        wall: Callable[[], datetime] | None = None,
    ) -> None:
        self.ledger = ledger
        self.plans = plans
        self.senders = senders
        self.renderer = renderer
        self.offers = offers
        self.policy = policy
        self.sending = sending
        self.links = links
        self.optouts = optouts
        self.paused = paused or Paused()
        # Leases, claims and operators' pauses run in wall time, whatever clock decides:
        # a replay in event time still holds a claim for real seconds.
        self.wall = wall or wall_now

    # --- inputs --------------------------------------------------------------------

    async def on_incident(self, event: CloudEvent, now: datetime) -> None:
        """Only resolutions matter here: they stop what has not been sent yet."""
        if event.type != "incident.resolved":
            return
        incident = schemas.parse_payload(event, schemas.Incident)
        await self.ledger.mark_resolved(
            incident.incident_id, event.time, incident.resolution or "resolved"
        )
        for row in await self.ledger.open_for_cause(incident.incident_id):
            await self._suppress_existing(
                row,
                pipeline.Suppression.ALREADY_RESOLVED,
                "already resolved: incident closed while held",
                now,
            )

    async def on_customer_event(self, event: CloudEvent) -> int:
        """commerce.customers: only an erasure matters here — the customer's personal
        data leaves the ledger (ledger.erase_customer). Returns the rows scrubbed."""
        if event.type != "customer.erased":
            return 0
        erased = schemas.parse_payload(event, schemas.CustomerErased)
        scrubbed = await self.ledger.erase_customer(erased.customer_id, self.wall())
        log.info("customer_erased", customer_id=erased.customer_id, rows_scrubbed=scrubbed)
        return scrubbed

    async def scrub_due(self, retention: timedelta) -> int:
        """The ledger's retention: settled rows older than `retention` (and settled rows
        of erased customers) lose their personal data."""
        return await self.ledger.scrub_due(self.wall() - retention)

    async def on_request(self, event: CloudEvent, now: datetime) -> None:
        if event.type != "outreach.request.created":
            raise InvalidEvent(f"outreach does not handle {event.type!r}", code="unknown_type")
        request = schemas.parse_payload(event, schemas.OutreachRequest)
        facts = _facts(request)
        revision = pipeline.revision_of(request.context)
        cause = (request.cause.type, request.cause.id)
        plan = await self.plans.get(request.customer_id, pipeline.category_of(facts).value)
        known = await self.ledger.cause_state(
            *cause, revision, recent=(request.customer_id, now - self.policy.cap_window)
        )
        decision = pipeline.decide(
            facts,
            plan=plan,
            already_decided=False,
            resolved=known.resolved,
            superseded=known.superseded,
            experienced=await self._experienced(request),
            paused=self.paused.applies(facts.intent),
            sent_in_window=known.sent_in_window,
            now=now,
            policy=self.policy,
        )
        row = self._row(request, decision, plan, now, revision)
        if not await self.ledger.create(
            row, self._event(row, row.status, now, reason=decision.reason)
        ):
            # Decided before (a redelivery after a crash, or another worker first): the
            # decision that stands is the first; finish what its delivery started.
            existing = await self.ledger.by_request(request.request_id)
            if existing is not None and existing.status == Status.DECIDED:
                await self._deliver(existing, now)
            return
        failpoint("outreach.after_decision")
        if decision.outcome == "suppress":
            SUPPRESSIONS.labels(decision.reason or "unknown").inc()
            MESSAGES.labels(row.channel or "none", "suppressed").inc()
            return
        if decision.outcome == "schedule":
            MESSAGES.labels(row.channel or "none", "scheduled").inc()
        await self._supersede_older(row, now)
        if decision.outcome == "send":
            # The last look needs nothing new of the ledger: it was read just now.
            await self._deliver(row, now, plan=plan, known=known)

    async def _experienced(self, request: schemas.OutreachRequest) -> bool:
        """For a check-in after an incident (`post_incident_checkin`): whether its promise
        was broken or a message about one of the order's incidents was sent. Any other
        request: True."""
        if request.message_kind != "post_incident_checkin":
            return True
        incident = (request.context or {}).get("incident") or {}
        facts = incident.get("facts") or {}
        if facts.get("promise_broken", True):  # older watchers did not say: as before
            return True
        ids = [str(i) for i in facts.get("incident_ids") or []]
        return await self.ledger.reached_about(request.customer_id, ids)

    async def _supersede_older(self, row: Delivery, now: datetime) -> None:
        """A newer revision of a message replaces the older ones not yet handed over."""
        if row.revision <= 1:
            return  # the first revision (revision_of): there is none older
        for older in await self.ledger.older_unsent(row.cause_type, row.cause_id, row.revision):
            await self._suppress_existing(
                older,
                pipeline.Suppression.SUPERSEDED,
                f"superseded: revision {row.revision} replaces revision {older.revision}",
                now,
            )

    # --- time ----------------------------------------------------------------------

    async def send_due(self, now: datetime) -> int:
        """Release scheduled messages whose time has come (quiet hours over, a retry due)
        and, after a resume, the held ones (on the ramp); each gets the last look before
        it is sent. Returns how many were handled."""
        rows = await self.ledger.due(now)
        if not self.paused.all:
            rows += [r for r in await self.ledger.held() if not self.paused.applies(r.intent)]
        rows = self._within_ramp(rows, self.wall())
        for row in rows:
            if self.paused.applies(row.intent):
                continue
            if row.expires_at is not None and now > row.expires_at:
                await self._expire(row, now)
            elif row.channel is None:  # held by a pause before a channel was chosen
                await self._redecide(row, now)
            elif await self._release(row, now):
                try:
                    await self._deliver(row, now)
                except DependencyUnavailable:
                    # No last look without preferences: back to waiting, a little later.
                    await self.ledger.transition(
                        row.decision_id,
                        (Status.DECIDED,),
                        None,
                        fence=row.attempts,
                        status=Status.SCHEDULED,
                        send_at=now + OUTAGE_PAUSE,
                        lease_until=None,
                    )
                    raise
        return len(rows)

    async def send_held(self, now: datetime) -> int:
        """`send_due` only if a pause held something and is over (on the event clock the
        consumer sends the rest in order with its records: `send_due_until`)."""
        if self.paused.all or not await self.ledger.held(limit=1):
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

    async def _release(self, row: Delivery, now: datetime) -> bool:
        """scheduled → decided, leased to this worker until it claims the send."""
        moved = await self.ledger.transition(
            row.decision_id,
            (Status.SCHEDULED,),
            None,
            fence=row.attempts,
            status=Status.DECIDED,
            updated_at=now,
            lease_until=self._lease(),
        )
        if moved:
            row.status = Status.DECIDED
        return moved

    async def _expire(self, row: Delivery, now: datetime) -> None:
        """Not sent within its time: given up (a retry that never went through), or,
        if it only waited, suppressed as expired (SPEC reason quiet_hours_expired)."""
        if row.failures or row.attempts:
            await self._fail(
                row, "gave_up: not sent before it expired", now, expected=(Status.SCHEDULED,)
            )
            return
        await self._suppress_existing(
            row, pipeline.Suppression.QUIET_HOURS_EXPIRED, "scheduled send expired", now
        )

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

    async def _redecide(self, row: Delivery, now: datetime) -> None:
        """A decision held by a pause is decided now, from the contact plan on (the cap
        counts from now; it did not count while it was held)."""
        request = schemas.OutreachRequest.model_validate(row.request)
        facts = _facts(request)
        plan = await self.plans.get(row.customer_id, row.category)
        known = await self.ledger.cause_state(
            row.cause_type,
            row.cause_id,
            row.revision,
            recent=(row.customer_id, now - self.policy.cap_window),
        )
        decision = pipeline.decide(
            facts,
            plan=plan,
            already_decided=False,
            resolved=known.resolved,
            superseded=known.superseded,
            paused=False,
            sent_in_window=known.sent_in_window,
            now=now,
            policy=self.policy,
        )
        if decision.outcome == "suppress":
            await self._suppress_existing(
                row, decision.reason or pipeline.Suppression.PAUSED, decision.rule, now
            )
            return
        await self._apply(row, decision, now, plan=plan, expected=Status.SCHEDULED)

    async def _apply(
        self,
        row: Delivery,
        decision: pipeline.Decision,
        now: datetime,
        *,
        plan: ContactPlan | None,
        expected: Status,
    ) -> None:
        """Move a row to what a (re)decision says: scheduled for later, or decided now
        (and delivered)."""
        fresh = self._row(
            schemas.OutreachRequest.model_validate(row.request), decision, plan, now, row.revision
        )
        target = Status.SCHEDULED if decision.outcome == "schedule" else Status.DECIDED
        values: dict[str, Any] = dict(
            channel=fresh.channel,
            address=fresh.address,
            locale=fresh.locale,
            time_zone=fresh.time_zone,
            fallbacks=fresh.fallbacks,
            rule=decision.rule,
            send_at=decision.send_at,
            expires_at=fresh.expires_at,
            updated_at=now,
            status=target,
            lease_until=self._lease() if target is Status.DECIDED else None,
        )
        event = None
        if target is Status.SCHEDULED:
            row.send_at = decision.send_at
            event = self._event(row, Status.SCHEDULED, now, channel=fresh.channel)
        moved = await self.ledger.transition(
            row.decision_id, (expected,), event, fence=row.attempts, **values
        )
        if moved and target is Status.DECIDED:
            refreshed = await self.ledger.get(row.decision_id)
            if refreshed is not None:
                await self._deliver(refreshed, now, plan=plan)

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
        request = schemas.OutreachRequest.model_validate(row.request)
        if plan is None:
            plan = await self.plans.get(row.customer_id, row.category)
        if known is None:
            known = await self.ledger.cause_state(row.cause_type, row.cause_id, row.revision)
        last_look = pipeline.recheck(
            _facts(request),
            channel=row.channel,
            plan=plan,
            resolved=known.resolved,
            superseded=known.superseded,
            paused=self.paused.applies(row.intent),
            now=now,
            policy=self.policy,
        )
        if last_look.outcome == "suppress":
            assert last_look.reason is not None
            await self._suppress_existing(row, last_look.reason, last_look.rule, now)
            return
        if last_look.outcome == "schedule":
            await self._apply(row, last_look, now, plan=plan, expected=Status.DECIDED)
            return
        if (last_look.channel, last_look.address) != (row.channel, row.address):
            row.channel, row.address = last_look.channel, last_look.address
            row.fallbacks = [f.__dict__ for f in last_look.fallbacks]
        claimed = await self._claim(row, request, now)
        if claimed is None:
            return
        message, template_key, version = claimed
        failpoint("outreach.before_provider_call")
        try:
            result = await self.senders[message.channel].send(message)
        except TransientProviderError as exc:
            if exc.maybe_sent:
                await self._in_doubt(row, str(exc), self.sending.in_doubt_settle, now)
            else:
                await self._retry_later(row, exc, now)
            return
        except PermanentProviderError as exc:
            await self._on_permanent(row, exc, now)
            return
        failpoint("outreach.after_provider_call")
        await self._sent(row, result, now, template_key=template_key, version=version)

    async def _claim(
        self, row: Delivery, request: schemas.OutreachRequest, now: datetime
    ) -> tuple[OutboundMessage, str, int] | None:
        """Render, then claim the row for one provider call: decided → sending with the
        next attempt number (the fence) and a lease. None when the template fails to
        render (the message is failed) or another worker claimed it first."""
        assert row.channel is not None and row.address is not None
        try:
            rendered, template_key, version, skipped = await self.renderer.render_for(
                request=request, row=row, links=self.links, now=now
            )
        except RenderError as exc:
            RENDER_FAILURES.labels(metric_kind(row.message_kind), row.channel).inc()
            await self._fail(row, f"render_failed: {exc}", now, expected=(Status.DECIDED,))
            return None
        wall = self.wall()
        claimed = await self.ledger.transition(
            row.decision_id,
            (Status.DECIDED,),
            self._event(
                row,
                Status.SENDING,
                now,
                detail={"channel": row.channel},
                # newer published versions that failed and were skipped
                template_skipped=skipped or None,
            ),
            fence=row.attempts,
            status=Status.SENDING,
            channel=row.channel,
            address=row.address,
            fallbacks=row.fallbacks,
            template_key=template_key,
            template_version=version,
            subject=rendered.subject,
            body_text=rendered.text,
            body_html=rendered.html,
            attempts=row.attempts + 1,
            claimed_at=wall,
            lease_until=wall + self.sending.in_doubt_after,
            updated_at=now,
        )
        if not claimed:
            return None
        row.attempts += 1
        row.status, row.claimed_at = Status.SENDING, wall
        row.template_key, row.template_version = template_key, version
        return (
            self._message(row, rendered.subject, rendered.html, rendered.text),
            template_key,
            version,
        )

    async def _sent(
        self, row: Delivery, result: SendResult, now: datetime, *, template_key: str, version: int
    ) -> None:
        sent = await self.ledger.transition(
            row.decision_id,
            (Status.SENDING,),
            self._event(
                row,
                Status.SENT,
                now,
                provider_message_id=result.provider_message_id,
                outbox=result.outbox,
                template=template_key,
                template_version=version,
            ),
            fence=row.attempts,
            status=Status.SENT,
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            outbox=result.outbox,
            sent_at=now,
            updated_at=now,
            lease_until=None,
            last_error=None,
        )
        if sent:
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

    async def _in_doubt(
        self, row: Delivery, reason: str, look_in: timedelta, now: datetime
    ) -> None:
        """The provider may have the message: ask it after `look_in`, never resend now."""
        moved = await self.ledger.transition(
            row.decision_id,
            (Status.SENDING,),
            self._event(row, Status.IN_DOUBT, now, reason=reason[:200], mark=self.wall()),
            fence=row.attempts,
            status=Status.IN_DOUBT,
            lease_until=self.wall() + look_in,
            updated_at=now,
            last_error=f"in doubt: {reason}"[:500],
        )
        if moved:
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
        looking = await self.ledger.transition(
            row.decision_id,
            (row.status,),
            None,
            fence=row.attempts,
            status=Status.IN_DOUBT,
            lease_until=self.wall() + self.sending.in_doubt_after,
        )
        if not looking:
            return False
        row.status = Status.IN_DOUBT
        sender = self.senders[row.channel]
        claimed_at = row.claimed_at or self.wall()
        message = self._message(row, row.subject, row.body_html, row.body_text or "")
        lookup = await sender.find_sent(message, claimed_at)
        if lookup.state == "unknown" and row.channel in self.sending.confirmed_by_events:
            lookup = ABSENT if await self._events_would_have_come(claimed_at) else RETRY
        IN_DOUBT.labels(row.channel, lookup.state).inc()
        log.warning("in_doubt_reconciled", decision_id=row.decision_id, outcome=lookup.state)
        if lookup.state == "found":
            return await self._found(row, lookup.provider_message_id, sender.provider, now)
        if lookup.state == "absent":
            return await self._absent(row, now)
        if lookup.state == "retry" and self.wall() - claimed_at < self.sending.in_doubt_give_up:
            await self.ledger.transition(
                row.decision_id,
                (Status.IN_DOUBT,),
                None,
                fence=row.attempts,
                status=Status.IN_DOUBT,
                lease_until=self.wall() + self.sending.in_doubt_settle,
            )
            return False
        await self._fail(
            row,
            "in_doubt: the provider cannot tell whether it was sent",
            now,
            expected=(Status.IN_DOUBT,),
        )
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

    async def _found(
        self, row: Delivery, provider_message_id: str | None, provider: str, now: datetime
    ) -> bool:
        moved = await self.ledger.transition(
            row.decision_id,
            (Status.IN_DOUBT,),
            self._event(
                row, Status.SENT, now, provider_message_id=provider_message_id, reconciled=True
            ),
            fence=row.attempts,
            status=Status.SENT,
            provider=provider,
            provider_message_id=provider_message_id,
            sent_at=now,
            updated_at=now,
            lease_until=None,
        )
        if moved:
            MESSAGES.labels(row.channel, "sent").inc()
        return moved

    async def _absent(self, row: Delivery, now: datetime) -> bool:
        """Certainly not at the provider: decided again (counted as a failed attempt)
        and delivered after the last look, under a new claim."""
        if row.failures + 1 >= self.sending.max_attempts:
            await self._fail(
                row,
                f"gave_up: not taken by the provider in {row.failures + 1} attempts",
                now,
                expected=(Status.IN_DOUBT,),
            )
            return True
        moved = await self.ledger.transition(
            row.decision_id,
            (Status.IN_DOUBT,),
            None,
            fence=row.attempts,
            status=Status.DECIDED,
            failures=row.failures + 1,
            lease_until=self._lease(),
            updated_at=now,
            last_error="in doubt: not at the provider; sending again",
        )
        if moved:
            refreshed = await self.ledger.get(row.decision_id)
            if refreshed is not None:
                await self._deliver(refreshed, now)
        return moved

    async def _retry_later(self, row: Delivery, exc: TransientProviderError, now: datetime) -> None:
        """The provider did not take it (429, refused, breaker open): try again later,
        after the last look again. Throttling does not count as a failed attempt."""
        failures = row.failures + (0 if exc.throttled else 1)
        if failures >= self.sending.max_attempts:
            await self._fail(
                row, f"gave_up after {failures} attempts: {exc}", now, expected=(Status.SENDING,)
            )
            return
        attempt = max(failures, 1)
        delay = min(self.sending.backoff_cap_s, self.sending.backoff_base_s * 2 ** (attempt - 1))
        delay = max(delay * random.uniform(0.5, 1.0), exc.retry_after or 0.0)
        await self.ledger.transition(
            row.decision_id,
            (Status.SENDING,),
            None,
            fence=row.attempts,
            status=Status.SCHEDULED,
            send_at=now + timedelta(seconds=delay),
            failures=failures,
            lease_until=None,
            updated_at=now,
            last_error=str(exc),
        )

    async def _on_permanent(
        self, row: Delivery, exc: PermanentProviderError, now: datetime
    ) -> None:
        if exc.opt_out and self.optouts is not None:
            await self.optouts.opted_out(
                row.customer_id, row.channel or "", "provider_error", now, code=str(exc.code)
            )
        fallbacks = [ChannelOption(**f) for f in row.fallbacks or []]
        if not fallbacks:
            await self._fail(row, f"{exc.code}: {exc.reason}", now, expected=(Status.SENDING,))
            return
        nxt, rest = fallbacks[0], fallbacks[1:]
        moved = await self.ledger.transition(
            row.decision_id,
            (Status.SENDING,),
            self._event(
                row, Status.FAILED, now, reason=f"{exc.code}", fallback_to=nxt.channel,
                channel=row.channel,
            ),
            fence=row.attempts,
            status=Status.DECIDED,
            channel=nxt.channel,
            address=nxt.address,
            fallbacks=[f.__dict__ for f in rest],
            lease_until=self._lease(),
            updated_at=now,
            last_error=f"{row.channel}: {exc}",
        )  # fmt: skip
        if moved:
            MESSAGES.labels(row.channel or "none", "failed").inc()
            refreshed = await self.ledger.get(row.decision_id)
            if refreshed is not None:
                await self._deliver(refreshed, now)

    async def _fail(
        self, row: Delivery, reason: str, now: datetime, *, expected: tuple[str, ...]
    ) -> None:
        if await self.ledger.transition(
            row.decision_id,
            expected,
            self._event(row, Status.FAILED, now, reason=reason[:200]),
            fence=row.attempts,
            status=Status.FAILED,
            reason=reason[:64],
            last_error=reason,
            lease_until=None,
            updated_at=now,
        ):
            MESSAGES.labels(row.channel or "none", "failed").inc()
            log.warning("message_failed", decision_id=row.decision_id, reason=reason[:200])

    async def _suppress_existing(
        self, row: Delivery, reason: pipeline.Suppression, rule: str, now: datetime
    ) -> None:
        if await self.ledger.transition(
            row.decision_id,
            (Status.SCHEDULED, Status.DECIDED),
            self._event(row, Status.SUPPRESSED, now, reason=reason),
            fence=row.attempts,
            status=Status.SUPPRESSED,
            reason=reason.value,
            rule=rule,
            lease_until=None,
            updated_at=now,
        ):
            SUPPRESSIONS.labels(reason.value).inc()
            MESSAGES.labels(row.channel or "none", "suppressed").inc()

    def _lease(self) -> datetime:
        return self.wall() + self.sending.in_doubt_after

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
            report = Report(status)
        except ValueError:
            return False
        row = await self.ledger.get(decision_id)
        if row is None:
            return False
        sources, target = reported(report)
        if row.status not in sources:
            STALE_REPORTS.labels(report.value, row.status).inc()
            return False
        values: dict[str, Any] = {}
        if row.status in (Status.SENDING, Status.IN_DOUBT):
            values = {
                "sent_at": row.updated_at or now,
                "provider_message_id": detail.get("provider_message_id"),
                "provider": self.senders[row.channel].provider if row.channel else None,
                "lease_until": None,
            }
        moved = await self.ledger.transition(
            decision_id,
            tuple(sources),
            self._event(row, target, now, **detail),
            status=target,
            updated_at=now,
            reason=(str(detail.get("reason"))[:64] if target == Status.FAILED else row.reason),
            **values,
        )
        if moved:
            MESSAGES.labels(row.channel or "none", target.value).inc()
        return moved

    async def customer_for_address(self, channel: str, address: str) -> str | None:
        row = await self.ledger.latest_to(channel, address)
        return row.customer_id if row is not None else None

    # --- records -------------------------------------------------------------------

    def _row(
        self,
        request: schemas.OutreachRequest,
        decision: pipeline.Decision,
        plan: ContactPlan | None,
        now: datetime,
        revision: int,
    ) -> Delivery:
        status = {
            "suppress": Status.SUPPRESSED,
            "schedule": Status.SCHEDULED,
            "send": Status.DECIDED,
        }[decision.outcome]
        held_until = decision.send_at or now
        return Delivery(
            decision_id=decision.decision_id,
            request_id=request.request_id,
            customer_id=request.customer_id,
            order_id=request.order_id,
            cause_type=request.cause.type,
            cause_id=request.cause.id,
            cause_kind=request.cause.kind,
            intent=request.intent.value,
            message_kind=request.message_kind,
            severity=request.severity.value,
            category=decision.category.value,
            status=status,
            reason=decision.reason.value if decision.reason else None,
            rule=decision.rule,
            channel=decision.channel,
            address=decision.address,
            locale=plan.locale if plan else None,
            time_zone=plan.time_zone if plan else None,
            send_at=decision.send_at,
            decided_at=now,
            updated_at=now,
            attempts=0,
            failures=0,
            revision=revision,
            lease_until=self._lease() if status is Status.DECIDED else None,
            # Held by a pause: no expiry until it is decided.
            expires_at=(
                None
                if status is Status.SCHEDULED and decision.send_at is None
                else held_until + self.policy.scheduled_expiry
            ),
            fallbacks=[f.__dict__ for f in decision.fallbacks],
            request={
                **request.model_dump(mode="json"),
                "first_name": plan.first_name if plan else "",
                # The request's trace, for changes made later (a scheduled send at 08:00).
                **tracing.current_trace_fields(),
            },
            outbox=False,
        )

    def _event(
        self, row: Delivery, status: str, now: datetime, *, mark: Any = None, **detail: Any
    ) -> DeliveryEvent:
        """One ledger event (and `outreach.messages` record, for public states). Its id
        is derived from the change — decision, state, attempt, channel, and for states a
        row can enter more than once per attempt (scheduled, in doubt) their moment —
        so that a change written twice is one event."""
        seq = {Status.SENDING: row.attempts + 1}.get(Status(status), row.attempts)
        data: dict[str, Any] = {
            "customer_id": row.customer_id,
            "order_id": row.order_id,
            "decision_id": row.decision_id,
            "request_id": row.request_id,
            "cause": {"type": row.cause_type, "id": row.cause_id, "kind": row.cause_kind},
            "intent": row.intent,
            "message_kind": row.message_kind,
            "channel": detail.pop("channel", row.channel),
            "template": detail.pop("template", row.template_key),
            "template_version": detail.pop("template_version", row.template_version),
        }
        if status == Status.SCHEDULED:
            data["send_at"] = row.send_at.isoformat() if row.send_at else None
            mark = mark or data["send_at"] or "held"
        for key, value in detail.items():
            if value is not None:
                data[key] = value.value if hasattr(value, "value") else value
        event_id = derived_id(
            "message",
            row.decision_id,
            status,
            seq,
            data.get("channel"),
            *([mark.isoformat() if isinstance(mark, datetime) else str(mark)] if mark else []),
        )
        trace_fields = tracing.current_trace_fields() or {
            k: v for k in tracing.TRACE_FIELDS if isinstance(v := row.request.get(k), str)
        }
        if trace_fields:
            # Kept with the change so the relay's message event joins the request's trace;
            # message_event moves it out of `data` into the event's extension.
            data[TRACE_KEY] = trace_fields
        return DeliveryEvent(
            event_id=event_id,
            decision_id=row.decision_id,
            customer_id=row.customer_id,
            status=status,
            at=now,
            payload=data,
            published=False,
        )

    def _unsubscribe_url(self, row: Delivery) -> str:
        from services.outreach.domain.unsubscribe import token_for

        token = token_for(
            row.customer_id, row.channel or "email", row.decision_id, self.links.unsubscribe_secret
        )
        return f"{self.links.public_base_url}/unsubscribe?token={token}"


def message_event(row: DeliveryEvent) -> CloudEvent:
    """The `outreach.messages` CloudEvent for one ledger event (SPEC §4); with tracing on
    it carries the trace of the request that caused the change."""
    data = dict(row.payload)
    trace_fields = data.pop(TRACE_KEY, None)
    extensions: dict[str, str] = {}
    if isinstance(trace_fields, dict) and tracing.enabled():
        extensions = {k: v for k, v in trace_fields.items() if k in tracing.TRACE_FIELDS}
    return new_event(
        type=f"outreach.message.{row.status}",
        source=SOURCE,
        subject=row.decision_id,
        id=row.event_id,
        time=row.at,
        data=data,
        **extensions,
    )


async def sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline))


class MessageComposer:
    """Chooses the template (kind × channel × locale, with fallbacks), builds the context
    and renders it through the renderer (a pool of processes under hard limits). If the
    newest published version fails to render — an error, a limit reached — the last one
    that does serves (its version is recorded with the decision), and the failure is
    counted and logged; if none renders, RenderError (the message is failed with it)."""

    def __init__(self, cache: TemplateCache, offer_secret: str, renderer: Renderer) -> None:
        self.cache = cache
        self.offer_secret = offer_secret
        self.renderer = renderer

    async def render_for(
        self, *, request: schemas.OutreachRequest, row: Delivery, links: Links, now: datetime
    ) -> tuple[Any, str, int, list[int]]:
        """(the rendered message, its template key, the version that served, the newer
        published versions skipped because they failed)."""
        from services.outreach.domain.context import build_context
        from services.outreach.domain.offers import make_offer
        from services.outreach.domain.unsubscribe import token_for

        assert row.channel is not None
        locale = row.locale or "en"
        timezone = row.time_zone or "UTC"
        offer = make_offer(
            row.decision_id,
            request.offer_tier,
            request.severity.value,
            row.decided_at,
            self.offer_secret,
        )
        token = token_for(row.customer_id, row.channel, row.decision_id, links.unsubscribe_secret)
        context = build_context(
            row.request,
            first_name=str(row.request.get("first_name") or ""),
            locale=locale,
            timezone=timezone,
            offer=offer.as_context() if offer else None,
            unsubscribe_url=f"{links.public_base_url}/unsubscribe?token={token}",
            support_url=links.support_url,
            shop={
                "name": links.shop_name,
                "support_email": links.support_email,
                "support_phone": links.support_phone,
            },
        )
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
        template = good.template
        key = f"{template.message_kind}.{template.channel}.{template.locale}"
        return good.rendered, key, template.version, [t.version for t, _ in good.failures]
