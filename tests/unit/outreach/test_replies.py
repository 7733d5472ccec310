"""Reading replies (services/outreach/domain/replies.py), what they set in motion
(domain/conversations.py) and the conversation service's promise that a reply kept is
carried out exactly once, even when Kafka was away the first time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.envelope import CloudEvent
from common.kafka import RecordingProducer
from common.topics import Topics
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.memory_ledger import InMemoryLedger
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.config import Settings
from services.outreach.conversations import ConversationService, Inbound
from services.outreach.domain import conversations as talk
from services.outreach.domain.replies import (
    LexiconClassifier,
    command_of,
    help_text,
    language_of,
    read_reply_address,
    reply_address,
    without_quote,
    words,
)

AT = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "locale", "intent", "tone"),
    [
        ("Where is my parcel?", "en-GB", "question", "neutral"),
        ("When will it arrive", "en", "question", "neutral"),
        ("Thanks, great news!", "en", "thanks", "happy"),
        ("This is RIDICULOUS. Third time LATE again!!", "en", "complaint", "angry"),
        ("Thanks, but I want to talk to a real person", "en", "wants_person", "happy"),
        ("Please call me, I need to speak to a manager", "en", "wants_person", "neutral"),
        ("wrong number, I never ordered anything", "en", "wrong_contact", "neutral"),
        ("please stop texting me", "en", "opt_out", "neutral"),
        ("ok", "en", "other", "neutral"),
        ("Wo ist mein Paket?", "de-DE", "question", "neutral"),
        ("Vielen Dank, super!", "de", "thanks", "happy"),
        ("Das ist eine Frechheit, schon wieder zu spät!", "de", "complaint", "angry"),
        ("Ich möchte mit einem Mitarbeiter sprechen", "de", "wants_person", "neutral"),
        ("Falsche Nummer", "de", "wrong_contact", "neutral"),
        ("Bitte keine SMS mehr", "de", "opt_out", "neutral"),
        ("Où est mon colis ?", "fr-FR", "question", "neutral"),
        ("Merci beaucoup, parfait", "fr", "thanks", "happy"),
        ("C'est inadmissible, toujours pas de colis !", "fr", "complaint", "angry"),
        ("Je veux parler à un conseiller", "fr", "wants_person", "neutral"),
        ("Mauvais numéro", "fr", "wrong_contact", "neutral"),
        # An angry question is a complaint.
        ("Where the hell is my order?! This is a joke, fed up", "en", "complaint", "angry"),
    ],
)
def test_the_classifier_reads_intent_and_tone_in_each_language(text, locale, intent, tone):
    label = LexiconClassifier().classify(text, locale)
    assert (label.intent, label.tone) == (intent, tone), label
    if intent != "other":
        assert label.evidence  # the words that decided it travel with the label
    assert label.classifier == "lexicon-v1"


def test_the_language_is_the_replys_own_unless_the_customers_is_as_likely():
    assert language_of(words("Where is my parcel, it was promised"), "de") == "en"
    assert language_of(words("Wo ist mein Paket, bitte"), "en") == "de"
    assert language_of(words("merci"), "fr") == "fr"
    assert language_of(words("ok"), "de") == "de"  # nothing to go by: the customer's


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("STOP", "stop"), ("stop ", "stop"), ("Stop.", "stop"), ("STOPP", "stop"),
        ("Arrêt", "stop"), ("abmelden", "stop"), ("UNSUBSCRIBE", "stop"), ("stop stop", "stop"),
        ("START", "start"), ("unstop", "start"), ("Reprendre", "start"),
        ("HELP", "help"), ("hilfe!", "help"), ("Aide", "help"), ("info", "help"),
        ("stop the delay please", None), ("help me find my parcel", None), ("", None),
    ],
)  # fmt: skip
def test_keyword_commands_in_every_shipped_language(text, command):
    assert command_of(text) == command


def test_help_answers_in_the_customers_language():
    de = help_text("de-DE", "Shop", "https://s/help", "+49 30 1")
    fr = help_text("fr", "Shop", "https://s/help", "+49 30 1")
    assert de.startswith("Shop: Hilfe unter https://s/help oder +49 30 1") and "STOPP" in de
    assert fr.startswith("Shop : aide sur https://s/help")
    assert help_text("pt-BR", "Shop", "u", "p").startswith("Shop: help at u or p")


def test_a_reply_address_names_its_decision_and_cannot_be_made_up():
    address = reply_address("dec_0123456789abcdef01234567", "r.shop.example", "secret")
    local = address.split("@")[0]
    assert len(local) <= 64
    assert read_reply_address(address, "secret") == "dec_0123456789abcdef01234567"
    assert read_reply_address(f"<{address.upper()}>", "secret") == "dec_0123456789abcdef01234567"
    assert read_reply_address(address, "another secret") is None
    forged = address.replace("dec_0", "dec_1", 1)
    assert read_reply_address(forged, "secret") is None
    assert read_reply_address("care@shop.example", "secret") is None
    with pytest.raises(ValueError):
        reply_address("not an id!", "r.shop.example", "secret")


@pytest.mark.parametrize(
    "quoted",
    [
        "On Mon, 7 Dec 2026 at 10:00, Shop <care@shop.example> wrote:\n> Your parcel",
        "Am 07.12.2026 um 10:00 schrieb Shop <care@shop.example>:\n> Ihr Paket",
        "Le lun. 7 déc. 2026 à 10:00, Shop <care@shop.example> a écrit :\n> Votre colis",
        "-----Original Message-----\nFrom: Shop",
        "> Your parcel is late",
        "--\nKim, sent from my phone",
    ],
)
def test_an_email_reply_is_its_own_words_without_the_quoted_message(quoted):
    assert without_quote(f"Where is it?\r\nThanks\r\n\r\n{quoted}") == "Where is it?\nThanks"


def reply(text: str, *, command=None, locale="de-DE", channel="sms") -> talk.Reply:
    label = LexiconClassifier().classify(text, locale)
    answered = talk.Answered(
        decision_id="dec_1",
        customer_id="c-1",
        order_id="o-1",
        cause_type="incident",
        cause_id="inc-1",
        cause_kind="delivery_late",
        message_kind="delay_apology",
        locale=locale,
        risk_score=72.0,
    )
    return talk.Reply("rep-1", "c-1", channel, AT, text, label, command, answered, locale)


def test_what_a_reply_sets_in_motion():
    policy = talk.HandoffPolicy()
    assert talk.effects_of(reply("STOP", command="stop"), policy).opt_out == "sms_stop"
    assert talk.effects_of(reply("STOP", command="stop", channel="email"), policy).opt_out == (
        "reply_stop"
    )
    assert talk.effects_of(reply("START", command="start"), policy).opt_in == "sms_start"
    assert talk.effects_of(reply("HILFE", command="help"), policy).answer_help
    assert talk.effects_of(reply("keine SMS mehr bitte"), policy).opt_out == "reply_opt_out"
    assert talk.effects_of(reply("falsche Nummer"), policy).opt_out == "wrong_contact"
    thanks = talk.effects_of(reply("Vielen Dank!"), policy)
    assert thanks.handoff_id is None and thanks.opt_out is None
    question = talk.effects_of(reply("Wo ist mein Paket?"), policy)
    assert question.handoff_reason == "intent:question"  # someone must answer it
    angry = talk.effects_of(reply("Frechheit, schon wieder!!"), policy)
    assert angry.handoff_reason == "intent:complaint" and angry.handoff_id
    # Another reply to the same message is the same case.
    again = talk.effects_of(reply("Ich will einen Mitarbeiter sprechen"), policy)
    assert again.handoff_id == angry.handoff_id
    # A reply about a lost parcel goes to a person whatever it says.
    lost = reply("Danke")
    assert lost.answered is not None
    lost = replace(lost, answered=replace(lost.answered, severity="critical"))
    assert talk.effects_of(lost, policy).handoff_reason == "incident:critical"
    # The ops team's policy: only people who ask for a person.
    narrow = talk.HandoffPolicy(
        intents=frozenset({"wants_person"}), tones=frozenset(), critical=False
    )
    assert talk.effects_of(reply("Frechheit, schon wieder!!"), narrow).handoff_id is None
    assert talk.effects_of(lost, narrow).handoff_id is None


def test_unknown_handoff_intents_are_refused_at_start(tmp_path: Path):
    with pytest.raises(ValueError, match="OUTREACH_HANDOFF_INTENTS"):
        Settings(data_dir=tmp_path, handoff_intents="complaint,shouting")
    with pytest.raises(ValueError, match="OUTREACH_REPLY_DOMAIN needs OUTREACH_REPLY_SECRET"):
        Settings(data_dir=tmp_path, reply_domain="replies.shop.example")
    settings = Settings(data_dir=tmp_path, handoff_intents="wants_person", handoff_tones="")
    assert settings.handoff_policy().intents == {"wants_person"}
    assert settings.handoff_policy().tones == frozenset()


def test_the_handoff_carries_both_summaries_and_the_conversation():
    r = reply("Frechheit, schon wieder zu spät!!")
    effects = talk.effects_of(r, talk.HandoffPolicy())
    turns = [
        talk.Turn(AT - timedelta(hours=1), "out", "sms", "delay_apology", "Leider...", "dec_1"),
        talk.Turn(AT, "in", "sms", "complaint", r.text, "rep-1", "angry"),
    ]
    payload = talk.handoff_payload(r, effects, turns)
    assert payload["summary_local"].startswith("Der Kunde beschwert sich (verärgert)")
    assert "Bestellung o-1" in payload["summary_local"]
    assert payload["summary"].startswith("The customer is complaining (angry)")
    assert payload["risk_score"] == 72.0 and payload["order_ids"] == ["o-1"]
    assert [t["direction"] for t in payload["conversation"]] == ["out", "in"]
    assert payload["reasons"][0]["code"] == "reply_intent_complaint"


class FlakyProducer(RecordingProducer):
    """Refuses the first `failures` sends, as a broker that is away would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send(self, topic, key, value, headers, *, timestamp_ms=None) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        await super().send(topic, key, value, headers, timestamp_ms=timestamp_ms)


