"""Replies on the real broker: SMS and WhatsApp through Twilio's signed inbound webhook,
email through SendGrid's Inbound Parse (HTTP Basic, the signed reply-to address the
official SDK put on the message), each reaching the right conversation with its label
on `outreach.replies`; an angry reply handed off with the conversation so far; STOP and
HELP in the customer's language; forgeries refused. Only outside effects are checked:
the topics, the provider doubles' answers and the database."""

from __future__ import annotations

import asyncio
from datetime import time as dtime
from datetime import timedelta

import orjson
import pytest
from aiohttp import web

from common.admin import ensure_topics
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.providers import SendGridEmailSender, TwilioMessageSender
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from services.outreach.domain.decisions import ChannelOption, ContactPlan
from services.outreach.entrypoints.http import routes
from services.outreach.entrypoints.inputs import own_topics
from tests.conftest import free_port, wait_for
from tests.e2e.stack import TopicReader
from tests.outreach_requests import NOON, request

pytestmark = pytest.mark.integration

PARSE = ("parse", "s3cret-parse-password")
CUSTOMERS = {
    # customer: (locale, channel, address)
    "c-en": ("en-GB", "sms", "+447911000001"),
    "c-de": ("de-DE", "sms", "+4915100000002"),
    "c-fr": ("fr-FR", "whatsapp", "+33600000003"),
    "c-mail": ("de-DE", "email", "kim@example.com"),
}


def contact_plan(customer: str) -> ContactPlan:
    locale, channel, address = CUSTOMERS[customer]
    return ContactPlan(
        customer_id=customer,
        known=True,
        first_name="Kim",
        locale=locale,
        time_zone="Europe/Berlin",
        quiet_start=dtime(21),
        quiet_end=dtime(8),
        marketing_opt_in=False,
        channels=(ChannelOption(channel, address, True, "ok"),),
    )


@pytest.fixture
async def app(tmp_path, twilio_double, sendgrid_double, kafka_bootstrap, topic_prefix):
    port = free_port()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'o.db'}",
        data_dir=tmp_path,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        public_base_url=f"http://127.0.0.1:{port}",
        twilio_account_sid=twilio_double.account_sid,
        twilio_auth_token=twilio_double.auth_token,
        reply_domain="replies.shop.example",
        reply_secret="a-reply-secret-for-the-test",
        inbound_parse_user=PARSE[0],
        inbound_parse_password=PARSE[1],
    )
    ensure_topics(kafka_bootstrap, own_topics(settings, False))
    twilio = TwilioMessageSender(
        twilio_double.account_sid,
        twilio_double.auth_token,
        from_number="+15005550006",
        whatsapp_from="whatsapp:+15005550006",
        base_url=twilio_double.base_url,
    )
    from services.outreach.bootstrap import _reply_to

    senders = {
        "sms": twilio,
        "whatsapp": twilio,
        "email": SendGridEmailSender(
            sendgrid_double.api_key,
            "care@shop.example",
            base_url=sendgrid_double.base_url,
            reply_to=_reply_to(settings),
        ),
    }
    plans = StaticContactPlans({(c, "*"): contact_plan(c) for c in CUSTOMERS})
    outreach = bootstrap(settings, plans=plans, senders=senders)
    await outreach.start()
    await outreach.producer.start()
    application = web.Application()
    application.add_routes(routes(outreach))
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    readers = {
        name: TopicReader(kafka_bootstrap, getattr(settings.topics, name))
        for name in ("replies", "handoffs", "optouts")
    }
    yield outreach, f"http://127.0.0.1:{port}", readers
    for reader in readers.values():
        reader.close()
    await runner.cleanup()
    await outreach.producer.stop()
    await outreach.stop()


async def message_to(outreach, customer: str, rid: str, hours: int = 0):
    """Send the customer a delay apology, `hours` after noon; the ledger row of it."""
    at = NOON + timedelta(hours=hours)
    await outreach.delivery.on_request(
        request(rid, customer=customer, cause=f"inc-{rid}", at=at), at
    )
    row = await outreach.ledger.by_request(rid)
    assert row.status == "sent", row.status
    return row


def events_of(reader: TopicReader, n: int) -> list[dict]:
    wait_for(lambda: len(reader.poll()) >= n, timeout=20, message=f"{n} events")
    return [orjson.loads(r.value) for r in reader.poll()]


