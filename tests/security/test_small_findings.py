"""The smaller findings of the security review, each with the case that showed it."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.outreach.entrypoints.http import routes
from services.outreach.studio.security import client_address, parse_networks, safe_next
from tests.integration.outreach.test_studio_http import make_client, sign_in

__all__ = ["make_client"]  # the studio fixture, on SQLite and PostgreSQL


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",  # browsers drop tabs and newlines: //evil.example
        "/\n/evil.example",
        "/\r\n/evil.example/x",
        "/%09/evil.example",  # the same, percent-encoded
        "/ /evil.example",
        "/\\evil.example",
        "https:/evil.example",
        "/templates\x00",
    ],
)
def test_no_redirect_after_sign_in_leaves_the_site(target):
    assert safe_next(target) == "/templates"


def test_paths_of_the_studio_still_work_after_sign_in():
    assert safe_next("/templates/awaiting_pickup/sms/en?version=3") == (
        "/templates/awaiting_pickup/sms/en?version=3"
    )


def test_the_sign_in_throttle_keys_on_the_client_behind_a_trusted_proxy():
    """Behind an Ingress every request comes from the proxy: keying the throttle on it
    let 20 failures lock everyone out. The client is the first address before the
    trusted proxies in X-Forwarded-For; an untrusted peer's header is not believed."""
    proxies = parse_networks("10.0.0.0/8")
    forwarded = {"X-Forwarded-For": "203.0.113.7, 10.1.1.1"}
    assert client_address("10.0.0.5", forwarded, proxies) == "203.0.113.7"
    assert client_address("10.0.0.5", {"X-Forwarded-For": "198.51.100.2"}, proxies) == (
        "198.51.100.2"
    )
    assert client_address("198.51.100.9", forwarded, proxies) == "198.51.100.9"  # spoofed
    assert client_address("10.0.0.5", {}, proxies) == "10.0.0.5"
    spoof = {"X-Forwarded-For": "1.2.3.4, 203.0.113.7"}  # the client wrote the first one
    assert client_address("10.0.0.5", spoof, proxies) == "203.0.113.7"


def test_an_input_field_never_becomes_a_metric_label():
    """A request's message_kind is input: an unknown one is counted as `other`, so a
    producer cannot grow the metric's series without bound."""
    from services.outreach.domain.rendering import metric_kind

    assert metric_kind("delivery_late") == "delivery_late"
    assert metric_kind("x" * 50 + "-anything-a-producer-sends") == "other"


# --- the SendGrid Event Webhook ------------------------------------------------------


@pytest.fixture
def signing_key():
    return ec.generate_private_key(ec.SECP256R1())


def signed(key, payload: str, timestamp: int) -> dict[str, str]:
    signature = key.sign((str(timestamp) + payload).encode(), ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
        "Content-Type": "application/json",
    }


@pytest.fixture
async def webhook(tmp_path, signing_key):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from services.outreach.adapters.contact_plans import StaticContactPlans
    from services.outreach.adapters.providers import OutboxSender
    from services.outreach.bootstrap import bootstrap
    from services.outreach.config import Settings

    public = signing_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'o.db'}",
        data_dir=tmp_path,
        sendgrid_webhook_public_key=base64.b64encode(public).decode(),
    )
    app = bootstrap(settings, plans=StaticContactPlans({}), senders={"email": OutboxSender()})
    await app.start()
    web_app = web.Application()
    web_app.add_routes(routes(app))
    client = TestClient(TestServer(web_app))
    await client.start_server()
    yield client
    await client.close()
    await app.stop()


async def test_a_replayed_signed_batch_older_than_the_tolerance_is_refused(webhook, signing_key):
    payload = json.dumps([{"event": "delivered", "decision_id": "d-1", "email": "a@b.c"}])
    fresh = await webhook.post(
        "/webhooks/sendgrid/events",
        data=payload,
        headers=signed(signing_key, payload, int(time.time())),
    )
    assert fresh.status == 204
    old = int(time.time()) - 3600
    replayed = await webhook.post(
        "/webhooks/sendgrid/events", data=payload, headers=signed(signing_key, payload, old)
    )
    assert replayed.status == 403


@pytest.mark.parametrize(
    "payload",
    ['[1, "x", null, {"event": 5, "decision_id": ["d"]}]', '{"event": "delivered"}', "[]"],
)
async def test_a_malformed_signed_batch_is_answered_not_a_500(webhook, signing_key, payload):
    answer = await webhook.post(
        "/webhooks/sendgrid/events",
        data=payload,
        headers=signed(signing_key, payload, int(time.time())),
    )
    assert answer.status in (204, 400)


# --- the studio ---------------------------------------------------------------------


async def a_sent_message(studio) -> None:
    from datetime import UTC, datetime

    from services.outreach.adapters.ledger import Delivery, DeliveryEvent

    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    row = Delivery(
        decision_id="dec-1", request_id="req-1", customer_id="c-1", order_id="o-1",
        cause_type="incident", cause_id="inc-1", cause_kind="delivery_late", intent="apology",
        message_kind="delivery_late", severity="warning", category="service", status="sent",
        rule="channel: sms", channel="sms", address="+4915112345678", decided_at=at,
        updated_at=at, sent_at=at, attempts=1, fallbacks=[], request={},
        body_text="Hi Ada, use SORRY-7KQ2-MX9P for 15% off", outbox=True,
    )  # fmt: skip
    event = DeliveryEvent(
        event_id="e-1", decision_id="dec-1", customer_id="c-1", status="sent", at=at,
        payload={}, published=True,
    )  # fmt: skip
    assert await studio.ledger.create(row, event)


async def test_a_viewer_sees_why_a_message_was_sent_but_not_what_it_said(make_client):
    client, studio, _ = await make_client()
    await a_sent_message(studio)
    await sign_in(client, studio, "vic", "viewer")
    page = await (await client.get("/outbox")).text()
    assert "c-1" in page and "delivery_late" in page
    assert "SORRY-7KQ2-MX9P" not in page and "Hi Ada" not in page
    editor_client, _, _ = await make_client()
    await sign_in(editor_client, studio, "eda", "editor")
    assert "SORRY-7KQ2-MX9P" in await (await editor_client.get("/outbox")).text()


async def test_an_sso_sign_in_is_audited(make_client):
    client, studio, _ = await make_client(
        studio_trusted_user_header="X-Forwarded-User",
        studio_trusted_role_header="X-Forwarded-Role",
    )
    headers = {"X-Forwarded-User": "carol@shop.example", "X-Forwarded-Role": "publisher"}
    assert (await client.get("/templates", headers=headers)).status == 200
    entries = await studio.accounts.audit_log("carol@shop.example")
    sign_ins = [e for e in entries if e.action == "signed_in"]
    assert [(e.detail.get("via"), e.detail.get("role")) for e in sign_ins] == [("sso", "publisher")]
