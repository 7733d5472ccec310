"""The one place that wires outreach: database, ledger, templates, preferences client,
providers (or the outbox, without credentials) and the delivery service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.clock import Clock, WallClock, WatermarkClock
from common.kafka import AiokafkaProducer
from common.metrics import (
    HANDOFFS,
    LEDGER_DELIVERIES,
    REMEDY_BUDGET_CAP,
    REMEDY_BUDGET_SPENT,
    RENDER_FAILURES,
    REPLIES,
    STORM_AWAITING,
    STORM_HELD,
    STORMS,
    SUPPRESSIONS,
    SURVEY_SCORES,
)
from services.outreach.adapters import ledger as _ledger_tables  # noqa: F401 - registers tables
from services.outreach.adapters.contact_plans import ContactPlans, GrpcContactPlans
from services.outreach.adapters.controls import ControlsWatcher, SendingControls
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Ledger, LedgerPort
from services.outreach.adapters.optouts import OptOutPublisher, OptOuts
from services.outreach.adapters.outcomes import OutcomeStore
from services.outreach.adapters.providers import (
    GuardedSender,
    MessageSender,
    OutboxSender,
    SendGridEmailSender,
    TwilioMessageSender,
)
from services.outreach.adapters.remedies import RemedyStore
from services.outreach.adapters.render_pool import Renderer
from services.outreach.adapters.storms import StormsPort, StormStore
from services.outreach.adapters.templates import TemplateCache, TemplateStore
from services.outreach.config import Settings
from services.outreach.conversations import ConversationService
from services.outreach.domain.decisions import DeliveryPolicy, Suppression
from services.outreach.domain.guards import GroupShare
from services.outreach.domain.lifecycle import SendingPolicy
from services.outreach.domain.rendering import CHANNELS, MESSAGE_KINDS
from services.outreach.domain.replies import LexiconClassifier, reply_address
from services.outreach.runtime import DeliveryService, Links, MessageComposer


def export_zero_series() -> None:
    """Every series an alert or panel reads exists from the start, at 0: `increase()`
    over a counter that first appears at 1 would miss that first failure."""
    for reason in Suppression:
        SUPPRESSIONS.labels(reason.value)
    for kind in MESSAGE_KINDS:
        for channel in CHANNELS:
            RENDER_FAILURES.labels(kind, channel)
    for channel in CHANNELS:  # the dashboard's conversation panels read these
        REPLIES.labels(channel, "other", "neutral")
        SURVEY_SCORES.labels("none", "none", channel, "none")
    HANDOFFS.labels("reply", "intent:complaint")


def build_senders(settings: Settings, share: GroupShare | None = None) -> dict[str, MessageSender]:
    """The providers' senders, each guarded by a breaker and the provider's rate (of the
    group of workers: `share` is this worker's part)."""

    def guarded(sender: MessageSender) -> MessageSender:
        return GuardedSender(
            sender,
            failure_threshold=settings.breaker_failures,
            reset_after_s=settings.breaker_reset_s,
            rate_per_s=settings.provider_rate_per_s,
            share=share,
        )

    outbox = OutboxSender()
    senders: dict[str, MessageSender] = {"email": outbox, "sms": outbox, "whatsapp": outbox}
    if settings.sendgrid_api_key and settings.sendgrid_from_email:
        senders["email"] = guarded(
            SendGridEmailSender(
                settings.sendgrid_api_key.get_secret_value(),
                settings.sendgrid_from_email,
                from_name=settings.shop_name,
                base_url=settings.sendgrid_api_base_url,
                reply_to=_reply_to(settings),
                timeout_s=settings.provider_timeout_s,
                max_in_flight=settings.concurrency,
            )
        )
    if settings.twilio_account_sid and settings.twilio_auth_token:
        twilio = guarded(
            TwilioMessageSender(
                settings.twilio_account_sid,
                settings.twilio_auth_token.get_secret_value(),
                from_number=settings.twilio_from_number,
                whatsapp_from=settings.twilio_whatsapp_from,
                base_url=settings.twilio_api_base_url,
                timeout_s=settings.provider_timeout_s,
                max_in_flight=settings.concurrency,
            )
        )
        if settings.twilio_from_number:
            senders["sms"] = twilio
        if settings.twilio_whatsapp_from:
            senders["whatsapp"] = twilio
    return senders


@dataclass
class Outreach:
    settings: Settings
    clock: Clock
    wall: Clock
    engine: Any
    ledger: LedgerPort
    templates: TemplateStore
    template_cache: TemplateCache
    plans: ContactPlans
    senders: dict[str, MessageSender]
    delivery: DeliveryService
    controls: SendingControls
    storms: StormsPort
    outcomes: OutcomeStore  # what became of customers after decisions (docs/outcomes.md)
    remedies: RemedyStore  # the remedy policy, its budget and grants (docs/remedies.md)
    controls_watcher: ControlsWatcher
    renderer: Renderer
    producer: AiokafkaProducer  # started and stopped by the worker that runs outreach
    # This worker's part of the group's limits (provider rates, the resume ramp): the
    # worker counts the live workers in the ledger every second.
    share: GroupShare
    conversations: ConversationService

    async def start(self) -> None:
        export_zero_series()
        await self.renderer.start()
        await create_schema(self.engine)
        await self.templates.seed_defaults()
        await self.template_cache.refresh(force=True)
        await self.controls_watcher.refresh()  # a pause holds from the first message on
        await self.plans.start()

    async def export_gauges(self) -> None:
        """The ledger's messages by state and the open storms (every worker reads the
        same database: alerts take the max over workers)."""
        for status, count in (await self.ledger.count_by_status()).items():
            LEDGER_DELIVERIES.labels(status).set(count)
        now = self.wall.now()
        for state, count in (await self.storms.open_by_state(now)).items():
            STORMS.labels(state).set(count)
        STORM_HELD.set(sum((await self.ledger.storm_held()).values()))
        since = await self.storms.awaiting_since()
        STORM_AWAITING.set(0 if since is None else max(0.0, (now - since).total_seconds()))
        _, policy = await self.remedies.policy()
        spent = await self.remedies.spent(policy.period_of(self.clock.now()))
        REMEDY_BUDGET_SPENT.clear()
        REMEDY_BUDGET_CAP.clear()
        REMEDY_BUDGET_SPENT.labels(policy.currency).set(float(spent))
        if policy.cap is not None:
            REMEDY_BUDGET_CAP.labels(policy.currency).set(float(policy.cap))

    async def stop(self) -> None:
        for sender in {id(s): s for s in self.senders.values()}.values():
            await sender.close()
        await self.plans.stop()
        await self.renderer.stop()
        await self.engine.dispose()

    async def database_ready(self) -> bool:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        return True


def bootstrap(
    settings: Settings,
    *,
    plans: ContactPlans | None = None,
    senders: dict[str, MessageSender] | None = None,
    clock: Clock | None = None,
    wall: Clock | None = None,
    renderer: Renderer | None = None,
    producer: AiokafkaProducer | None = None,
    optouts: OptOuts | None = None,
    ledger: LedgerPort | None = None,
    storms: StormsPort | None = None,
) -> Outreach:
    """Wire outreach. `clock` decides (wall or event time, OUTREACH_CLOCK); `wall` runs
    leases, claims and operators' pauses in real time (tests pass a clock they move);
    `renderer` renders templates (the render pool's processes unless a test passes
    another); `producer` publishes outreach's events (the worker starts it); `optouts`
    tells preferences of opt-outs (by default on `outreach.optouts` through it);
    `ledger` keeps the decisions and `storms` counts the incidents (by default on the
    database: tests and the rehearsal's replay may pass the in-memory ones)."""
    wall = wall or WallClock()
    sessions = session_factory(engine := create_engine(settings.db_url()))
    ledger = ledger or Ledger(sessions)
    renderer = renderer or settings.render_pool()
    store = TemplateStore(sessions, renderer=renderer)
    cache = TemplateCache(store, settings.template_refresh_s)
    plans = plans or _contact_plans(settings)
    share = GroupShare()
    senders = senders or build_senders(settings, share)
    producer = producer or AiokafkaProducer(settings.kafka_bootstrap_servers, "outreach-worker")
    optouts = optouts or OptOutPublisher(producer, settings.topics.optouts)
    storms = storms or StormStore(sessions, settings.storm_policy())
    secret = settings.secret(settings.offer_secret, "offers")
    composer = MessageComposer(cache, secret, renderer, storms)
    outcomes, remedies = OutcomeStore(sessions), RemedyStore(sessions)
    delivery = _delivery(settings, ledger, plans, senders, composer, optouts, wall)
    delivery.storms, delivery.outcomes, delivery.remedies = storms, outcomes, remedies
    return Outreach(
        controls=(controls := SendingControls(sessions)),
        storms=storms,
        outcomes=outcomes,
        remedies=remedies,
        controls_watcher=ControlsWatcher(
            controls, delivery.paused, full_rate_per_s=settings.provider_rate_per_s, share=share
        ),
        settings=settings,
        clock=clock or _clock(settings),
        wall=wall,
        engine=engine,
        ledger=ledger,
        templates=store,
        template_cache=cache,
        plans=plans,
        senders=senders,
        delivery=delivery,
        renderer=renderer,
        producer=producer,
        share=share,
        conversations=_conversations(settings, sessions, delivery, producer, optouts, wall),
    )


def _delivery(
    settings: Settings,
    ledger: LedgerPort,
    plans: ContactPlans,
    senders: dict[str, MessageSender],
    composer: MessageComposer,
    optouts: OptOuts,
    wall: Clock,
) -> DeliveryService:
    return DeliveryService(
        ledger=ledger,
        plans=plans,
        senders=senders,
        renderer=composer,
        policy=DeliveryPolicy(
            cap_messages=settings.cap_messages,
            cap_window=timedelta(days=settings.cap_window_days),
            holdout_share=settings.holdout_share,
            experiments=settings.experiment_list(),
            gather=timedelta(seconds=settings.consolidate_s),
        ),
        sending=_sending_policy(settings),
        links=_links(settings),
        optouts=optouts,
        wall=wall.now,
        surveys=settings.survey_policy(),
        corrections=settings.correction_policy(),
    )


def _conversations(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    delivery: DeliveryService,
    producer: AiokafkaProducer,
    optouts: OptOuts,
    wall: Clock,
) -> ConversationService:
    return ConversationService(
        store=ReplyStore(sessions),
        handoffs=HandoffStore(sessions),
        ledger=delivery.ledger,
        classifier=LexiconClassifier(),
        producer=producer,
        topics=settings.topics,
        policy=settings.handoff_policy(),
        optouts=optouts,
        shop=(settings.shop_name, settings.support_url, settings.support_phone),
        settle=timedelta(seconds=settings.reply_sweep_s),
        wall=wall.now,
        survey_asked=delivery.survey_asked,
    )


def _contact_plans(settings: Settings) -> ContactPlans:
    """preferences over gRPC, cached while its change stream is up."""
    token = settings.preferences_token
    return GrpcContactPlans(
        settings.preferences_grpc_target,
        cache_ttl_s=settings.preferences_cache_ttl_s,
        max_entries=settings.preferences_cache_max_entries,
        token=token.get_secret_value() if token else None,
        tls=settings.preferences_channel_tls(),
    )


def _links(settings: Settings) -> Links:
    """What messages link to and sign with."""
    return Links(
        public_base_url=settings.public_base_url.rstrip("/"),
        support_url=settings.support_url,
        shop_name=settings.shop_name,
        support_email=settings.support_email,
        support_phone=settings.support_phone,
        unsubscribe_secret=settings.secret(settings.unsubscribe_secret, "unsubscribe"),
    )


def _reply_to(settings: Settings) -> Callable[[str], str] | None:
    """The reply-to address of an email, by its decision: replies come back through
    SendGrid's Inbound Parse on OUTREACH_REPLY_DOMAIN (unset: no reply-to of ours)."""
    domain = settings.reply_domain
    if not domain:
        return None
    secret = settings.secret(settings.reply_secret, "replies")
    return lambda decision_id: reply_address(decision_id, domain, secret)


def _sending_policy(settings: Settings) -> SendingPolicy:
    return SendingPolicy(
        max_attempts=settings.max_attempts,
        in_doubt_after=timedelta(seconds=settings.in_doubt_after_s),
        in_doubt_settle=timedelta(seconds=settings.in_doubt_settle_s),
        in_doubt_give_up=timedelta(seconds=settings.in_doubt_give_up_s),
        events_retried_within=timedelta(seconds=settings.event_retry_s),
        # Email sends are confirmed by SendGrid's signed events when they are set up.
        confirmed_by_events=frozenset({"email"} if settings.sendgrid_webhook_public_key else ()),
    )


def _clock(settings: Settings) -> Clock:
    """The wall clock, or on the event clock one the worker's consumer moves as it hands
    the records over in arrival order (common/aligned.py)."""
    return WatermarkClock() if settings.outreach_clock == "event" else settings.make_clock()