async def test_a_reply_in_each_language_reaches_its_conversation_with_its_label(app, twilio_double):
    outreach, base, readers = app
    url = f"{base}/webhooks/twilio/inbound"
    rows = {c: await message_to(outreach, c, f"r-{c}") for c in ("c-en", "c-de", "c-fr")}
    replies = [
        ("c-en", "+447911000001", "Where is my parcel? When will it arrive?", "question"),
        ("c-de", "+4915100000002", "Vielen Dank für die Info, super!", "thanks"),
        ("c-fr", "whatsapp:+33600000003", "Je veux parler à un conseiller", "wants_person"),
    ]
    for _, sender, text, _ in replies:
        status, _ = await asyncio.to_thread(twilio_double.inbound, url, sender, text)
        assert status == 200
    events = events_of(readers["replies"], 3)
    by_customer = {e["data"]["customer_id"]: e for e in events}
    assert len(events) == 3
    for customer, _, _, intent in replies:
        data = by_customer[customer]["data"]
        assert data["decision_id"] == rows[customer].decision_id
        assert data["cause"]["id"] == rows[customer].cause_id
        assert data["intent"] == intent, data
        assert data["evidence"], data
        assert "text" not in data  # the words stay in the database
    assert by_customer["c-fr"]["data"]["channel"] == "whatsapp"
    assert {by_customer[c]["data"]["language"] for c in ("c-en", "c-de", "c-fr")} == {
        "en",
        "de",
        "fr",
    }
    # A question and wanting a person go to a person by the default policy, thanks do
    # not; each summary in the customer's language and in English.
    handoffs = {h["data"]["customer_id"]: h["data"] for h in events_of(readers["handoffs"], 2)}
    assert sorted(handoffs) == ["c-en", "c-fr"]
    assert "souhaite parler à une personne" in handoffs["c-fr"]["summary_local"]
    assert "wants to speak to a person" in handoffs["c-fr"]["summary"]
    assert "has a question" in handoffs["c-en"]["summary_local"]


async def test_an_angry_reply_is_handed_off_with_the_conversation_so_far(app, twilio_double):
    outreach, base, readers = app
    url = f"{base}/webhooks/twilio/inbound"
    first = await message_to(outreach, "c-de", "r-1")
    second = await message_to(outreach, "c-de", "r-2", hours=1)
    calm = "Danke für die Nachricht."  # thanks: not for a person
    angry = "Das ist eine FRECHHEIT, SCHON WIEDER zu spät!!"
    for text in (calm, angry):
        status, _ = await asyncio.to_thread(twilio_double.inbound, url, "+4915100000002", text)
        assert status == 200
    (handoff,) = events_of(readers["handoffs"], 1)
    data = handoff["data"]
    assert data["trigger"] == "reply" and data["customer_id"] == "c-de"
    assert data["reply"]["tone"] == "angry" and data["reply"]["intent"] == "complaint"
    assert "frechheit" in data["reply"]["evidence"]
    assert data["order_ids"] == ["o-1"]
    assert data["incident"]["id"] == second.cause_id
    assert data["locale"] == "de-DE" and "beschwert sich" in data["summary_local"]
    turns = [
        (t["direction"], t["ref"] if t["direction"] == "out" else t["text"])
        for t in data["conversation"]
    ]
    assert turns == [
        ("out", first.decision_id),
        ("out", second.decision_id),
        ("in", calm),
        ("in", angry),
    ]
    sent = [t["text"] for t in data["conversation"] if t["direction"] == "out"]
    assert sent[0] == first.body_text  # what the customer read
    events = events_of(readers["replies"], 2)
    assert ["handoff_id" in e["data"] for e in events] == [False, True]  # none is left out


