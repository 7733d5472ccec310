"""The studio's conversation view over what really happened, on SQLite and PostgreSQL and
the real broker: a message sent through the official Twilio SDK, the customer's angry
SMS reply through the signed inbound webhook, its hand-off (and one from the churn-risk
score) kept from `support.handoffs` by the worker's own consumer, the agent's "solved"
from `support.resolutions` — then one customer's timeline as a support lead, an editor
and a viewer see it. Only what the pages show and what the stores hold are checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.admin import ensure_topics
from common.envelope import new_event
from common.kafka import DeadLetters, Outgoing
from common.ops_http import Heartbeat
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.conversations import HandoffStore, ReplyStore
from services.outreach.adapters.db import session_factory
from services.outreach.adapters.providers import TwilioMessageSender
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from services.outreach.domain.decisions import ChannelOption, ContactPlan
from services.outreach.entrypoints.http import routes
from services.outreach.entrypoints.inputs import own_topics
from services.outreach.entrypoints.records import handoff_records
from services.outreach.studio.accounts import Accounts
from services.outreach.studio.app import create_app
from services.outreach.studio.context import Studio
from services.outreach.studio.security import LoginThrottle
from tests.conftest import free_port
from tests.integration.outreach.test_studio_http import sign_in
from tests.outreach_requests import NOON, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NUMBER = "+4915100000002"
ANGRY = "Das ist eine FRECHHEIT, SCHON WIEDER zu spät!!"


@pytest.fixture
async def world(database_url, tmp_path, twilio_double, kafka_bootstrap, topic_prefix):
    port = free_port()
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        public_base_url=f"http://127.0.0.1:{port}",
        twilio_account_sid=twilio_double.account_sid,
        twilio_auth_token=twilio_double.auth_token,
    )
    ensure_topics(kafka_bootstrap, own_topics(settings, False))
    sms = TwilioMessageSender(
        twilio_double.account_sid, twilio_double.auth_token,
        from_number="+15005550006", whatsapp_from=None, base_url=twilio_double.base_url,
    )  # fmt: skip
    plan = ContactPlan(
        customer_id="c-de", known=True, first_name="Kim", locale="de-DE",
        time_zone="Europe/Berlin", quiet_start=dtime(21), quiet_end=dtime(8),
        marketing_opt_in=False, channels=(ChannelOption("sms", NUMBER, True, "ok"),),
    )  # fmt: skip
    outreach = bootstrap(
        settings, plans=StaticContactPlans({("c-de", "*"): plan}), senders={"sms": sms}
    )
    await outreach.start()
    await outreach.producer.start()
    deadletters = DeadLetters(outreach.producer, settings.topics.deadletter("outreach"), "outreach")
    records = handoff_records(settings, outreach, Heartbeat(), deadletters)
    await records.start()
    consuming = asyncio.create_task(records.run())
    hooks = web.Application()
    hooks.add_routes(routes(outreach))
    runner = web.AppRunner(hooks)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    sessions = session_factory(outreach.engine)
    studio = Studio(
        settings=settings, store=outreach.templates, ledger=outreach.ledger,
        accounts=Accounts(sessions), senders={}, throttle=LoginThrottle(5, 300),
        renderer=InlineRenderer(), replies=ReplyStore(sessions), handoffs=HandoffStore(sessions),
    )  # fmt: skip
    yield outreach, f"http://127.0.0.1:{port}", studio
    await records.stop()
    consuming.cancel()
    await asyncio.gather(consuming, return_exceptions=True)
    await runner.cleanup()
    await outreach.producer.stop()
    await outreach.stop()


async def as_role(studio: Studio, role: str) -> TestClient:
    client = TestClient(TestServer(create_app(studio)))
    await client.start_server()
    await sign_in(client, studio, f"{role}-1", role)
    return client


async def page(client: TestClient, path: str) -> str:
    answer = await client.get(path)
    assert answer.status == 200, (path, answer.status)
    return await answer.text()


async def eventually(check, timeout_s: float = 30.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.2)
    return found


def handoff_event(kind: str, data: dict, at: datetime):
    return new_event(
        type=f"support.handoff.{kind}", source="/test/support", subject=data["customer_id"],
        data=data, time=at, id=f"{kind}-{data['handoff_id']}",
    )  # fmt: skip


async def test_one_customers_timeline_as_each_role_sees_it(world, twilio_double):
    outreach, base, studio = world
    topics = outreach.settings.topics
    await outreach.delivery.on_request(request("r-1", customer="c-de", at=NOON), NOON)
    sent = await outreach.ledger.by_request("r-1")
    assert sent is not None and sent.status == "sent" and sent.body_text
    status, _ = await asyncio.to_thread(
        twilio_double.inbound, f"{base}/webhooks/twilio/inbound", NUMBER, ANGRY
    )
    assert status == 200
    # The reply's hand-off comes back from the topic; the churn score hands off too, and
    # the agent solves the first (the resolution may even overtake a request).
    (mine,) = await eventually(lambda: studio.handoffs.of_customer("c-de"))
    later = datetime.now(UTC) + timedelta(minutes=5)
    risk = {"handoff_id": "risk-c-de-1", "customer_id": "c-de", "risk_score": 0.91,
            "reasons": [{"code": "repeat_incidents", "detail": "3 incidents in 30 days"}],
            "summary": "Kim had three incidents this month", "trigger": "risk_score"}  # fmt: skip
    solved = {"handoff_id": mine.handoff_id, "customer_id": "c-de", "outcome": "solved",
              "resolved_at": later.isoformat(), "agent": "Alex", "ticket_id": "4711"}  # fmt: skip
    await outreach.producer.emit("test", [
        Outgoing(topics.resolutions, "c-de", handoff_event("resolved", solved, later)),
        Outgoing(topics.handoffs, "c-de", handoff_event("requested", risk, later)),
        Outgoing(topics.resolutions, "c-de", handoff_event("resolved", solved, later)),  # again
    ])  # fmt: skip

    async def both_kept():
        rows = await studio.handoffs.of_customer("c-de")
        return rows if len(rows) == 2 and rows[0].outcome == "solved" else None

    first, second = await eventually(both_kept)
    assert (first.trigger, first.agent, second.trigger, second.outcome) == (
        "reply", "Alex", "risk_score", None,
    )  # fmt: skip

    support, editor, viewer = [await as_role(studio, r) for r in ("support", "editor", "viewer")]
    try:
        listed = await page(viewer, "/conversations")
        assert 'href="/conversations/c-de"' in listed
        found = await viewer.get("/conversations?q=o-1", allow_redirects=False)
        assert found.headers["Location"] == "/conversations/c-de"  # by order id

        full = await page(support, "/conversations/c-de")
        for shown in (ANGRY.replace("!!", ""), sent.body_text.splitlines()[0], NUMBER,
                      "beschwert sich", "Kim had three incidents", "solved", "Alex",
                      "complaint, angry", "frechheit", "0.91"):  # fmt: skip
            assert shown in full, shown
        audit = [(a.actor, a.action, a.target) for a in await studio.accounts.audit_log()]
        assert ("support-1", "viewed_conversation", "c-de") in audit

        masked = await page(viewer, "/conversations/c-de")
        for why in ("complaint, angry", "frechheit", "solved", "0.91", "delivery_late"):
            assert why in masked, why
        # The lexicon's words decide and are shown; the customer's own are not (the
        # shouted ones quoted in the evidence included).
        secrets = ("Das ist eine", "SCHON WIEDER", sent.body_text.splitlines()[0], NUMBER,
                   "beschwert sich", "Kim had three")  # fmt: skip
        for secret in secrets:
            assert secret not in masked, secret
        assert "hidden for your role" in masked and "+49***02" in masked  # masked, not gone

        edited = await page(editor, "/conversations/c-de")
        assert sent.body_text.splitlines()[0] in edited and "Das ist eine" not in edited
        audit = [(a.actor, a.action) for a in await studio.accounts.audit_log()]
        assert ("viewer-1", "viewed_conversation") not in audit  # nothing personal shown

        # An erasure takes the customer's words and the hand-offs from the view.
        erased = new_event(
            type="customer.erased", source="/test/shop", subject="c-de",
            data={"customer_id": "c-de"}, time=later,
            id="erase-c-de",
        )  # fmt: skip
        await outreach.delivery.on_customer_event(erased)
        await outreach.conversations.on_customer_event(erased)
        after = await page(support, "/conversations/c-de")
        assert "Das ist eine" not in after and "Kim had three" not in after and NUMBER not in after
        assert await studio.handoffs.of_customer("c-de") == []
        # The hand-off read again from the topic later (a lagging or new consumer group)
        # does not bring the summary back.
        await outreach.conversations.on_handoff_event(handoff_event("requested", risk, later))
        assert await studio.handoffs.of_customer("c-de") == []
    finally:
        for client in (support, editor, viewer):
            await client.close()
