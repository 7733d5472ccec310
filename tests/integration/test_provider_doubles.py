"""The provider doubles answer the official SDKs as the real APIs do."""

from __future__ import annotations

import errno
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import get_args
from urllib.parse import parse_qsl

import pytest
import requests
from python_http_client.exceptions import (
    BadRequestsError,
    InternalServerError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.mail import Category, CustomArg, Mail
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.conftest import free_port
from tests.doubles import TwilioDouble
from tests.doubles.base import Fault, FaultKind

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


# --- faults ----------------------------------------------------------------------------

PHONE = "+4915112345678"
KINDS = list(get_args(FaultKind))  # the order of the cases below


def quick_twilio(double, timeout=0.3):
    client = Client(
        double.account_sid, double.auth_token, http_client=TwilioHttpClient(timeout=timeout)
    )
    client.api.base_url = double.base_url
    return client


def quick_sendgrid(double, timeout=0.3):
    client = SendGridAPIClient(double.api_key, host=double.base_url)
    client.client.timeout = timeout
    return client


@pytest.mark.parametrize(
    ("fault", "raises", "accepted"),
    [
        (Fault(503), TwilioRestException, False),
        (Fault(500, kind="accept_then_status"), TwilioRestException, True),
        (Fault(kind="accept_then_timeout", delay_s=5), requests.ReadTimeout, True),
        (Fault(kind="reset"), requests.ConnectionError, False),
        (Fault(kind="reset_after_accept"), requests.ConnectionError, True),
        (Fault(kind="slow", delay_s=0.1), None, True),
    ],
    ids=KINDS,
)
def test_twilio_faults_as_the_sdk_and_the_record_see_them(twilio_double, fault, raises, accepted):
    twilio_double.inject(fault)
    client = quick_twilio(twilio_double)
    started = time.monotonic()
    if raises is None:
        client.messages.create(to=PHONE, from_="+15005550006", body="x")
        assert time.monotonic() - started >= fault.delay_s
    else:
        with pytest.raises(raises) as exc:
            client.messages.create(to=PHONE, from_="+15005550006", body="x")
        if raises is TwilioRestException:
            assert exc.value.status == fault.status
        if fault.kind.startswith("reset"):
            assert "Connection reset by peer" in str(exc.value)  # an RST, not a FIN
    assert len(twilio_double.messages) == int(accepted)
    attempt = twilio_double.attempts[0]
    assert (attempt["outcome"], attempt["accepted"]) == (fault.label, accepted)
    for message in twilio_double.messages:
        assert attempt["received_at"] == message["received_at"] <= message["accepted_at"]
    client.messages.create(to=PHONE, from_="+15005550006", body="again")  # the fault is spent
    assert twilio_double.attempts[-1]["outcome"] == "accepted"


@pytest.mark.parametrize(
    ("fault", "raises", "accepted"),
    [
        (Fault(429, 7), TooManyRequestsError, False),
        (Fault(500, kind="accept_then_status"), InternalServerError, True),
        (Fault(kind="accept_then_timeout", delay_s=5), TimeoutError, True),
        (Fault(kind="reset"), ConnectionResetError, False),
        (Fault(kind="reset_after_accept"), ConnectionResetError, True),
        (Fault(kind="slow", delay_s=0.1), None, True),
    ],
    ids=KINDS,
)
def test_sendgrid_faults_as_the_sdk_and_the_record_see_them(
    sendgrid_double, fault, raises, accepted
):
    sendgrid_double.inject(fault)
    client = quick_sendgrid(sendgrid_double)
    if raises is None:
        assert client.send(mail()).status_code == 202
    else:
        with pytest.raises(raises) as exc:
            client.send(mail())
        if fault.status == 429:
            assert exc.value.headers["Retry-After"] == "7"
        if fault.kind.startswith("reset"):
            assert exc.value.errno == errno.ECONNRESET  # an RST, not a FIN
    assert len(sendgrid_double.messages) == int(accepted)
    assert sendgrid_double.attempts[0]["outcome"] == fault.label
    assert sendgrid_double.attempts[0]["accepted"] is accepted


def test_accept_then_status_passes_a_rejection_through_unchanged(twilio_double):
    twilio_double.inject(Fault(500, kind="accept_then_status"))
    with pytest.raises(TwilioRestException) as exc:
        quick_twilio(twilio_double).messages.create(to="12345", from_="+15005550006", body="x")
    assert (exc.value.status, exc.value.code) == (400, 21211)
    assert twilio_double.messages == [] and twilio_double.attempts[0]["outcome"] == "rejected"


def test_a_policy_faults_only_message_creation_and_gets_go_through(twilio_double):
    client = quick_twilio(twilio_double)
    sid = client.messages.create(to=PHONE, from_="+15005550006", body="x").sid
    seen = []

    def policy(request):
        seen.append(request)
        return Fault(503) if request.creates else None

    twilio_double.set_policy(policy)
    with pytest.raises(TwilioRestException):
        client.messages.create(to=PHONE, from_="+15005550006", body="y")
    assert client.messages(sid).fetch().body == "x"
    assert len(client.messages.list(to=PHONE)) == 1
    twilio_double.inject(Fault(kind="slow"))  # the queue goes before the policy
    client.messages.create(to=PHONE, from_="+15005550006", body="z")
    assert [(r.index, r.method, r.creates) for r in seen] == [
        (1, "POST", True),
        (2, "GET", False),
        (3, "GET", False),
    ]
    assert [a["outcome"] for a in twilio_double.attempts] == [
        "accepted",
        "status:503",
        "read",
        "read",
        "slow",
    ]
    assert [m["Body"] for m in twilio_double.messages] == ["x", "z"]


def test_stop_is_prompt_while_a_connection_is_held():
    with TwilioDouble() as double:
        double.inject(Fault(kind="accept_then_timeout", delay_s=60))
        with pytest.raises(requests.ReadTimeout):
            quick_twilio(double, timeout=0.2).messages.create(
                to=PHONE, from_="+15005550006", body="x"
            )
        started = time.monotonic()
    assert time.monotonic() - started < 2 and len(double.messages) == 1


# --- status callbacks ----------------------------------------------------------------


class Receiver:
    """A webhook on 127.0.0.1: records every POST and answers `answers` in turn, then 204."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.answers: list[int] = []
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                with lock:
                    receiver.posts.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = receiver.answers.pop(0) if receiver.answers else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_):
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_for(self, n: int, timeout: float = 3.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.posts) >= n, f"expected {n} posts, got {len(self.posts)}"
        return self.posts

    def forms(self) -> list[dict[str, str]]:
        return [dict(parse_qsl(p["body"])) for p in self.posts]

    def events(self) -> list[dict]:
        return [event for p in self.posts for event in json.loads(p["body"])]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


STATUS_URL = "https://outreach.example/webhooks/twilio/status?decision_id=dec-1"


@pytest.fixture
def twilio_auto(twilio_double, receiver):
    """Automatic callbacks, quick, to `STATUS_URL` routed to the receiver."""
    twilio_double.auto_callbacks = True
    twilio_double.sent_after_s, twilio_double.delivered_after_s = 0.02, 0.1
    twilio_double.dispatcher.route = lambda url: receiver.base + url.split("example", 1)[1]
    return twilio_double


def send_sms(double, to=PHONE):
    client = quick_twilio(double, timeout=2)
    return client.messages.create(
        to=to, from_="+15005550006", body="x", status_callback=STATUS_URL
    ).sid


def statuses(receiver):
    return [(f["MessageStatus"], f.get("ErrorCode")) for f in receiver.forms()]


def test_no_automatic_twilio_callbacks_unless_asked(twilio_double, receiver):
    twilio_double.dispatcher.route = lambda url: receiver.base
    send_sms(twilio_double)
    assert twilio_double.dispatcher.pending() == 0 and twilio_double.dispatcher.log == []


def test_twilio_callbacks_are_signed_routed_and_in_order(twilio_auto, receiver):
    twilio_auto.undeliverable.add("+4915100000000")
    delivered = send_sms(twilio_auto)
    twilio_auto.dispatcher.wait_idle(3)
    undelivered = send_sms(twilio_auto, to="+4915100000000")
    twilio_auto.dispatcher.wait_idle(3)
    validator = RequestValidator(twilio_auto.auth_token)
    for post in receiver.posts:
        assert post["path"] == "/webhooks/twilio/status?decision_id=dec-1"
        params = dict(parse_qsl(post["body"]))
        assert validator.validate(STATUS_URL, params, post["headers"]["X-Twilio-Signature"])
    forms = receiver.forms()
    assert [(f["MessageSid"], f["MessageStatus"], f.get("ErrorCode")) for f in forms] == [
        (delivered, "sent", None),
        (delivered, "delivered", None),
        (undelivered, "sent", None),
        (undelivered, "undelivered", "30003"),
    ]
    assert forms[0]["AccountSid"] == twilio_auto.account_sid and forms[0]["To"] == PHONE
    log = twilio_auto.dispatcher.log
    assert {(e["decision_id"], e["status"], e["attempt"]) for e in log} == {("dec-1", 204, 1)}
    assert log[0]["url"].startswith(receiver.base) and log[0]["original_url"] == STATUS_URL


def test_an_outage_holds_callbacks_until_it_ends_or_drops_them(twilio_auto, receiver):
    dispatcher = twilio_auto.dispatcher
    dispatcher.outage(True)
    send_sms(twilio_auto)
    time.sleep(0.2)  # both callbacks fall due during the outage
    assert receiver.posts == [] and dispatcher.pending() == 2
    with pytest.raises(AssertionError):
        dispatcher.wait_idle(0.05)
    ended = time.time()
    dispatcher.outage(False)
    dispatcher.wait_idle(3)
    assert statuses(receiver) == [("sent", None), ("delivered", None)]
    assert all(e["time"] >= ended for e in dispatcher.log)

    dispatcher.outage(True, hold=False)
    send_sms(twilio_auto)
    dispatcher.wait_idle(3)
    dispatcher.outage(False)
    assert len(receiver.posts) == 2
    assert [(e["events"], e["dropped"]) for e in dispatcher.log[2:]] == [
        (["sent"], True),
        (["delivered"], True),
    ]


def test_duplicate_reorder_and_contradict(twilio_auto, receiver):
    dispatcher = twilio_auto.dispatcher
    dispatcher.duplicate = True
    send_sms(twilio_auto)
    dispatcher.wait_idle(3)
    assert statuses(receiver) == [("sent", None)] * 2 + [("delivered", None)] * 2
    assert receiver.posts[0]["body"] == receiver.posts[1]["body"]

    dispatcher.duplicate, dispatcher.reorder = False, True
    receiver.posts.clear()
    send_sms(twilio_auto)
    dispatcher.wait_idle(3)
    assert statuses(receiver) == [("delivered", None), ("sent", None)]

    dispatcher.reorder, dispatcher.contradict = False, True
    receiver.posts.clear()
    send_sms(twilio_auto)
    dispatcher.wait_idle(3)
    assert statuses(receiver) == [("sent", None), ("delivered", None), ("undelivered", "30003")]


def test_failed_callbacks_are_retried_with_backoff_and_a_4xx_is_final(twilio_auto, receiver):
    twilio_auto.delivered_after_s = 1.5  # after the retries of `sent` (0.2 s, 0.4 s)
    receiver.answers = [500, 500, 204, 403]
    send_sms(twilio_auto)
    twilio_auto.dispatcher.wait_idle(4)
    log = twilio_auto.dispatcher.log
    assert [(e["events"], e["status"], e["attempt"]) for e in log] == [
        (["sent"], 500, 1),
        (["sent"], 500, 2),
        (["sent"], 204, 3),
        (["delivered"], 403, 1),
    ]
    assert log[1]["time"] - log[0]["time"] >= 0.19 and log[2]["time"] - log[1]["time"] >= 0.39


def test_unreachable_receiver_is_retried_then_given_up(twilio_auto, receiver):
    dispatcher = twilio_auto.dispatcher
    dispatcher.route = lambda url: f"http://127.0.0.1:{free_port()}/"
    dispatcher.max_retries, dispatcher.backoff_s = 2, 0.02
    send_sms(twilio_auto)
    dispatcher.wait_idle(3)
    assert sorted((e["events"][0], e["attempt"]) for e in dispatcher.log) == [
        ("delivered", 1),
        ("delivered", 2),
        ("delivered", 3),
        ("sent", 1),
        ("sent", 2),
        ("sent", 3),
    ]
    assert all(e["status"] is None and "Connection" in e["error"] for e in dispatcher.log)


def sendgrid_mail(*to):
    m = Mail(
        from_email="care@shop.example",
        to_emails=list(to),
        subject="Hello",
        plain_text_content="Hi",
    )
    m.add_custom_arg(CustomArg("decision_id", "dec-7"))
    m.add_category(Category("apology"))
    return m


@pytest.fixture
def sendgrid_events(sendgrid_double, receiver):
    sendgrid_double.event_webhook_url = receiver.base + "/webhooks/sendgrid/events"
    sendgrid_double.processed_after_s, sendgrid_double.delivered_after_s = 0.02, 0.1
    return sendgrid_double


def test_sendgrid_events_are_signed_and_carry_the_decision(sendgrid_events, receiver):
    sendgrid_events.undeliverable.add("gone@example.com")
    response = quick_sendgrid(sendgrid_events, 2).send(
        sendgrid_mail("ada@example.com", "gone@example.com")
    )
    sendgrid_events.dispatcher.wait_idle(3)
    verifier = EventWebhook(sendgrid_events.webhook_public_key)
    for post in receiver.posts:
        headers = post["headers"]
        assert verifier.verify_signature(
            post["body"],
            headers["X-Twilio-Email-Event-Webhook-Signature"],
            headers["X-Twilio-Email-Event-Webhook-Timestamp"],
        )
    events = receiver.events()
    assert len(receiver.posts) < len(events)  # due together, posted together
    assert [(e["email"], e["event"]) for e in events] == [
        ("ada@example.com", "processed"),
        ("gone@example.com", "processed"),
        ("ada@example.com", "delivered"),
        ("gone@example.com", "bounce"),
    ]
    message_id = response.headers["X-Message-Id"]
    for event in events:
        assert event["decision_id"] == "dec-7" and event["category"] == ["apology"]
        assert event["sg_message_id"] == f"{message_id}.filterdrecv-1.0"
        assert isinstance(event["timestamp"], int)
    assert len({e["sg_event_id"] for e in events}) == 4
    assert (events[3]["status"], events[3]["type"]) == ("5.1.1", "bounce")


def test_no_sendgrid_events_without_a_webhook_url(sendgrid_double):
    quick_sendgrid(sendgrid_double).send(sendgrid_mail("ada@example.com"))
    assert sendgrid_double.dispatcher.pending() == 0


def test_sendgrid_reordered_and_contradicted(sendgrid_events, receiver):
    sendgrid_events.dispatcher.reorder = sendgrid_events.dispatcher.contradict = True
    quick_sendgrid(sendgrid_events, 2).send(sendgrid_mail("ada@example.com"))
    sendgrid_events.dispatcher.wait_idle(3)
    events = receiver.events()
    assert [e["event"] for e in events] == ["delivered", "processed", "bounce"]
    assert events[2]["timestamp"] <= events[0]["timestamp"]  # a stale, replayed event
