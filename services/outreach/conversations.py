"""Replies, end to end: a reply that reached a webhook is tied to the customer and the
message it answers, read (services/outreach/domain/replies.py), kept, and what it sets
in motion is carried out — an opt-out or opt-in for preferences, a hand-off to a person
with the conversation so far, the reply's event on `outreach.replies`
(docs/conversations.md).

The reply is kept before anything else happens, and marked done only when all of it has
been handed over; every effect has an id derived from the reply, so a webhook the
provider sends twice, or the sweep taking up a reply whose worker died halfway, has no
second effect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from common import schemas
from common.clock import wall_now
from common.envelope import CloudEvent, derived_id, new_event
from common.kafka import Outgoing, ProducerPort
from common.logs import get_logger
from common.metrics import HANDOFFS, REPLIES, SURVEY_SCORES
from common.topics import Topics
from services.outreach.adapters.conversations import HandoffStore, ReplyRow, ReplyStore
from services.outreach.adapters.ledger import Delivery, LedgerPort
from services.outreach.adapters.optouts import OptOuts
from services.outreach.domain import conversations as talk
from services.outreach.domain import surveys
from services.outreach.domain.replies import (
    Label,
    ReplyClassifier,
    ReplyIntent,
    Tone,
    command_language,
    command_of,
    help_text,
    words,
)

log = get_logger(__name__)
SOURCE = "/outreach/outreach"


@dataclass(frozen=True)
class Inbound:
    """A reply as a webhook received it."""

    channel: str  # sms | whatsapp | email
    address: str  # who sent it: a number (without "whatsapp:") or an email address
    text: str
    provider_id: str  # Twilio's MessageSid, the email's Message-ID (may be empty)
    received_at: datetime
    decision_id: str | None = None  # the message it answers, when the reply names it


@dataclass(frozen=True)
class Received:
    """What became of a reply: None `reply` when no message of ours went to the sender."""

    reply: talk.Reply | None
    answer: str | None = None  # the text to answer with at once (HELP)


class ConversationService:
    def __init__(
        self,
        *,
        store: ReplyStore,
        handoffs: HandoffStore,
        ledger: LedgerPort,
        classifier: ReplyClassifier,
        producer: ProducerPort,
        topics: Topics,
        policy: talk.HandoffPolicy,
        optouts: OptOuts | None,
        shop: tuple[str, str, str],  # name, support URL, support phone (for HELP)
        settle: timedelta = timedelta(seconds=30),
        wall: Callable[[], datetime] = wall_now,
        survey_asked: Callable[[Delivery], Awaitable[bool]] | None = None,
    ) -> None:
        # Whether a message asked how we did (DeliveryService.survey_asked): a bare
        # score in a reply to it is an answer. None: no message asks.
        self.survey_asked = survey_asked
        self.store = store
        self.handoffs = handoffs
        self.ledger = ledger
        self.classifier = classifier
        self.producer = producer
        self.topics = topics
        self.policy = policy
        self.optouts = optouts
        self.shop = shop
        self.settle = settle  # how long a webhook may still be carrying a reply out
        self.wall = wall

    async def _answered(self, inbound: Inbound) -> Delivery | None:
        if inbound.decision_id:
            row = await self.ledger.get(inbound.decision_id)
            if row is not None:
                return row
        return await self.ledger.latest_to(inbound.channel, inbound.address)

    async def receive(self, inbound: Inbound) -> Received:
        """Keep, read and act on a reply. Raises when an effect could not be handed over
        (the reply stays kept and not done: the sweep takes it up again)."""
        answered = await self._answered(inbound)
        command = command_of(inbound.text)
        if answered is None:
            REPLIES.labels(inbound.channel, "unknown_sender", "neutral").inc()
            log.info("reply_from_unknown_sender", channel=inbound.channel)
            language = command_language(inbound.text) if command == "help" else None
            return Received(None, self._help(language) if command == "help" else None)
        score = None
        if command is None and self.survey_asked is not None and await self.survey_asked(answered):
            score = surveys.answer_of(inbound.text)
        label = self._read(inbound.text, command, answered.locale, score)
        source = (
            inbound.provider_id
            or hashlib.sha256(
                f"{inbound.address}\x1f{inbound.text}\x1f{inbound.received_at.isoformat()}".encode()
            ).hexdigest()
        )
        row = ReplyRow(
            reply_id=derived_id("reply", inbound.channel, source),
            customer_id=answered.customer_id,
            channel=inbound.channel,
            received_at=inbound.received_at,
            decision_id=answered.decision_id,
            text=inbound.text,
            locale=answered.locale,
            command=command,
            intent=label.intent.value,
            tone=label.tone.value,
            evidence=list(label.evidence),
            language=label.language,
            classifier=label.classifier,
            survey_score=score,
            done=False,
            scrubbed=False,
        )
        kept = await self.store.record(row)
        reply = _reply(kept, answered)
        if not kept.done:
            await self._carry_out(kept, reply)
        return Received(reply, self._help(answered.locale) if command == "help" else None)

    def _read(self, text: str, command: str | None, locale: str | None, score: int | None) -> Label:
        language = (locale or "en").split("-")[0].lower()
        if score is not None:  # an answer to our survey, not words to read
            tone = Tone.HAPPY if score >= 4 else Tone.NEUTRAL
            return Label(ReplyIntent.SURVEY_ANSWER, tone, (f"{score}/5",), language, "survey")
        if command is None:
            return self.classifier.classify(text, locale)
        intent = {"stop": ReplyIntent.OPT_OUT, "help": ReplyIntent.QUESTION}.get(
            command, ReplyIntent.OTHER
        )
        return Label(intent, Tone.NEUTRAL, tuple(words(text)[:1]), language, "keyword")

    def _help(self, locale: str | None) -> str:
        return help_text(locale, *self.shop)

    async def _carry_out(self, row: ReplyRow, reply: talk.Reply) -> None:
        effects = talk.effects_of(reply, self.policy)
        at = reply.received_at
        if self.optouts is not None:
            if effects.opt_out:
                await self.optouts.opted_out(reply.customer_id, reply.channel, effects.opt_out, at)
            elif effects.opt_in:
                await self.optouts.opted_in(reply.customer_id, reply.channel, effects.opt_in, at)
        if effects.handoff_id is not None:
            turns = await self.conversation(reply.customer_id, self.policy.history)
            payload = schemas.HandoffRequested.model_validate(
                talk.handoff_payload(reply, effects, turns)
            )
            await self._publish(
                self.topics.handoffs,
                "support.handoff.requested",
                derived_id("handoff", reply.reply_id),
                reply.customer_id,
                at,
                payload,
            )
            HANDOFFS.labels("reply", effects.handoff_reason or "").inc()
        event = schemas.ReplyReceived.model_validate(talk.reply_event(reply, effects))
        await self._publish(
            self.topics.replies,
            "outreach.reply.received",
            derived_id("reply-event", reply.reply_id),
            reply.customer_id,
            at,
            event,
        )
        await self.store.finish(row.reply_id)
        REPLIES.labels(reply.channel, reply.label.intent, reply.label.tone).inc()
        if reply.survey_score is not None and reply.answered is not None:
            asked = reply.answered
            version = str(asked.template_version or "none")
            SURVEY_SCORES.labels(
                asked.cause_kind, asked.intent or "none", reply.channel, version
            ).observe(reply.survey_score)
        log.info(
            "reply",
            customer_id=reply.customer_id,
            channel=reply.channel,
            intent=reply.label.intent,
            tone=reply.label.tone,
            handed_off=effects.handoff_id is not None,
        )

    async def _publish(
        self, topic: str, type_: str, event_id: str, key: str, at: datetime, data: Any
    ) -> None:
        event = new_event(
            type=type_,
            source=SOURCE,
            subject=key,
            time=at,
            id=event_id,
            data=data.model_dump(mode="json", exclude_none=True),
        )
        await self.producer.emit("outreach", [Outgoing(topic, key, event)])

    async def sweep_settled(self) -> int:
        """`sweep` of the replies received more than `settle` ago."""
        return await self.sweep(self.wall() - self.settle)

    async def sweep(self, received_before: datetime) -> int:
        """Carry out what replies a worker kept but did not finish (it died, Kafka was
        away), received before `received_before` (not those a webhook is still carrying
        out): every effect again, each with the id it had the first time."""
        done = 0
        for row in await self.store.not_done(received_before):
            answered = await self.ledger.get(row.decision_id) if row.decision_id else None
            try:
                await self._carry_out(row, _reply(row, answered))
                done += 1
            except Exception as exc:
                log.warning("reply_not_carried_out", reply_id=row.reply_id, error=repr(exc))
                break
        return done

    async def conversation(self, customer_id: str, limit: int) -> list[talk.Turn]:
        """The latest `limit` turns with the customer, oldest first: the messages sent
        (their text as sent) and the replies."""
        turns = [
            talk.Turn(
                at=m.sent_at or m.decided_at,
                direction="out",
                channel=m.channel or "",
                kind=m.message_kind,
                text=(m.subject + "\n" if m.subject else "") + (m.body_text or ""),
                ref=m.decision_id,
            )
            for m in await self.ledger.messages_to(customer_id, limit)
        ]
        turns += [
            talk.Turn(
                at=r.received_at,
                direction="in",
                channel=r.channel,
                kind=r.intent,
                text=r.text or "",
                ref=r.reply_id,
                tone=r.tone,
            )
            for r in await self.store.of_customer(customer_id, limit)
        ]
        turns.sort(key=lambda t: t.at)
        return turns[-limit:]

    async def erase(self, customer_id: str) -> int:
        return await self.store.erase(customer_id) + await self.handoffs.erase(customer_id)

    async def on_customer_event(self, event: CloudEvent) -> int:
        """commerce.customers: an erasure removes the customer's replies (text and all)
        and hand-offs (summaries and all)."""
        if event.type != "customer.erased":
            return 0
        return await self.erase(schemas.parse_payload(event, schemas.CustomerErased).customer_id)

    async def scrub_due(self, cutoff: datetime) -> int:
        return await self.store.scrub_before(cutoff) + await self.handoffs.scrub_before(cutoff)

    async def on_handoff_event(self, event: CloudEvent) -> bool:
        """support.handoffs and support.resolutions, kept for the conversation view:
        every hand-off of a customer (from a reply or the churn-risk score) and what the
        agent did. Either may come first; the same record twice changes nothing."""
        if event.type == "support.handoff.requested":
            asked = schemas.parse_payload(event, schemas.HandoffRequested)
            await self.handoffs.requested(
                asked.handoff_id,
                asked.customer_id,
                requested_at=event.time,
                trigger=asked.trigger,
                order_ids=list(asked.order_ids),
                risk_score=asked.risk_score,
                reasons=[r.model_dump(mode="json") for r in asked.reasons],
                summary=asked.summary,
                summary_local=asked.summary_local or None,
                locale=asked.locale,
                incident=asked.incident.model_dump(mode="json") if asked.incident else None,
                reply_id=asked.reply.reply_id if asked.reply else None,
            )
            return True
        if event.type == "support.handoff.resolved":
            done = schemas.parse_payload(event, schemas.HandoffResolved)
            await self.handoffs.resolved(
                done.handoff_id,
                done.customer_id,
                outcome=done.outcome,
                resolved_at=done.resolved_at,
                agent=done.agent,
                ticket_id=done.ticket_id,
            )
            return True
        return False


def _reply(row: ReplyRow, answered: Delivery | None) -> talk.Reply:
    label = Label(
        ReplyIntent(row.intent),
        Tone(row.tone),
        tuple(row.evidence or ()),
        row.language,
        row.classifier,
    )
    return talk.Reply(
        reply_id=row.reply_id,
        customer_id=row.customer_id,
        channel=row.channel,
        received_at=row.received_at,
        text=row.text or "",
        label=label,
        command=row.command,  # type: ignore[arg-type]
        answered=None if answered is None else _answered(answered),
        locale=row.locale,
        survey_score=row.survey_score,
    )


def _answered(row: Delivery) -> talk.Answered:
    score = (row.request or {}).get("risk_score")
    return talk.Answered(
        decision_id=row.decision_id,
        customer_id=row.customer_id,
        order_id=row.order_id,
        cause_type=row.cause_type,
        cause_id=row.cause_id,
        cause_kind=row.cause_kind,
        message_kind=row.message_kind,
        locale=row.locale,
        severity=row.severity,
        template_version=row.template_version,
        risk_score=float(score) if isinstance(score, int | float) else None,
        intent=row.intent,
    )


__all__ = ["ConversationService", "Inbound", "Received"]