async def test_a_reply_whose_effects_failed_is_finished_by_the_sweep_once(tmp_path: Path):
    from services.outreach.adapters.ledger import Delivery

    engine = create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    await create_schema(engine)
    ledger = InMemoryLedger()
    ledger.rows["dec_1"] = Delivery(
        decision_id="dec_1", request_id="req-1", customer_id="c-1", order_id="o-1",
        cause_type="incident", cause_id="inc-1", cause_kind="delivery_late", intent="apology",
        message_kind="delay_apology", severity="warning", category="service", status="sent",
        channel="sms", address="+4915100000002", locale="de-DE", decided_at=AT,
        sent_at=AT, updated_at=AT, body_text="Leider ist Ihr Paket verspätet.", request={},
    )  # fmt: skip
    producer, optouts = FlakyProducer(failures=1), RecordingOptOuts()
    service = ConversationService(
        store=ReplyStore(session_factory(engine)),
        handoffs=HandoffStore(session_factory(engine)),
        ledger=ledger,
        classifier=LexiconClassifier(),
        producer=producer,
        topics=Topics("t."),
        policy=talk.HandoffPolicy(),
        optouts=optouts,
        shop=("Shop", "https://s/help", "+49"),
    )
    inbound = Inbound(
        "sms", "+4915100000002", "Frechheit!! Schon wieder!", "SM1", AT + timedelta(minutes=5)
    )
    with pytest.raises(ConnectionError):
        await service.receive(inbound)  # the hand-off could not be published
    assert producer.records == []
    assert await service.sweep(AT) == 0  # not before it settled
    assert await service.sweep(AT + timedelta(hours=1)) == 1
    assert await service.receive(inbound)  # the provider's retry: no second effect
    assert await service.sweep(AT + timedelta(hours=1)) == 0
    events: list[CloudEvent] = producer.events()
    assert [e.type for e in events] == ["support.handoff.requested", "outreach.reply.received"]
    assert events[0].data["conversation"][0]["text"] == "Leider ist Ihr Paket verspätet."
    assert events[1].data["handoff_id"] == events[0].data["handoff_id"]
    assert await service.erase("c-1") == 1
    assert await service.conversation("c-1", 10) == [
        talk.Turn(AT, "out", "sms", "delay_apology", "Leider ist Ihr Paket verspätet.", "dec_1")
    ]
    await engine.dispose()
