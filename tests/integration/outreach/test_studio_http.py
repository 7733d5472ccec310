"""The studio over HTTP on SQLite and a real PostgreSQL: security headers, the trusted
proxy (SSO) mode, CSRF on every change, idempotent test sends."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.outreach.adapters import ledger as _ledger  # noqa: F401 - registers tables
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Ledger
from services.outreach.adapters.providers import RecordingSender
from services.outreach.adapters.render_pool import InlineRenderer, Renderer
from services.outreach.adapters.templates import TemplateStore
from services.outreach.config import Settings
from services.outreach.studio.accounts import Accounts
from services.outreach.studio.app import create_app
from services.outreach.studio.context import Studio
from services.outreach.studio.security import LoginThrottle

pytestmark = pytest.mark.integration

SMS = "/templates/awaiting_pickup/sms/en"


@pytest.fixture
async def make_client(database_url, tmp_path):
    engines, clients = [], []

    async def make(
        renderer: Renderer | None = None, **settings: object
    ) -> tuple[TestClient, Studio, RecordingSender]:
        engine = create_engine(database_url)
        engines.append(engine)
        sessions = session_factory(engine)
        from services.outreach.studio import accounts as _accounts  # noqa: F401

        await create_schema(engine)
        sender = RecordingSender()
        studio = Studio(
            settings=Settings(data_dir=tmp_path, **settings),  # type: ignore[arg-type]
            store=TemplateStore(sessions, renderer=renderer or InlineRenderer()),
            ledger=Ledger(sessions),
            accounts=Accounts(sessions, session_lifetime=timedelta(hours=1)),
            senders={"email": sender, "sms": sender, "whatsapp": sender},
            throttle=LoginThrottle(5, 300),
            renderer=renderer or InlineRenderer(),
            replies=ReplyStore(sessions),
            handoffs=HandoffStore(sessions),
        )
        await studio.store.seed_defaults()
        client = TestClient(TestServer(create_app(studio)))
        await client.start_server()
        clients.append(client)
        return client, studio, sender

    yield make
    for client in clients:
        await client.close()
    for engine in engines:
        await engine.dispose()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert found, html[:500]
    return found.group(1)


async def sign_in(client: TestClient, studio: Studio, user: str, role: str) -> None:
    await studio.accounts.create_user(user, "a long enough password", role)
    page = await client.get("/login")
    token = csrf_of(await page.text())
    done = await client.post(
        "/login",
        data={"csrf_token": token, "username": user, "password": "a long enough password"},
        allow_redirects=False,
    )
    assert done.status == 303, await done.text()


async def test_every_page_carries_security_headers_and_cookies_are_locked_down(make_client):
    client, studio, _ = await make_client(studio_secure_cookies=True)
    login = await client.get("/login")
    assert "default-src 'self'" in login.headers["Content-Security-Policy"]
    assert login.headers["X-Frame-Options"] == "DENY"
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    redirect = await client.get("/templates", allow_redirects=False)
    assert redirect.status == 303 and redirect.headers["Location"].startswith("/login?next=")


async def test_no_route_answers_a_caller_who_has_not_signed_in(make_client):
    """Every route the studio has, filled in and called without a session: pages send
    to the sign-in page, changes are refused, and nothing is changed or sent."""
    client, studio, sender = await make_client()
    public = {"/login", "/favicon.ico", "/livez", "/readyz", "/healthz"}
    values = {"kind": "awaiting_pickup", "channel": "sms", "locale": "en", "version": "1",
              "customer_id": "c-1", "storm_id": "st-1", "rehearsal_id": "1"}  # fmt: skip

    async def versions() -> list[tuple[int, str, str]]:
        found = await studio.store.versions("awaiting_pickup", "sms", "en")
        return [(v.version, v.status, v.text) for v in found]

    before = await versions()
    seen = 0
    for route in client.server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "prefix" in info:  # the static assets: public by design
            continue
        template = info.get("formatter") or info.get("path")
        path = template.format(**values)
        if path in public or route.method == "HEAD":
            continue
        seen += 1
        if route.method == "GET":
            answer = await client.get(path, allow_redirects=False)
            assert answer.status == 303, path
            assert answer.headers["Location"].startswith("/login?next="), path
        else:
            answer = await client.request(
                route.method,
                path,
                data={"text": "owned", "action": "publish"},
                allow_redirects=False,
            )
            assert answer.status == 401, (route.method, path)
    assert seen >= 12
    assert await versions() == before
    assert sender.sent == []
    # Metrics are not the public's either: the studio serves them on its ops port only.
    assert (await client.get("/metrics", allow_redirects=False)).status == 303


async def test_trusted_proxy_headers_sign_in_with_the_role_they_carry(make_client):
    client, studio, _ = await make_client(
        studio_trusted_user_header="X-Forwarded-User",
        studio_trusted_role_header="X-Forwarded-Role",
    )
    headers = {"X-Forwarded-User": "carol@shop.example", "X-Forwarded-Role": "editor"}
    page = await client.get(SMS, headers=headers)
    assert page.status == 200
    html = await page.text()
    assert "carol@shop.example" in html and "Save draft" in html and ">Publish<" not in html
    # Changes still need the CSRF token of the session the proxy sign-in opened.
    refused = await client.post(SMS, data={"text": "x", "action": "save"}, headers=headers)
    assert refused.status == 403
    saved = await client.post(
        SMS,
        data={
            "csrf_token": csrf_of(html),
            "text": "Hi {{ customer.first_name }}",
            "action": "save",
        },
        headers=headers,
        allow_redirects=False,
    )
    assert saved.status == 303
    versions = await studio.store.versions("awaiting_pickup", "sms", "en")
    assert versions[-1].author == "carol@shop.example" and versions[-1].status == "draft"
    # A viewer by the proxy's word cannot save.
    viewer = {"X-Forwarded-User": "dan", "X-Forwarded-Role": "viewer"}
    page = await client.get(SMS, headers=viewer)
    token = csrf_of(await page.text())
    denied = await client.post(
        SMS, data={"csrf_token": token, "text": "y", "action": "save"}, headers=viewer
    )
    assert denied.status == 403


async def test_proxy_headers_from_an_untrusted_address_are_ignored(make_client):
    client, _, _ = await make_client(
        studio_trusted_user_header="X-Forwarded-User", studio_trusted_proxies="10.0.0.0/8"
    )
    page = await client.get(SMS, headers={"X-Forwarded-User": "mallory"}, allow_redirects=False)
    assert page.status == 303 and page.headers["Location"].startswith("/login")


async def test_a_test_send_form_sent_twice_sends_once(make_client):
    client, studio, sender = await make_client()
    await sign_in(client, studio, "eve", "editor")
    page = await client.get(SMS)
    html = await page.text()
    send_key = re.search(r'name="send_key" value="([^"]+)"', html).group(1)
    form = {
        "csrf_token": csrf_of(html),
        "send_key": send_key,
        "text": "Hi {{ customer.first_name }}",
        "to": "+44 7911 123456",
    }
    for _ in range(2):
        done = await client.post(SMS + "/test-send", data=form, allow_redirects=False)
        assert done.status == 303
    assert len(sender.sent) == 1
    message = sender.sent[0]
    assert message.test and message.to == "+447911123456" and message.text == "[TEST] Hi Ada"
    audit = await studio.accounts.audit_log("test_sent")
    assert len(audit) == 1 and "123456" not in str(audit[0].detail)


async def test_preview_api_needs_the_csrf_header(make_client):
    client, studio, _ = await make_client()
    await sign_in(client, studio, "vic", "viewer")
    page = await client.get(SMS)
    body = {"kind": "awaiting_pickup", "channel": "sms", "locale": "en", "text": "Hi"}
    assert (await client.post("/api/preview", json=body)).status == 403
    ok = await client.post(
        "/api/preview", json=body, headers={"X-CSRF-Token": csrf_of(await page.text())}
    )
    assert ok.status == 200 and (await ok.json())["text"] == "Hi"


async def test_editors_rehearse_a_draft_and_only_roles_that_see_messages_read_its_samples(
    make_client,
):
    client, studio, _ = await make_client()
    await sign_in(client, studio, "eve", "editor")
    token = csrf_of(await (await client.get(SMS)).text())
    form = {
        "csrf_token": token,
        "text": "Hi {{ customer.first_name }}, REHEARSED",
        "action": "save",
    }
    assert (await client.post(SMS, data=form, allow_redirects=False)).status == 303
    published, draft = await studio.store.versions("awaiting_pickup", "sms", "en")
    page = await (await client.get(f"{SMS}?version={draft.version}")).text()
    assert "Rehearse this draft on the last N days" in page

    async def rehearse(version: int, days: str) -> tuple[int, str]:
        answer = await client.post(f"{SMS}/versions/{version}/rehearse", allow_redirects=False,
                                   data={"csrf_token": token, "days": days})  # fmt: skip
        return answer.status, answer.headers.get("Location", await answer.text())

    status, said = await rehearse(published.version, "7")
    assert status == 422 and "only a draft is rehearsed" in said
    status, said = await rehearse(draft.version, "31")
    assert status == 422 and "1 to 30 days" in said
    assert await rehearse(draft.version, "7") == (303, "/rehearsals/1?flash=rehearsal_started")
    row = await studio.rehearsals.get(1)
    assert row is not None and row.status == "queued" and row.template_version_id == draft.id
    assert row.until - row.since == timedelta(days=7)
    audit = await studio.accounts.audit_log("rehearsal_started")
    assert [(e.actor, e.target, e.detail["version"]) for e in audit] == [
        ("eve", "awaiting_pickup/sms/en", draft.version)
    ]
    assert 'http-equiv="refresh"' in await (await client.get("/rehearsals/1")).text()

    sample = {"message_kind": "awaiting_pickup", "locale": "en", "channel": "sms",
              "subject": None, "text": "Hi Ann, REHEARSED"}  # fmt: skip
    async with studio.accounts.sessions() as s, s.begin():
        stored = await s.get(type(row), 1)
        stored.status = "done"
        stored.report = {"customers_reached": 1, "messages": 1, "samples": [sample]}
    shown = await (await client.get("/rehearsals/1")).text()
    assert "Hi Ann, REHEARSED" in shown and 'http-equiv="refresh"' not in shown
    await sign_in(client, studio, "vic", "viewer")
    listed = await (await client.get("/rehearsals")).text()
    assert "awaiting_pickup/sms/en v2" in listed and "1 (1 messages)" in listed
    seen = await (await client.get("/rehearsals/1")).text()
    assert "<strong>1</strong> customer," in seen and "Hi Ann, REHEARSED" not in seen
    refused = await client.post(f"{SMS}/versions/{draft.version}/rehearse",
                                data={"csrf_token": csrf_of(seen), "days": "7"})  # fmt: skip
    assert refused.status == 403
