"""What an outsider can send to the routes the Ingress exposes — the provider webhooks
and the unsubscribe link — without the providers' keys or our secret. Every forgery is
refused and changes nothing: the ledger's state stays, no one is opted out or back in.
(A signed SendGrid batch replayed after the tolerance: tests/security/test_small_findings.py.)"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.outreach.domain.unsubscribe import token_for
from tests.doubles.callbacks import sendgrid_signature, twilio_signature
from tests.integration.outreach import test_webhooks
from tests.integration.outreach.test_webhooks import post, status_of
from tests.outreach_requests import NOON, request

pytestmark = pytest.mark.integration

app = test_webhooks.app  # outreach's HTTP app with signed webhooks, on a real port
signing_key = test_webhooks.signing_key
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def form(params: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(params).encode()


async def sent(outreach, twilio_double) -> tuple[str, str]:
    await outreach.delivery.on_request(request(), NOON)
    assert await status_of(outreach) == "sent"
    message = twilio_double.messages[0]
    return message["sid"], message["StatusCallback"]


async def test_twilio_forgeries_are_refused_and_change_nothing(app, twilio_double):
    outreach, base = app
    sid, callback = await sent(outreach, twilio_double)
    token = twilio_double.auth_token
    failed = {"MessageSid": sid, "MessageStatus": "failed", "AccountSid": "AC1"}
    stop = {"From": "+447911123456", "To": "+15005550006", "Body": "STOP", "MessageSid": "SM1"}
    inbound = f"{base}/webhooks/twilio/inbound"
    forgeries = {
        "unsigned status": (callback, form(failed), FORM),
        "made-up signature": (callback, form(failed), {**FORM, "X-Twilio-Signature": "Zm9v"}),
        "signed with another token": (
            callback, form(failed),
            {**FORM, "X-Twilio-Signature": twilio_signature("x" * 32, callback, failed)},
        ),
        "a signed body, altered": (
            callback, form({**failed, "MessageStatus": "undelivered"}),
            {**FORM, "X-Twilio-Signature": twilio_signature(token, callback, failed)},
        ),
        "signed for another URL": (
            callback, form(failed),
            {**FORM, "X-Twilio-Signature": twilio_signature(token, inbound, failed)},
        ),
        "unsigned STOP": (inbound, form(stop), FORM),
        "STOP signed for the status URL": (
            inbound, form(stop),
            {**FORM, "X-Twilio-Signature": twilio_signature(token, callback, stop)},
        ),
        "START signed with another token": (
            inbound, form({**stop, "Body": "START"}),
            {**FORM, "X-Twilio-Signature": twilio_signature("y" * 32, inbound, stop)},
        ),
    }  # fmt: skip
    for name, (url, body, headers) in forgeries.items():
        assert await asyncio.to_thread(post, url, body, headers) == 403, name
    assert await status_of(outreach) == "sent"
    assert outreach.delivery.optouts.seen == []
    # The genuine callback still works after all that.
    assert await asyncio.to_thread(twilio_double.deliver_status, sid, "delivered") == 204
    assert await status_of(outreach) == "delivered"


async def test_sendgrid_forgeries_are_refused_and_change_nothing(app, signing_key):
    outreach, base = app
    await outreach.delivery.on_request(request(), NOON)
    row = await outreach.ledger.by_request("req-1")
    url = f"{base}/webhooks/sendgrid/events"
    now = str(int(time.time()))
    batch = json.dumps(
        [
            {"event": "bounce", "decision_id": row.decision_id, "timestamp": int(now)},
            {"event": "spamreport", "decision_id": row.decision_id, "timestamp": int(now)},
        ]
    )
    other_key = ec.generate_private_key(ec.SECP256R1())

    def headers(signature: str, stamp: str = now) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "X-Twilio-Email-Event-Webhook-Signature": signature,
        }

    genuine = sendgrid_signature(signing_key, now, batch)
    forgeries = {
        "unsigned": (batch, {"Content-Type": "application/json"}),
        "signed by another key": (batch, headers(sendgrid_signature(other_key, now, batch))),
        "a signed batch, altered": (batch.replace("bounce", "dropped"), headers(genuine)),
        "signature moved to another time": (batch, headers(genuine, str(int(now) + 1))),
        "not base64": (batch, headers("%%%")),
    }
    for name, (body, sent_headers) in forgeries.items():
        assert await asyncio.to_thread(post, url, body.encode(), sent_headers) == 403, name
    assert await status_of(outreach) == "sent"
    assert outreach.delivery.optouts.seen == []


async def test_an_unsubscribe_link_cannot_be_forged_or_turned_on_someone_else(app):
    outreach, base = app
    secret = outreach.delivery.links.unsubscribe_secret
    mine = token_for("c-1", "email", "d-1", secret)
    body, mac = mine.split(".", 1)
    theirs = token_for("c-2", "email", "d-1", secret).split(".", 1)[0]
    forgeries = {
        "made up": token_for("c-2", "email", "d-1", "not-our-secret"),
        "another customer's payload, my signature": f"{theirs}.{mac}",
        "no signature": body,
        "garbage": "%%%.%%%",
        "empty": "",
    }
    for name, token in forgeries.items():
        url = f"{base}/unsubscribe?" + urllib.parse.urlencode({"token": token})
        assert await asyncio.to_thread(post, url, b"", {}) == 400, name
    assert outreach.delivery.optouts.seen == []
    url = f"{base}/unsubscribe?" + urllib.parse.urlencode({"token": mine})
    assert await asyncio.to_thread(post, url, b"", {}) == 200
    assert outreach.delivery.optouts.seen == [("out", "c-1", "email", "email_unsubscribe")]