async def test_stop_help_and_start_in_the_customers_language(app, twilio_double):
    outreach, base, readers = app
    url = f"{base}/webhooks/twilio/inbound"
    await message_to(outreach, "c-de", "r-1")
    status, twiml = await asyncio.to_thread(twilio_double.inbound, url, "+4915100000002", "Hilfe")
    assert status == 200 and "Hilfe unter https://shop.example/help" in twiml
    status, twiml = await asyncio.to_thread(twilio_double.inbound, url, "+4915100000002", "STOPP")
    assert status == 200 and "<Message>" not in twiml  # the carrier confirms STOP itself
    status, _ = await asyncio.to_thread(twilio_double.inbound, url, "+4915100000002", "Start")
    choices = [(e["type"], e["data"]["source"]) for e in events_of(readers["optouts"], 2)]
    assert choices == [("contact.opted_out", "sms_stop"), ("contact.opted_in", "sms_start")]
    commands = [e["data"].get("command") for e in events_of(readers["replies"], 3)]
    assert commands == ["help", "stop", "start"]
    # Asking in words to stop opts out too; so does "wrong number".
    await asyncio.to_thread(
        twilio_double.inbound, url, "+4915100000002", "Falsche Nummer, ich habe nie bestellt"
    )
    last = events_of(readers["optouts"], 3)[-1]
    assert (last["type"], last["data"]["source"]) == ("contact.opted_out", "wrong_contact")


async def test_a_webhook_sent_twice_has_one_effect_and_a_forged_one_none(app, twilio_double):
    outreach, base, readers = app
    url = f"{base}/webhooks/twilio/inbound"
    await message_to(outreach, "c-en", "r-1")
    angry = "This is ridiculous, unacceptable!!"
    for _ in range(2):
        status, _ = await asyncio.to_thread(
            twilio_double.inbound, url, "+447911000001", angry, sid="SM" + "a" * 32
        )
        assert status == 200
    status, _ = await asyncio.to_thread(
        twilio_double.inbound, url, "+447911000001", angry, auth_token="not-the-token"
    )
    assert status == 403
    await asyncio.sleep(2)  # what a second effect would need to show up
    assert len(events_of(readers["replies"], 1)) == 1
    assert len(events_of(readers["handoffs"], 1)) == 1
    replies = await outreach.conversations.store.of_customer("c-en")
    assert len(replies) == 1


async def test_an_email_reply_through_inbound_parse_reaches_the_message_it_answers(
    app, sendgrid_double
):
    outreach, base, readers = app
    url = f"{base}/webhooks/sendgrid/inbound"
    row = await message_to(outreach, "c-mail", "r-1")
    (mail,) = sendgrid_double.messages
    reply_to = mail["json"]["reply_to"]["email"]
    assert reply_to.endswith("@replies.shop.example")
    text = (
        "Ich möchte mit einem Mitarbeiter sprechen.\n\n"
        "Am 4. März 2026 um 12:00 schrieb Example Shop <care@shop.example>:\n"
        "> Ihre Bestellung ist leider verspätet"
    )
    sender = "Kim <kim@example.com>"
    assert (
        await asyncio.to_thread(
            sendgrid_double.inbound_parse, url, from_=sender, to=reply_to, text=text, auth=PARSE
        )
        == 204
    )
    (event,) = events_of(readers["replies"], 1)
    assert event["data"]["decision_id"] == row.decision_id
    assert event["data"]["channel"] == "email"
    assert event["data"]["intent"] == "wants_person"
    (handoff,) = events_of(readers["handoffs"], 1)
    reply = handoff["data"]["conversation"][-1]
    assert reply["text"] == "Ich möchte mit einem Mitarbeiter sprechen."  # without the quote

    # Wrong credentials, none, or an address of ours someone altered: no effect.
    wrong = ("parse", "guess")
    assert (
        await asyncio.to_thread(
            sendgrid_double.inbound_parse, url, from_=sender, to=reply_to, text="x", auth=wrong
        )
        == 401
    )
    assert (
        await asyncio.to_thread(
            sendgrid_double.inbound_parse, url, from_=sender, to=reply_to, text="x"
        )
        == 401
    )
    altered = reply_to.replace("reply-", "reply-0", 1)
    assert (
        await asyncio.to_thread(
            sendgrid_double.inbound_parse, url, from_=sender, to=altered, text="x", auth=PARSE
        )
        == 204
    )
    await asyncio.sleep(2)
    assert len(events_of(readers["replies"], 1)) == 1


