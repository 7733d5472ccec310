"""A customer's conversation with us: the messages we sent and the replies they gave,
and what a reply sets in motion — an opt-out, an answer to HELP, a hand-off to a person
with the conversation so far and a summary for the agent in the customer's language and
in English. Pure: the runtime (services/outreach/conversations.py) reads and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from common.envelope import derived_id
from services.outreach.domain.replies import Command, Label, ReplyIntent, Tone

Direction = Literal["out", "in"]


@dataclass(frozen=True)
class Turn:
    """One entry of a conversation: a message we sent (`out`, its kind) or a reply
    (`in`, its intent and tone)."""

    at: datetime
    direction: Direction
    channel: str
    kind: str
    text: str
    ref: str  # the decision id of a message, the reply id of a reply
    tone: str = ""


@dataclass(frozen=True)
class Answered:
    """The message a reply answers, as the ledger has it."""

    decision_id: str
    customer_id: str
    order_id: str | None
    cause_type: str
    cause_id: str
    cause_kind: str
    message_kind: str
    locale: str | None
    severity: str = "warning"
    risk_score: float | None = None
    template_version: int | None = None
    intent: str = ""  # apology, status_update, check_in


@dataclass(frozen=True)
class Reply:
    """A reply that reached us, read: who sent it, on which channel, what it answers."""

    reply_id: str
    customer_id: str
    channel: str
    received_at: datetime
    text: str
    label: Label
    command: Command | None
    answered: Answered | None
    locale: str | None
    survey_score: int | None = None  # the score, when the reply answers our survey


#: Replies that may need an answer: everything but thanks, opt-outs and wrong numbers.
NEEDS_A_PERSON = frozenset(
    {ReplyIntent.COMPLAINT, ReplyIntent.WANTS_PERSON, ReplyIntent.QUESTION, ReplyIntent.OTHER}
)


@dataclass(frozen=True)
class HandoffPolicy:
    """Which replies go to a person (`OUTREACH_HANDOFF_INTENTS`, `OUTREACH_HANDOFF_TONES`,
    `OUTREACH_HANDOFF_CRITICAL`): by default every reply that may need an answer
    (complaints, "wants a person", questions, anything unread), any angry reply, and any
    reply about a critical incident (a lost or damaged parcel), whatever it says."""

    intents: frozenset[str] = NEEDS_A_PERSON
    tones: frozenset[str] = frozenset({Tone.ANGRY})
    critical: bool = True
    #: A survey score below this goes to a person (`OUTREACH_HANDOFF_SURVEY_BELOW`).
    survey_below: int = 3
    #: How many turns of the conversation go with a hand-off (the latest ones).
    history: int = 20

    def hands_off(self, label: Label, severity: str | None = None) -> str | None:
        """Why a reply with this label (to a message of this severity) goes to a
        person, or None."""
        if label.intent in self.intents:
            return f"intent:{label.intent}"
        if label.tone in self.tones:
            return f"tone:{label.tone}"
        if self.critical and severity == "critical":
            return "incident:critical"
        return None


@dataclass(frozen=True)
class Effects:
    """What a reply sets in motion."""

    opt_out: str | None = None  # the source of an opt-out of the reply's channel
    opt_in: str | None = None
    answer_help: bool = False
    handoff_reason: str | None = None
    handoff_id: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def effects_of(reply: Reply, policy: HandoffPolicy) -> Effects:
    """A STOP (or a reply asking us to stop, or telling us it reached the wrong person)
    opts the channel out; START opts it back in; HELP is answered; a reply the policy
    names goes to a person. A command is only that command."""
    if reply.command == "stop":
        return Effects(opt_out="sms_stop" if reply.channel != "email" else "reply_stop")
    if reply.command == "start":
        return Effects(opt_in="sms_start" if reply.channel != "email" else "reply_start")
    if reply.command == "help":
        return Effects(answer_help=True)
    if reply.survey_score is not None:
        if reply.survey_score >= policy.survey_below:
            return Effects()
        return Effects(
            handoff_reason=f"survey:{reply.survey_score}",
            handoff_id=derived_id("reply-handoff", reply.customer_id, _answered_id(reply)),
        )
    opt_out = None
    if reply.label.intent is ReplyIntent.OPT_OUT:
        opt_out = "reply_opt_out"
    elif reply.label.intent is ReplyIntent.WRONG_CONTACT:
        opt_out = "wrong_contact"
    reason = policy.hands_off(reply.label, reply.answered.severity if reply.answered else None)
    handoff_id = None
    if reason is not None:
        # One hand-off per customer and message answered: later replies to the same
        # message update the same case (the helpdesk adds them to its ticket).
        handoff_id = derived_id("reply-handoff", reply.customer_id, _answered_id(reply))
    return Effects(opt_out=opt_out, handoff_reason=reason, handoff_id=handoff_id)


def _answered_id(reply: Reply) -> str:
    return reply.answered.decision_id if reply.answered else "none"


# --- the agent's summary, in the customer's language and in English ----------------

INTENT_WORDS = {
    "en": {
        "opt_out": "asks us to stop messaging them",
        "wrong_contact": "says the message reached the wrong person",
        "wants_person": "wants to speak to a person",
        "complaint": "is complaining",
        "question": "has a question",
        "thanks": "says thank you",
        "survey_answer": "gave us a low rating in our survey",
        "other": "replied",
    },
    "de": {
        "opt_out": "möchte keine Nachrichten mehr erhalten",
        "wrong_contact": "sagt, die Nachricht habe die falsche Person erreicht",
        "wants_person": "möchte mit einem Menschen sprechen",
        "complaint": "beschwert sich",
        "question": "hat eine Frage",
        "thanks": "bedankt sich",
        "survey_answer": "hat uns in der Umfrage schlecht bewertet",
        "other": "hat geantwortet",
    },
    "fr": {
        "opt_out": "demande à ne plus recevoir de messages",
        "wrong_contact": "indique que le message a atteint la mauvaise personne",
        "wants_person": "souhaite parler à une personne",
        "complaint": "se plaint",
        "question": "a une question",
        "thanks": "remercie",
        "survey_answer": "nous a mal notés dans l'enquête",
        "other": "a répondu",
    },
}
TONE_WORDS = {
    "en": {"angry": "angry", "neutral": "calm", "happy": "pleased"},
    "de": {"angry": "verärgert", "neutral": "ruhig", "happy": "zufrieden"},
    "fr": {"angry": "en colère", "neutral": "calme", "happy": "satisfait"},
}
SUMMARY = {
    "en": (
        "The customer {intent} ({tone}), replying by {channel}{about}. Deciding words: "
        "{evidence}. {count} messages in the conversation so far. Please get in touch "
        "personally."
    ),
    "de": (
        "Der Kunde {intent} ({tone}), Antwort per {channel}{about}. Entscheidende Wörter: "
        "{evidence}. Bisher {count} Nachrichten im Gespräch. Bitte melden Sie sich "
        "persönlich."
    ),
    "fr": (
        "Le client {intent} ({tone}), réponse par {channel}{about}. Mots décisifs : "
        "{evidence}. {count} messages dans la conversation jusqu'ici. Merci de le "
        "contacter personnellement."
    ),
}
ABOUT = {
    "en": " to our message about order {order} ({kind})",
    "de": " auf unsere Nachricht zur Bestellung {order} ({kind})",
    "fr": " à notre message sur la commande {order} ({kind})",
}


def cause_of(answered: Answered | None) -> dict[str, str] | None:
    """The incident (or other cause) of the message a reply answers, as events name it."""
    if answered is None:
        return None
    return {"type": answered.cause_type, "id": answered.cause_id, "kind": answered.cause_kind}


def language(locale: str | None) -> str:
    lang = (locale or "en").split("-")[0].lower()
    return lang if lang in SUMMARY else "en"


def summary(reply: Reply, turns: int, lang: str) -> str:
    """What the agent reads first, in `lang` (a shipped language)."""
    label, answered = reply.label, reply.answered
    about = ""
    if answered is not None:
        about = ABOUT[lang].format(order=answered.order_id or "-", kind=answered.cause_kind)
    return SUMMARY[lang].format(
        intent=INTENT_WORDS[lang][label.intent],
        tone=TONE_WORDS[lang][label.tone],
        channel=reply.channel,
        about=about,
        evidence=", ".join(label.evidence) or "-",
        count=turns,
    )


def handoff_payload(reply: Reply, effects: Effects, turns: list[Turn]) -> dict[str, object]:
    """The `support.handoff.requested` data for a reply the policy hands off
    (common.schemas.HandoffRequested)."""
    assert effects.handoff_id is not None and effects.handoff_reason is not None
    answered = reply.answered
    lang = language(reply.locale)
    return {
        "handoff_id": effects.handoff_id,
        "customer_id": reply.customer_id,
        "order_ids": [answered.order_id] if answered and answered.order_id else [],
        "risk_score": answered.risk_score if answered else None,
        "reasons": [
            {
                "code": "reply_" + effects.handoff_reason.replace(":", "_"),
                "detail": ", ".join(reply.label.evidence) or str(reply.label.intent),
            }
        ],
        "trigger": "reply",
        "locale": reply.locale,
        "summary": summary(reply, len(turns), "en"),
        "summary_local": summary(reply, len(turns), lang),
        "conversation": [
            {
                "at": t.at,
                "direction": t.direction,
                "channel": t.channel,
                "kind": t.kind,
                "tone": t.tone or None,
                "text": t.text,
                "ref": t.ref,
            }
            for t in turns
        ],
        "reply": {
            "reply_id": reply.reply_id,
            "intent": reply.label.intent,
            "tone": reply.label.tone,
            "evidence": list(reply.label.evidence),
            "classifier": reply.label.classifier,
        },
        "incident": cause_of(answered),
    }


def reply_event(reply: Reply, effects: Effects) -> dict[str, object]:
    """The `outreach.reply.received` data of a reply (common.schemas.ReplyReceived): how it
    was read and what it set in motion, never its words."""
    answered = reply.answered
    return {
        "reply_id": reply.reply_id,
        "customer_id": reply.customer_id,
        "channel": reply.channel,
        "received_at": reply.received_at,
        "decision_id": answered.decision_id if answered else None,
        "order_id": answered.order_id if answered else None,
        "cause": cause_of(answered),
        "command": reply.command,
        "intent": reply.label.intent,
        "tone": reply.label.tone,
        "evidence": list(reply.label.evidence),
        "language": reply.label.language,
        "classifier": reply.label.classifier,
        "opted_out": effects.opt_out is not None,
        "handoff_id": effects.handoff_id,
        "survey_score": reply.survey_score,
    }
