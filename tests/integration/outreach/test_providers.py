"""The provider adapters through the official SDKs against the local provider doubles:
what reaches the API, and how every failure is classified."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from services.outreach.adapters.providers import (
    OutboundMessage,
    OutboxSender,
    PermanentProviderError,
    RecordingSender,
    SendGridEmailSender,
    TransientProviderError,
    TwilioMessageSender,
)

pytestmark = pytest.mark.integration

PHONE = "+4915112345678"


def message(channel: str = "sms", to: str = PHONE, **overrides) -> OutboundMessage:
    fields = {
        "decision_id": "dec-42",
        "channel": channel,
        "to": to,
        "subject": "Your order is late" if channel == "email" else None,
        "html": "<p>Hallo Ada</p>" if channel == "email" else None,
        "text": "Hallo Ada, Ihre Bestellung ist verspätet.",
        "message_kind": "delivery_late",
        "intent": "apology",
        "unsubscribe_url": "https://shop.example/unsubscribe?token=t0k",
        "status_callback_url": "https://outreach.example/webhooks/twilio/status",
    }
    return OutboundMessage(**{**fields, **overrides})


def twilio(double, token: str | None = None) -> TwilioMessageSender:
    return TwilioMessageSender(
        double.account_sid,
        token or double.auth_token,
        from_number="+15005550006",
        whatsapp_from="+15005550007",
        base_url=double.base_url,
        timeout_s=5,
    )


def sendgrid(double, key: str | None = None) -> SendGridEmailSender:
    return SendGridEmailSender(
        key or double.api_key,
        "care@shop.example",
        from_name="Example Shop",
        base_url=double.base_url,
        unsubscribe_mailto="unsubscribe@shop.example",
        timeout_s=5,
    )


# --- Twilio --------------------------------------------------------------------------


async def test_sms_goes_out_with_sender_body_and_a_status_callback_naming_the_decision(
    twilio_double,
):
    result = await twilio(twilio_double).send(message())
    assert result.provider == "twilio" and result.provider_message_id.startswith("SM")
    assert not result.outbox
    sent = twilio_double.messages[0]
    assert (sent["To"], sent["From"]) == (PHONE, "+15005550006")
    assert sent["Body"] == "Hallo Ada, Ihre Bestellung ist verspätet."
    callback = urlsplit(sent["StatusCallback"])
    assert callback.path == "/webhooks/twilio/status"
    assert parse_qs(callback.query) == {"decision_id": ["dec-42"]}
    assert sent["sid"] == result.provider_message_id


async def test_whatsapp_uses_whatsapp_addresses_on_both_ends(twilio_double):
    result = await twilio(twilio_double).send(message("whatsapp"))
    sent = twilio_double.messages[0]
    assert (sent["To"], sent["From"]) == (f"whatsapp:{PHONE}", "whatsapp:+15005550007")
    assert result.provider_message_id == sent["sid"]


async def test_invalid_number_is_permanent_21211_without_the_number_in_the_reason(
    twilio_double,
):
    with pytest.raises(PermanentProviderError) as exc:
        await twilio(twilio_double).send(message(to="0151-123"))
    assert (exc.value.code, exc.value.category, exc.value.opt_out) == ("21211", "recipient", False)
    assert "0151-123" not in str(exc.value)


async def test_unsubscribed_recipient_is_permanent_21610_with_opt_out(twilio_double):
    twilio_double.opted_out.add(PHONE)
    with pytest.raises(PermanentProviderError) as exc:
        await twilio(twilio_double).send(message())
    assert (exc.value.code, exc.value.opt_out, exc.value.category) == ("21610", True, "opt_out")


async def test_twilio_429_is_transient_with_retry_after_and_nothing_was_sent(twilio_double):
    twilio_double.fail_next(1, status=429, retry_after=7)
    with pytest.raises(TransientProviderError) as exc:
        await twilio(twilio_double).send(message())
    assert (exc.value.status, exc.value.retry_after, exc.value.maybe_sent) == (429, 7.0, False)
    assert twilio_double.messages == []


async def test_twilio_500_is_transient_and_may_have_been_sent(twilio_double):
    twilio_double.fail_next(1, status=500)
    with pytest.raises(TransientProviderError) as exc:
        await twilio(twilio_double).send(message())
    assert exc.value.status == 500 and exc.value.maybe_sent


async def test_twilio_bad_credentials_are_permanent_auth(twilio_double):
    with pytest.raises(PermanentProviderError) as exc:
        await twilio(twilio_double, token="wrong").send(message())
    assert (exc.value.code, exc.value.category) == ("20003", "auth")


async def test_twilio_unreachable_is_transient_and_not_sent():
    sender = TwilioMessageSender(
        "AC" + "0" * 32,
        "token",
        from_number="+15005550006",
        whatsapp_from=None,
        base_url="http://127.0.0.1:9",
        timeout_s=2,
    )
    with pytest.raises(TransientProviderError) as exc:
        await sender.send(message())
    assert not exc.value.maybe_sent


async def test_a_channel_without_its_sender_number_is_permanent_config(twilio_double):
    sender = TwilioMessageSender(
        twilio_double.account_sid,
        twilio_double.auth_token,
        from_number="+15005550006",
        whatsapp_from=None,
        base_url=twilio_double.base_url,
    )
    with pytest.raises(PermanentProviderError) as exc:
        await sender.send(message("whatsapp"))
    assert exc.value.category == "config" and twilio_double.requests == []


# --- SendGrid --------------------------------------------------------------------------


async def test_email_has_both_parts_categories_decision_id_and_one_click_unsubscribe(
    sendgrid_double,
):
    result = await sendgrid(sendgrid_double).send(message("email", to="ada@example.com"))
    sent = sendgrid_double.messages[0]
    mail = sent["json"]
    assert result.provider == "sendgrid" and result.provider_message_id == sent["message_id"]
    assert mail["from"] == {"email": "care@shop.example", "name": "Example Shop"}
    assert mail["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert mail["subject"] == "Your order is late"
    assert [c["type"] for c in mail["content"]] == ["text/plain", "text/html"]
    assert mail["content"][1]["value"] == "<p>Hallo Ada</p>"
    assert sorted(mail["categories"]) == ["apology", "delivery_late"]
    assert mail["custom_args"] == {"decision_id": "dec-42", "message_kind": "delivery_late"}
    assert mail["headers"] == {
        "List-Unsubscribe": "<https://shop.example/unsubscribe?token=t0k>, "
        "<mailto:unsubscribe@shop.example>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert "ada@example.com" not in str(mail["custom_args"]) + str(mail["categories"])


async def test_sendgrid_400_is_permanent_without_the_address_in_the_reason(sendgrid_double):
    with pytest.raises(PermanentProviderError) as exc:
        await sendgrid(sendgrid_double).send(message("email", to="ada@localhost"))
    assert (exc.value.code, exc.value.category) == ("400", "rejected")
    assert "ada@localhost" not in str(exc.value)


async def test_an_address_the_sdk_refuses_is_permanent_and_sends_nothing(sendgrid_double):
    with pytest.raises(PermanentProviderError) as exc:
        await sendgrid(sendgrid_double).send(message("email", to="not-an-address"))
    assert exc.value.category == "recipient" and sendgrid_double.requests == []


async def test_sendgrid_401_is_permanent_auth(sendgrid_double):
    with pytest.raises(PermanentProviderError) as exc:
        await sendgrid(sendgrid_double, key="SG.wrong").send(message("email", to="ada@example.com"))
    assert (exc.value.code, exc.value.category) == ("401", "auth")


async def test_sendgrid_429_is_transient_with_retry_after(sendgrid_double):
    sendgrid_double.fail_next(1, status=429, retry_after=3)
    with pytest.raises(TransientProviderError) as exc:
        await sendgrid(sendgrid_double).send(message("email", to="ada@example.com"))
    assert (exc.value.status, exc.value.retry_after) == (429, 3.0)


async def test_sendgrid_503_is_transient(sendgrid_double):
    sendgrid_double.fail_next(1, status=503)
    with pytest.raises(TransientProviderError) as exc:
        await sendgrid(sendgrid_double).send(message("email", to="ada@example.com"))
    assert exc.value.status == 503 and exc.value.maybe_sent


async def test_no_address_or_body_reaches_the_logs(twilio_double, sendgrid_double, caplog):
    caplog.set_level(logging.DEBUG)
    await twilio(twilio_double).send(message())
    await sendgrid(sendgrid_double).send(message("email", to="ada@example.com"))
    twilio_double.fail_next(1, status=500)
    with pytest.raises(TransientProviderError):
        await twilio(twilio_double).send(message())
    logged = caplog.text
    assert PHONE not in logged and "ada@example.com" not in logged
    assert "Hallo Ada" not in logged


# --- no credentials, and the fake ------------------------------------------------------


async def test_outbox_sender_sends_nothing_and_marks_the_result():
    result = await OutboxSender().send(message())
    assert (result.provider_message_id, result.outbox) == ("outbox-dec-42", True)


async def test_recording_sender_records_and_replays_scripted_errors():
    fake = RecordingSender(errors=[TransientProviderError("busy", retry_after=1)])
    with pytest.raises(TransientProviderError):
        await fake.send(message())
    result = await fake.send(message())
    assert fake.sent == [message()] and result.provider_message_id == "rec-1"