async def checkin_to(outreach, customer: str, rid: str, hours: int = 0):
    at = NOON + timedelta(days=2, hours=hours)
    checkin = request(
        rid, customer=customer, cause=f"inc-{rid}", at=at,
        kind="post_incident_checkin", intent="check_in",
    )  # fmt: skip
    await outreach.delivery.on_request(checkin, at)
    row = await outreach.ledger.by_request(rid)
    assert row.status == "sent" and row.message_kind == "post_incident_checkin"
    return row


async def test_a_survey_answered_by_reply_and_on_its_page(app, twilio_double, sendgrid_double):
    import urllib.parse

    from tests.doubles.callbacks import post_reading

    outreach, base, readers = app
    answered = {channel: survey_answers(channel) for channel in ("sms", "web")}
    await checkin_to(outreach, "c-de", "s-1")
    assert "Antworten Sie mit 1 (schlecht) bis 5" in twilio_double.messages[-1]["Body"]
    url = f"{base}/webhooks/twilio/inbound"
    assert (await asyncio.to_thread(twilio_double.inbound, url, "+4915100000002", "2"))[0] == 200
    (event,) = events_of(readers["replies"], 1)
    assert (event["data"]["intent"], event["data"]["survey_score"]) == ("survey_answer", 2)
    (handoff,) = events_of(readers["handoffs"], 1)  # a low score goes to a person
    assert "in der Umfrage schlecht bewertet" in handoff["data"]["summary_local"]

    # The email's one-click links: a page in the customer's language; sending it counts.
    row = await checkin_to(outreach, "c-mail", "s-2")
    mail = sendgrid_double.messages[-1]["json"]
    text = next(c["value"] for c in mail["content"] if c["type"] == "text/plain")
    link = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("5: "))
    page = link
    assert link.startswith(f"{base}/survey?token=")
    status, body = await asyncio.to_thread(lambda: _get(page))
    assert status == 200 and "Wie zufrieden sind Sie" in body and "value='5' checked" in body
    assert len(events_of(readers["replies"], 1)) == 1  # opening the page answers nothing
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(page).query)["token"][0]
    form = urllib.parse.urlencode({"token": token, "score": "5"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = await asyncio.to_thread(post_reading, f"{base}/survey", form, headers)
    assert status == 200 and "mit 5 von 5 bewertet" in body
    again = urllib.parse.urlencode({"token": token, "score": "1"}).encode()
    status, body = await asyncio.to_thread(post_reading, f"{base}/survey", again, headers)
    assert "mit 5 von 5 bewertet" in body  # one answer per message: the first stands
    events = events_of(readers["replies"], 2)
    assert [(e["data"]["channel"], e["data"]["survey_score"]) for e in events[1:]] == [("web", 5)]
    assert events[1]["data"]["decision_id"] == row.decision_id
    forged = urllib.parse.urlencode({"token": token[:-2] + "xx", "score": "1"}).encode()
    status, body = await asyncio.to_thread(post_reading, f"{base}/survey", forged, headers)
    assert "nicht gültig" in body or "not valid" in body
    assert len(events_of(readers["replies"], 2)) == 2
    # outreach_survey_score by the intent of the message that asked, and the channel
    assert {c: survey_answers(c) - n for c, n in answered.items()} == {"sms": 1, "web": 1}

    # Asked once in OUTREACH_SURVEY_QUIET_DAYS: the next check-in does not ask, and a bare
    # number in reply to it is not an answer.
    await checkin_to(outreach, "c-de", "s-3", hours=2)
    assert "Antworten Sie mit 1" not in twilio_double.messages[-1]["Body"]
    assert (await asyncio.to_thread(twilio_double.inbound, url, "+4915100000002", "4"))[0] == 200
    latest = events_of(readers["replies"], 3)[-1]["data"]
    assert latest["intent"] != "survey_answer" and latest.get("survey_score") is None
    assert {c: survey_answers(c) - n for c, n in answered.items()} == {"sms": 1, "web": 1}


def survey_answers(channel: str) -> float:
    """outreach_survey_score's count over check-ins answered on `channel` (this process's
    registry: what /metrics serves)."""
    from prometheus_client import REGISTRY

    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "outreach_survey_score"
        for sample in metric.samples
        if sample.name == "outreach_survey_score_count"
        and sample.labels.get("intent") == "check_in"
        and sample.labels.get("channel") == channel
    )


def _get(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), response.read().decode()
