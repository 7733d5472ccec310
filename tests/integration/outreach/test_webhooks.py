"""Provider webhooks against a running HTTP app: signed callbacks move the ledger and
record opt-outs; forged or unsigned ones get 403 and change nothing."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from datetime import time as dtime

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.adapters.providers import SendGridEmailSender, TwilioMessageSender
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from services.outreach.domain.decisions import ChannelOption, ContactPlan
from services.outreach.entrypoints.http import routes
from tests.conftest import free_port
from tests.outreach_requests import NOON, request

pytestmark = pytest.mark.integration


@pytest.fixture
def signing_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def app(tmp_path, twilio_double, sendgrid_double, signing_key):
    port = free_port()
    public = signing_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'o.db'}",
        data_dir=tmp_path,
        public_base_url=f"http://127.0.0.1:{port}",
        twilio_account_sid=twilio_double.account_sid,
        twilio_auth_token=twilio_double.auth_token,
        sendgrid_webhook_public_key=base64.b64encode(public).decode(),
    )
    senders = {
        "sms": TwilioMessageSender(
            twilio_double.account_sid,
            twilio_double.auth_token,
            from_number="+15005550006",
            whatsapp_from=None,
            base_url=twilio_double.base_url,
        ),
        "email": SendGridEmailSender(
            sendgrid_double.api_key, "care@shop.example", base_url=sendgrid_double.base_url
        ),
    }
    plans = StaticContactPlans(
        {
            ("c-1", "*"): ContactPlan(
                customer_id="c-1",
                known=True,
                first_name="Ada",
                locale="en-GB",
                time_zone="Europe/London",
                quiet_start=dtime(21),
                quiet_end=dtime(8),
                marketing_opt_in=False,
                channels=(
                    ChannelOption("sms", "+447911123456", True, "ok"),
                    ChannelOption("email", "ada@example.com", True, "ok"),
                ),
            )
        }
    )
    outreach = bootstrap(settings, plans=plans, senders=senders, optouts=RecordingOptOuts())
    await outreach.start()
    application = web.Application()
    application.add_routes(routes(outreach))
    runner = web.AppRunner(application)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield outreach, f"http://127.0.0.1:{port}"
    await runner.cleanup()
    await outreach.stop()


def post(url: str, data: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def status_of(outreach, rid="req-1"):
    return (await outreach.ledger.by_request(rid)).status


async def test_twilio_status_callback_marks_delivered_and_a_forged_one_is_refused(
    app, twilio_double
):
    import asyncio

    outreach, base = app
    await outreach.delivery.on_request(request(), NOON)
    assert await status_of(outreach) == "sent"
    sid = twilio_double.messages[0]["sid"]
    assert twilio_double.messages[0]["StatusCallback"].startswith(base)

    forged = urllib.parse.urlencode({"MessageSid": sid, "MessageStatus": "failed"}).encode()
    code = await asyncio.to_thread(
        post,
        twilio_double.messages[0]["StatusCallback"],
        forged,
        {"X-Twilio-Signature": "bm90LWEtc2lnbmF0dXJl"},
    )
    assert code == 403 and await status_of(outreach) == "sent"

    assert await asyncio.to_thread(twilio_double.deliver_status, sid, "delivered") == 204
    assert await status_of(outreach) == "delivered"


async def test_sendgrid_signed_events_deliver_and_unsubscribe_forgeries_refused(app, signing_key):
    import asyncio

    outreach, base = app
    outreach.delivery.plans.plans[("c-1", "*")] = ContactPlan(
        customer_id="c-1",
        known=True,
        first_name="Ada",
        locale="en",
        time_zone="UTC",
        quiet_start=dtime(21),
        quiet_end=dtime(8),
        marketing_opt_in=False,
        channels=(ChannelOption("email", "ada@example.com", True, "ok"),),
    )
    await outreach.delivery.on_request(request(), NOON)
    row = await outreach.ledger.by_request("req-1")
    events = json.dumps(
        [
            {
                "email": "ada@example.com",
                "event": "delivered",
                "decision_id": row.decision_id,
                "sg_message_id": "abc",
                "timestamp": int(time.time()),
            },
            {
                "email": "ada@example.com",
                "event": "unsubscribe",
                "decision_id": row.decision_id,
                "timestamp": int(time.time()),
            },
        ]
    )
    stamp = str(int(datetime.now(UTC).timestamp()))
    signature = base64.b64encode(
        signing_key.sign((stamp + events).encode(), ec.ECDSA(hashes.SHA256()))
    ).decode()
    url = f"{base}/webhooks/sendgrid/events"
    headers = {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": stamp}
    forged = await asyncio.to_thread(
        post,
        url,
        events.replace("delivered", "bounce").encode(),
        {**headers, "X-Twilio-Email-Event-Webhook-Signature": signature},
    )
    assert forged == 403 and await status_of(outreach) == "sent"
    assert await asyncio.to_thread(post, url, events.encode(), headers) == 403
    ok = await asyncio.to_thread(
        post, url, events.encode(), {**headers, "X-Twilio-Email-Event-Webhook-Signature": signature}
    )
    assert ok == 204 and await status_of(outreach) == "delivered"
    assert outreach.delivery.optouts.seen == [("out", "c-1", "email", "email_unsubscribe")]
