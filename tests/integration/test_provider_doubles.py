"""The provider doubles answer the official SDKs as the real APIs do."""

from __future__ import annotations

import pytest
from python_http_client.exceptions import BadRequestsError, TooManyRequestsError, UnauthorizedError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Mail
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

pytestmark = pytest.mark.integration


def twilio_client(double, token=None):
    client = Client(double.account_sid, token or double.auth_token)
    client.api.base_url = double.base_url
    return client


def test_twilio_accepts_a_valid_sms_and_whatsapp_and_records_them(twilio_double):
    client = twilio_client(twilio_double)
    sms = client.messages.create(to="+4915112345678", from_="+15005550006", body="Hallo Ada")
    assert sms.sid.startswith("SM") and sms.status == "queued" and sms.num_segments == "1"
    client.messages.create(to="whatsapp:+4915112345678", from_="whatsapp:+15005550006", body="Hi")
    assert [m["To"] for m in twilio_double.messages] == [
        "+4915112345678",
        "whatsapp:+4915112345678",
    ]
    assert client.messages(sms.sid).fetch().body == "Hallo Ada"


@pytest.mark.parametrize(
    ("to", "code", "status"), [("12345", 21211, 400), ("+4915112345678", 20003, 401)]
)
def test_twilio_errors_have_the_real_codes(twilio_double, to, code, status):
    client = twilio_client(twilio_double, token="wrong" if status == 401 else None)
    with pytest.raises(TwilioRestException) as exc:
        client.messages.create(to=to, from_="+15005550006", body="x")
    assert (exc.value.code, exc.value.status) == (code, status)


def test_twilio_429_then_success(twilio_double):
    twilio_double.fail_next(1, status=429, retry_after=3)
    client = twilio_client(twilio_double)
    with pytest.raises(TwilioRestException) as exc:
        client.messages.create(to="+4915112345678", from_="+15005550006", body="x")
    assert exc.value.status == 429 and exc.value.code == 20429
    assert client.http_client._test_only_last_response.headers["Retry-After"] == "3"
    client.messages.create(to="+4915112345678", from_="+15005550006", body="x")
    assert len(twilio_double.messages) == 1


def mail(**overrides):
    m = Mail(
        from_email="care@shop.example",
        to_emails="ada@example.com",
        subject=overrides.get("subject", "Hello"),
        plain_text_content="Hi",
        html_content="<p>Hi</p>",
    )
    return m


def test_sendgrid_accepts_mail_and_rejects_bad_key_missing_subject_and_429(sendgrid_double):
    client = SendGridAPIClient(sendgrid_double.api_key, host=sendgrid_double.base_url)
    response = client.send(mail())
    assert response.status_code == 202 and len(response.headers["X-Message-Id"]) == 22
    assert sendgrid_double.messages[0]["json"]["subject"] == "Hello"
    with pytest.raises(UnauthorizedError):
        SendGridAPIClient("SG.wrong", host=sendgrid_double.base_url).send(mail())
    bad = mail().get()
    del bad["subject"]
    with pytest.raises(BadRequestsError) as exc:
        client.client.mail.send.post(request_body=bad)
    assert b"subject" in exc.value.body
    sendgrid_double.fail_next(1, status=429, retry_after=2)
    with pytest.raises(TooManyRequestsError) as limited:
        client.send(mail())
    assert limited.value.headers["Retry-After"] == "2"
    assert len(sendgrid_double.messages) == 1
