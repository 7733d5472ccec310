"""outreach's handlers: an outreach request in, one decision and at most one message out.

`DeliveryService` runs the pure decision pipeline, records the decision in the ledger
*before* any provider call, renders, sends, and records the outcome. The scheduler
(`send_due`) sends what quiet hours or a pause held back, re-checking resolution first.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from common import schemas, tracing
from common.envelope import CloudEvent, InvalidEvent, derived_id, new_event
from common.failpoints import failpoint
from common.logs import get_logger
from common.metrics import IN_DOUBT, MESSAGES, RENDER_FAILURES, SUPPRESSIONS
from services.outreach.adapters.contact_plans import ContactPlans, PreferencesUnavailable
from services.outreach.adapters.ledger import Delivery, DeliveryEvent, Ledger
from services.outreach.adapters.providers import (
    ABSENT,
    MessageSender,
    OutboundMessage,
    PermanentProviderError,
    TransientProviderError,
)
from services.outreach.domain import decisions as pipeline
from services.outreach.domain.decisions import ChannelOption, ContactPlan, DeliveryPolicy
from services.outreach.domain.ramp import Paused
from services.outreach.domain.rendering import RenderError

# Key of a ledger change's payload holding the trace context (never published as data).
TRACE_KEY = "_trace"
log = get_logger(__name__)
SOURCE = "/outreach/outreach"


@dataclass
class SendingPolicy:
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    # Longer than any provider call can take (the SDK timeouts are 10 s), so a row still
    # in `sending` after it was left by a process that died.
    in_doubt_after: timedelta = timedelta(minutes=10)
    # Channels whose provider confirms every accepted message by a signed event (email,
    # when SENDGRID_WEBHOOK_PUBLIC_KEY is set): no event by `in_doubt_after` = not sent.
    confirmed_by_events: frozenset[str] = frozenset()


@dataclass
class Links:
    public_base_url: str = "http://127.0.0.1:8083"
    support_url: str = "https://shop.example/help"
    shop_name: str = "Example Shop"
    support_email: str = "help@shop.example"
    support_phone: str = "+49 30 1234567"
    unsubscribe_secret: str = ""


class DeliveryService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        plans: ContactPlans,
        senders: dict[str, MessageSender],
        renderer: Any,
        offers: Any,
        policy: DeliveryPolicy,
        sending: SendingPolicy,
        links: Links,
        optouts: Any = None,
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
        # Operators pause and resume in wall time, whatever clock decides (a replay in
        # event time still ramps in real seconds).
        self.wall = wall or (lambda: datetime.now(UTC))

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

    async def on_request(self, event: CloudEvent, now: datetime) -> None:
        if event.type != "outreach.request.created":
            raise InvalidEvent(f"outreach does not handle {event.type!r}", code="unknown_type")
        request = schemas.parse_payload(event, schemas.OutreachRequest)
        facts = pipeline.RequestFacts(
            request_id=request.request_id,
            customer_id=request.customer_id,
            intent=request.intent.value,
            message_kind=request.message_kind,
            severity=request.severity.value,
            cause_id=request.cause.id,
            offer_tier=request.offer_tier,
        )
        existing = await self.ledger.by_request(request.request_id)
        if existing is not None:
            # Redelivery after a crash: finish what the first delivery started.
            if existing.status == "decided":
                await self._deliver(existing, now)
            return
        category = pipeline.category_of(facts).value
        try:
            plan = await self.plans.get(request.customer_id, category)
        except PreferencesUnavailable:
            raise  # not the input's fault: the processor retries, then dead-letters
        decision = pipeline.decide(
            facts,
            plan=plan,
            already_decided=False,
            resolved=await self.ledger.is_resolved(request.cause.id),
            paused=self.paused.applies(facts.intent),
            sent_in_window=await self.ledger.count_recent(
                request.customer_id, now - self.policy.cap_window
            ),
            now=now,
            policy=self.policy,
        )
        row = self._row(request, decision, plan, now)
        status = {"suppress": "suppressed", "schedule": "scheduled", "send": "decided"}[
            decision.outcome
        ]
        row.status = status
        event_row = self._event(row, status, now, reason=decision.reason)
        if not await self.ledger.create(row, event_row):
            return  # another worker decided it first
        if decision.outcome == "suppress":
            SUPPRESSIONS.labels(decision.reason or "unknown").inc()
            MESSAGES.labels(row.channel or "none", "suppressed").inc()
            return
        if decision.outcome == "schedule":
            MESSAGES.labels(row.channel or "none", "scheduled").inc()
            return
        await self._deliver(row, now)

    # --- time ----------------------------------------------------------------------

    async def send_due(self, now: datetime) -> int:
        """Send scheduled messages whose time has come; returns how many were handled."""
        rows = await self.ledger.due(now)
        if not self.paused.all:
            rows += [r for r in await self.ledger.held() if not self.paused.applies(r.intent)]
        rows = self._within_ramp(rows, self.wall())
        for row in rows:
            if self.paused.applies(row.intent):
                continue
            if await self.ledger.is_resolved(row.cause_id):
                await self._suppress_existing(
                    row,
                    pipeline.Suppression.ALREADY_RESOLVED,
                    "already resolved: closed before 08:00",
                    now,
                )
                continue
            if row.send_at is not None and now - row.send_at > self.policy.scheduled_expiry:
                await self._suppress_existing(
                    row, pipeline.Suppression.QUIET_HOURS_EXPIRED, "scheduled send expired", now
                )
                continue
            if row.channel is None:  # held by a pause before a channel was chosen
                await self._redecide(row, now)
                continue
            if await self.ledger.transition(
                row.decision_id, ("scheduled",), None, status="decided", updated_at=now
            ):
                row.status = "decided"
                await self._deliver(row, now)
        return len(rows)

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
        request = schemas.OutreachRequest.model_validate(row.request)
        plan = await self.plans.get(row.customer_id, row.category)
        facts = pipeline.RequestFacts(
            request_id=request.request_id,
            customer_id=request.customer_id,
            intent=request.intent.value,
            message_kind=request.message_kind,
            severity=request.severity.value,
            cause_id=request.cause.id,
            offer_tier=request.offer_tier,
        )
        decision = pipeline.decide(
            facts,
            plan=plan,
            already_decided=False,
            resolved=False,
            paused=False,
            sent_in_window=await self.ledger.count_recent(
                row.customer_id, now - self.policy.cap_window
            ),
            now=now,
            policy=self.policy,
        )
        if decision.outcome == "suppress":
            await self._suppress_existing(
                row, decision.reason or pipeline.Suppression.PAUSED, decision.rule, now
            )
            return
        fresh = self._row(request, decision, plan, now)
        values = dict(
            channel=fresh.channel,
            address=fresh.address,
            locale=fresh.locale,
            time_zone=fresh.time_zone,
            fallbacks=fresh.fallbacks,
            rule=decision.rule,
            send_at=decision.send_at,
            updated_at=now,
            status="scheduled" if decision.outcome == "schedule" else "decided",
        )
        await self.ledger.transition(row.decision_id, ("scheduled",), None, **values)
        if decision.outcome == "send":
            refreshed = await self.ledger.get(row.decision_id)
            if refreshed is not None:
                await self._deliver(refreshed, now)

    # --- delivery ------------------------------------------------------------------

    async def _deliver(self, row: Delivery, now: datetime) -> None:
        """decided → sending → sent | failed | (fallback) — one provider call at most per
        channel attempt, with the ledger written before the call."""
        request = schemas.OutreachRequest.model_validate(row.request)
        assert row.channel is not None and row.address is not None
        try:
            rendered, template_key, version = await self.renderer.render_for(
                request=request, row=row, links=self.links, now=now
            )
        except RenderError as exc:
            RENDER_FAILURES.labels(row.message_kind, row.channel).inc()
            await self._fail(row, f"render_failed: {exc}", now, expected=("decided",))
            return
        claimed = await self.ledger.transition(
            row.decision_id,
            ("decided",),
            self._event(row, "sending", now, detail={"channel": row.channel}),
            status="sending",
            template_key=template_key,
            template_version=version,
            subject=rendered.subject,
            body_text=rendered.text,
            body_html=rendered.html,
            attempts=row.attempts + 1,
            updated_at=now,
        )
        if not claimed:
            return
        sender = self.senders[row.channel]
        message = self._message(row, rendered.subject, rendered.html, rendered.text)
        failpoint("outreach.before_provider_call")
        try:
            result = await sender.send(message)
        except TransientProviderError as exc:
            await self._retry_later(row, exc, now)
            return
        except PermanentProviderError as exc:
            await self._on_permanent(row, exc, now)
            return
        failpoint("outreach.after_provider_call")
        sent = await self.ledger.transition(
            row.decision_id,
            ("sending",),
            self._event(
                row,
                "sent",
                now,
                provider_message_id=result.provider_message_id,
                outbox=result.outbox,
                template=template_key,
                template_version=version,
            ),
            status="sent",
            provider=result.provider,
            provider_message_id=result.provider_message_id,
            outbox=result.outbox,
            sent_at=now,
            updated_at=now,
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

    # --- in doubt --------------------------------------------------------------------

    async def reconcile_in_doubt(self, now: datetime) -> int:
        """Rows left in `sending` longer than any provider call takes: the process that
        claimed them died between the provider call and recording its answer. Ask the
        provider instead of sending blindly again: found → sent; certainly absent →
        send now; the provider cannot say → for email, SendGrid's signed events would
        have confirmed it by now when they are configured (absent), else `failed` with
        reason in_doubt for a person to look at. Returns how many were settled."""
        settled = 0
        for row in await self.ledger.in_doubt(now - self.sending.in_doubt_after):
            if row.channel is None or row.address is None:
                continue
            message = self._message(row, row.subject, row.body_html, row.body_text or "")
            claimed_at = row.updated_at or now
            lookup = await self.senders[row.channel].find_sent(message, claimed_at)
            if lookup.state == "unknown" and row.channel in self.sending.confirmed_by_events:
                lookup = ABSENT
            if lookup.state == "found":
                moved = await self.ledger.transition(
                    row.decision_id,
                    ("sending",),
                    self._event(
                        row, "sent", now,
                        provider_message_id=lookup.provider_message_id, reconciled=True,
                    ),
                    status="sent",
                    provider=self.senders[row.channel].provider,
                    provider_message_id=lookup.provider_message_id,
                    sent_at=claimed_at,
                    updated_at=now,
                )  # fmt: skip
                if moved:
                    MESSAGES.labels(row.channel, "sent").inc()
            elif lookup.state == "absent":
                moved = await self.ledger.transition(
                    row.decision_id,
                    ("sending",),
                    None,
                    status="decided",
                    updated_at=now,
                    last_error="in doubt: not at the provider; sending again",
                )
                if moved:
                    refreshed = await self.ledger.get(row.decision_id)
                    if refreshed is not None:
                        await self._deliver(refreshed, now)
            else:
                await self._fail(
                    row,
                    "in_doubt: the provider cannot tell whether it was sent",
                    now,
                    expected=("sending",),
                )
                moved = True
            IN_DOUBT.labels(row.channel, lookup.state).inc()
            log.warning("in_doubt_reconciled", decision_id=row.decision_id, outcome=lookup.state)
            settled += int(moved)
        return settled

    async def _retry_later(self, row: Delivery, exc: TransientProviderError, now: datetime) -> None:
        attempt = row.attempts + 1
        if attempt >= self.sending.max_attempts:
            await self._fail(
                row, f"gave up after {attempt} attempts: {exc}", now, expected=("sending",)
            )
            return
        delay = min(self.sending.backoff_cap_s, self.sending.backoff_base_s * 2 ** (attempt - 1))
        delay = max(delay * random.uniform(0.5, 1.0), exc.retry_after or 0.0)
        await self.ledger.transition(
            row.decision_id,
            ("sending",),
            None,
            status="scheduled",
            send_at=now + timedelta(seconds=delay),
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
        if fallbacks:
            nxt, rest = fallbacks[0], fallbacks[1:]
            moved = await self.ledger.transition(
                row.decision_id,
                ("sending",),
                self._event(
                    row,
                    "failed",
                    now,
                    reason=f"{exc.code}",
                    fallback_to=nxt.channel,
                    channel=row.channel,
                ),
                status="decided",
                channel=nxt.channel,
                address=nxt.address,
                fallbacks=[f.__dict__ for f in rest],
                updated_at=now,
                last_error=f"{row.channel}: {exc}",
            )
            if moved:
                MESSAGES.labels(row.channel or "none", "failed").inc()
                refreshed = await self.ledger.get(row.decision_id)
                if refreshed is not None:
                    await self._deliver(refreshed, now)
            return
        await self._fail(row, f"{exc.code}: {exc.reason}", now, expected=("sending",))

    async def _fail(
        self, row: Delivery, reason: str, now: datetime, *, expected: tuple[str, ...]
    ) -> None:
        if await self.ledger.transition(
            row.decision_id,
            expected,
            self._event(row, "failed", now, reason=reason[:200]),
            status="failed",
            reason=reason[:64],
            last_error=reason,
            updated_at=now,
        ):
            MESSAGES.labels(row.channel or "none", "failed").inc()
            log.warning("message_failed", decision_id=row.decision_id, reason=reason[:200])

    async def _suppress_existing(
        self, row: Delivery, reason: pipeline.Suppression, rule: str, now: datetime
    ) -> None:
        if await self.ledger.transition(
            row.decision_id,
            ("scheduled", "decided"),
            self._event(row, "suppressed", now, reason=reason),
            status="suppressed",
            reason=reason.value,
            rule=rule,
            updated_at=now,
        ):
            SUPPRESSIONS.labels(reason.value).inc()
            MESSAGES.labels(row.channel or "none", "suppressed").inc()

    # --- provider feedback (webhooks) -------------------------------------------------

    async def on_delivery_status(
        self, decision_id: str, status: str, now: datetime, **detail: Any
    ) -> bool:
        """A provider reported the fate of a sent message: delivered or failed. Returns
        False when the decision is unknown or already final (a repeated callback)."""
        row = await self.ledger.get(decision_id)
        if row is None or status not in ("accepted", "delivered", "failed"):
            return False
        # A report for a row still `sending` is proof the provider took it: the process
        # that sent it died before recording the answer (it is no longer in doubt).
        expected = {
            "accepted": ("sending",),
            "delivered": ("sending", "sent"),
            "failed": ("sending", "sent", "delivered"),
        }[status]
        values: dict[str, Any] = {}
        if row.status == "sending":
            values = {
                "sent_at": row.updated_at or now,
                "provider_message_id": detail.get("provider_message_id"),
            }
        moved = await self.ledger.transition(
            decision_id,
            expected,
            self._event(row, "sent" if status == "accepted" else status, now, **detail),
            status="sent" if status == "accepted" else status,
            updated_at=now,
            reason=(str(detail.get("reason"))[:64] if status == "failed" else row.reason),
            **values,
        )
        if moved:
            MESSAGES.labels(row.channel or "none", "sent" if status == "accepted" else status).inc()
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
    ) -> Delivery:
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
            status="decided",
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
            fallbacks=[f.__dict__ for f in decision.fallbacks],
            request={
                **request.model_dump(mode="json"),
                "first_name": plan.first_name if plan else "",
                # The request's trace, for changes made later (a scheduled send at 08:00).
                **tracing.current_trace_fields(),
            },
            outbox=False,
        )

    def _event(self, row: Delivery, status: str, now: datetime, **detail: Any) -> DeliveryEvent:
        seq = {"sending": row.attempts + 1}.get(status, row.attempts)
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
        if status == "scheduled":
            data["send_at"] = row.send_at.isoformat() if row.send_at else None
        for key, value in detail.items():
            if value is not None:
                data[key] = value.value if hasattr(value, "value") else value
        event_id = derived_id("message", row.decision_id, status, seq, data.get("channel"))
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
    and renders. If the newest published version fails to render, the last one that does
    keeps serving, and the failure is counted; if none renders, RenderError."""

    def __init__(self, cache: Any, offer_secret: str) -> None:
        self.cache = cache
        self.offer_secret = offer_secret

    async def render_for(
        self, *, request: schemas.OutreachRequest, row: Delivery, links: Links, now: datetime
    ) -> tuple[Any, str, int]:
        from services.outreach.domain.context import build_context
        from services.outreach.domain.offers import make_offer
        from services.outreach.domain.rendering import render
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
        candidates = await self.cache.candidates(row.message_kind, row.channel, locale)
        if not candidates:
            raise RenderError(
                f"no published template for {row.message_kind}/{row.channel}/"
                f"{locale} (nor its fallbacks)"
            )
        first_error: RenderError | None = None
        for template in candidates:
            try:
                rendered = render(template, context, locale=locale, timezone=timezone)
            except RenderError as exc:
                RENDER_FAILURES.labels(row.message_kind, row.channel).inc()
                log.error(
                    "template_render_failed",
                    message_kind=row.message_kind,
                    channel=row.channel,
                    locale=template.locale,
                    version=template.version,
                    reason=exc.reason,
                )
                first_error = first_error or exc
                continue
            key = f"{template.message_kind}.{template.channel}.{template.locale}"
            return rendered, key, template.version
        assert first_error is not None
        raise first_error
