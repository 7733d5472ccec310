"""The outreach pipeline on a real ledger (SQLite and PostgreSQL), sending through the
official SendGrid and Twilio SDKs to the local provider doubles."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from common.clock import FixedClock
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.adapters.providers import (
    OutboxSender,
    SendGridEmailSender,
    TwilioMessageSender,
)
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from services.outreach.domain.decisions import ChannelOption
from services.outreach.entrypoints.http import routes
from tests.outreach_requests import EMAIL, NIGHT, NOON, SMS, plan, request, resolved

pytestmark = pytest.mark.integration
WALL = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)  # the fixture's wall clock, at first


@pytest.fixture
async def outreach(database_url, tmp_path, twilio_double, sendgrid_double):
    settings = Settings(
        database_url=database_url, data_dir=tmp_path, public_base_url="http://127.0.0.1:9"
    )
    senders = {
        "email": SendGridEmailSender(
            sendgrid_double.api_key, "care@shop.example", base_url=sendgrid_double.base_url
        ),
        "sms": TwilioMessageSender(
            twilio_double.account_sid,
            twilio_double.auth_token,
            from_number="+15005550006",
            whatsapp_from=None,
            base_url=twilio_double.base_url,
        ),
    }
    senders["whatsapp"] = OutboxSender()
    plans = StaticContactPlans({("c-1", "*"): plan(EMAIL, SMS)})
    # Leases and the ramp run in wall time: a clock the tests move.
    app = bootstrap(
        settings, plans=plans, senders=senders, wall=FixedClock(WALL), optouts=RecordingOptOuts()
    )
    await app.start()
    yield app
    await app.stop()


async def statuses(app, rid="req-1"):
    row = await app.ledger.by_request(rid)
    return row, [e.status for e in await app.ledger.events_of(row.decision_id)]


async def test_an_apology_email_through_the_sendgrid_sdk_in_german(outreach, sendgrid_double):
    await outreach.delivery.on_request(request(), NOON)
    row, history = await statuses(outreach)
    assert row.status == "sent" and history == ["decided", "sending", "sent"]
    mail = sendgrid_double.messages[0]["json"]
    text = " ".join(c["value"] for c in mail["content"])
    assert "Hallo Ada" in text and "Samstag, 7. März 2026" in text
    assert mail["custom_args"]["decision_id"] == row.decision_id
    assert mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [c["type"] for c in mail["content"]] == ["text/plain", "text/html"]
    assert row.template_version == 1 and row.provider_message_id


async def test_the_same_request_twice_sends_one_message(outreach, sendgrid_double):
    await outreach.delivery.on_request(request(), NOON)
    await outreach.delivery.on_request(request(), NOON)
    assert len(sendgrid_double.messages) == 1


async def test_429_is_retried_later_honouring_retry_after(outreach, sendgrid_double):
    sendgrid_double.fail_next(1, status=429, retry_after=30)
    await outreach.delivery.on_request(request(), NOON)
    row, _ = await statuses(outreach)
    assert row.status == "scheduled" and row.send_at >= NOON + timedelta(seconds=30)
    assert await outreach.delivery.send_due(NOON + timedelta(seconds=10)) == 0
    await outreach.delivery.send_due(NOON + timedelta(minutes=1))
    row, _ = await statuses(outreach)
    assert row.status == "sent" and len(sendgrid_double.messages) == 1


async def test_an_invalid_number_falls_back_to_email(outreach, twilio_double, sendgrid_double):
    outreach.plans.plans[("c-1", "*")] = plan(ChannelOption("sms", "+4900000", True, "ok"), EMAIL)
    await outreach.delivery.on_request(request(), NOON)
    row, history = await statuses(outreach)
    assert row.status == "sent" and row.channel == "email"
    assert "failed" in history and len(sendgrid_double.messages) == 1
    assert twilio_double.messages == []


async def test_an_unsubscribed_number_is_recorded_as_an_opt_out(outreach, twilio_double):
    twilio_double.opted_out.add("+4915112345678")
    outreach.plans.plans[("c-1", "*")] = plan(SMS)
    await outreach.delivery.on_request(request(), NOON)
    row, _ = await statuses(outreach)
    optouts = outreach.delivery.optouts
    seen = [(c, ch) for _, c, ch, _ in optouts.seen]
    assert row.status == "failed" and seen == [("c-1", "sms")]
    assert optouts.evidence == ["21610"]


async def test_sms_at_night_waits_for_8_local_and_is_suppressed_if_resolved_meanwhile(
    outreach, twilio_double
):
    outreach.plans.plans[("c-1", "*")] = plan(SMS, EMAIL)
    await outreach.delivery.on_request(request(at=NIGHT), NIGHT)
    row, _ = await statuses(outreach)
    assert row.status == "scheduled" and row.send_at == datetime(2026, 3, 5, 7, 0, tzinfo=UTC)
    await outreach.delivery.on_request(request("req-2", cause="inc-2", at=NIGHT), NIGHT)
    await outreach.delivery.on_incident(
        resolved("inc-1", NIGHT + timedelta(hours=2)), NIGHT + timedelta(hours=2)
    )
    await outreach.delivery.send_due(datetime(2026, 3, 5, 7, 0, tzinfo=UTC))
    first, _ = await statuses(outreach)
    second, _ = await statuses(outreach, "req-2")
    assert (first.status, first.reason) == ("suppressed", "already_resolved")
    assert second.status == "sent" and len(twilio_double.messages) == 1
    assert "Ada" in twilio_double.messages[0]["Body"]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda o: o.plans.plans.clear(), "no_contact"),
        (
            lambda o: o.plans.plans.__setitem__(
                ("c-1", "*"), plan(ChannelOption("sms", "+4915112345678", False, "opted_out"))
            ),
            "opted_out",
        ),
    ],
)
async def test_suppressions_are_recorded_with_their_reason(outreach, setup, reason):
    setup(outreach)
    await outreach.delivery.on_request(request(), NOON)
    row, history = await statuses(outreach)
    assert (row.status, row.reason, history) == ("suppressed", reason, ["suppressed"])


async def test_marketing_check_in_needs_consent_and_offers_are_deterministic(
    outreach, sendgrid_double
):
    await outreach.delivery.on_request(
        request("req-m", kind="churn_risk", intent="check_in", offer="standard"), NOON
    )
    row, _ = await statuses(outreach, "req-m")
    assert (row.status, row.reason) == ("suppressed", "no_consent")
    outreach.plans.plans[("c-1", "*")] = plan(EMAIL, opt_in=True)
    await outreach.delivery.on_request(
        request("req-n", kind="churn_risk", intent="check_in", offer="standard"), NOON
    )
    text = " ".join(c["value"] for c in sendgrid_double.messages[0]["json"]["content"])
    assert "SORRY-" in text


async def test_frequency_cap_three_in_seven_days_critical_bypasses(outreach, sendgrid_double):
    for i in range(4):
        await outreach.delivery.on_request(request(f"r{i}", cause=f"c{i}"), NOON)
    fourth, _ = await statuses(outreach, "r3")
    assert (fourth.status, fourth.reason) == ("suppressed", "frequency_cap")
    await outreach.delivery.on_request(
        request("crit", cause="cx", severity="critical", kind="carrier_exception"), NOON
    )
    crit, _ = await statuses(outreach, "crit")
    assert crit.status == "sent" and len(sendgrid_double.messages) == 4


# --- the kill switch ------------------------------------------------------------------


async def test_a_pause_holds_decisions_and_a_resume_with_a_ramp_releases_them_gradually(
    outreach, twilio_double, sendgrid_double
):
    outreach.controls.now = outreach.wall.now
    watcher = outreach.controls_watcher
    watcher.full_rate_per_s = 0.5  # a floor of 0.05/s: easy to count

    await outreach.controls.pause("all", actor="oncall", reason="provider incident")
    await watcher.refresh()
    # Three customers (one customer's would leave as one message: consolidation).
    for i in range(3):
        customer = f"c-{i}"
        outreach.plans.plans[(customer, "*")] = replace(plan(EMAIL, SMS), customer_id=customer)
        await outreach.delivery.on_request(
            request(f"req-{i}", cause=f"inc-{i}", customer=customer), NOON + timedelta(minutes=i)
        )
    rows = await outreach.ledger.history()
    assert {r.status for r in rows} == {"scheduled"} and len(rows) == 3
    assert all(r.rule.startswith("paused") and r.send_at is None for r in rows)
    counts = await outreach.ledger.count_by_status()
    assert counts["held"] == 3 and counts["scheduled"] == 0 and counts["sent"] == 0
    await outreach.delivery.send_due(NOON + timedelta(minutes=5))
    assert not sendgrid_double.messages  # still held

    await outreach.controls.resume("all", actor="oncall", ramp_minutes=10)
    await watcher.refresh()
    await outreach.delivery.send_due(NOON + timedelta(minutes=6))
    assert len(sendgrid_double.messages) == 1  # the ramp starts with one
    await outreach.delivery.send_due(NOON + timedelta(minutes=6))
    assert len(sendgrid_double.messages) == 1  # nothing earned yet
    outreach.wall.set(WALL + timedelta(minutes=11))  # the ramp is over: the rest goes
    await outreach.delivery.send_due(NOON + timedelta(minutes=7))
    assert len(sendgrid_double.messages) == 3
    counts = await outreach.ledger.count_by_status()
    assert (counts["held"], counts["sent"]) == (0, 3)
    history = await outreach.controls.history()
    assert [(h.action, h.actor) for h in history] == [("resume", "oncall"), ("pause", "oncall")]


async def test_pausing_one_intent_leaves_the_others_sending(outreach, sendgrid_double):
    await outreach.controls.pause("check_in", actor="marketing", reason="offer typo")
    await outreach.controls_watcher.refresh()
    await outreach.delivery.on_request(
        request("req-c", kind="churn_risk", intent="check_in", cause="risk-1"), NOON
    )
    await outreach.delivery.on_request(request("req-a", cause="inc-a"), NOON)
    by_request = {r.request_id: r for r in await outreach.ledger.history(customer_id="c-1")}
    held = by_request["req-c"]
    assert held.status == "scheduled" and held.send_at is None and held.rule.startswith("paused")
    assert by_request["req-a"].status == "sent"
    assert len(sendgrid_double.messages) == 1


async def test_the_operator_endpoint_needs_the_token_and_audits_who(
    database_url, tmp_path, monkeypatch, capsys
):
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from common.cli import main as outreachctl

    settings = Settings(database_url=database_url, data_dir=tmp_path, operator_token="s3cret-token")
    app = bootstrap(settings, plans=StaticContactPlans({}), senders={"email": OutboxSender()})
    await app.start()
    web_app = web.Application()
    web_app.add_routes(routes(app))
    client = TestClient(TestServer(web_app))
    await client.start_server()
    try:
        body = {"scope": "all", "reason": "incident 42", "actor": "ana"}
        assert (await client.post("/ops/sending/pause", json=body)).status == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        done = await client.post("/ops/sending/pause", json=body, headers=auth)
        assert done.status == 200
        state = await done.json()
        assert state["paused"][0]["scope"] == "all" and state["paused"][0]["actor"] == "ana"
        assert app.delivery.paused.all  # this worker obeys at once
        missing = await client.post("/ops/sending/pause", json={"actor": "ana"}, headers=auth)
        assert missing.status == 400 and "why" in (await missing.json())["error"]
        url = f"http://127.0.0.1:{client.port}"
        with pytest.raises(SystemExit, match="401"):  # outreachctl without the token
            await asyncio.to_thread(outreachctl, ["sending", "status", "--outreach-url", url])
        monkeypatch.setenv("OUTREACH_OPERATOR_TOKEN", "s3cret-token")
        capsys.readouterr()
        await asyncio.to_thread(outreachctl, ["sending", "status", "--outreach-url", url])
        # (an earlier test may have left access logging on the same stdout: JSON lines)
        printed = "\n".join(
            line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")
        )
        assert printed.startswith("paused: all (since") and "ana: incident 42" in printed
        await asyncio.to_thread(
            outreachctl,
            ["sending", "resume", "--outreach-url", url, "--actor", "bo", "--ramp-minutes", "0"],
        )
        assert "paused: nothing" in capsys.readouterr().out
        resumed = await client.get("/ops/sending", headers=auth)
        assert (await resumed.json())["history"][0]["actor"] == "bo"
        await app.controls_watcher.refresh()
        assert not app.delivery.paused.all
    finally:
        await client.close()
        await app.stop()


def checkin(rid: str, *, promise_broken: bool, incidents: list[str]):
    """A check-in request after the order's incidents (`post_incident_checkin`)."""
    event = request(
        rid,
        kind="post_incident_checkin",
        intent="check_in",
        severity="info",
        cause=f"chk-{rid}",
        at=NOON + timedelta(days=2),
    )
    event.data["context"]["incident"]["facts"] = {
        "promise_broken": promise_broken,
        "incident_ids": incidents,
    }
    return event


async def test_a_checkin_asks_only_a_customer_who_experienced_the_incident(
    outreach, sendgrid_double
):
    later = NOON + timedelta(days=2)
    # Predicted late, then on time after all: resolved before anything went out.
    await outreach.delivery.on_incident(resolved("inc-quiet"), NOON)
    await outreach.delivery.on_request(request("req-quiet", cause="inc-quiet"), NOON)
    await outreach.delivery.on_request(
        checkin("chk-quiet", promise_broken=False, incidents=["inc-quiet"]), later
    )
    row = await outreach.ledger.by_request("chk-quiet")
    assert (row.status, row.reason) == ("suppressed", "not_experienced")
    assert sendgrid_double.messages == []

    # A failed attempt we told the customer about, delivered on time: asked.
    await outreach.delivery.on_request(request("req-told", cause="inc-told"), NOON)
    await outreach.delivery.on_request(
        checkin("chk-told", promise_broken=False, incidents=["inc-told"]), later
    )
    assert (await outreach.ledger.by_request("chk-told")).status == "sent"

    # The promise broken, nothing sent about it (say, the customer was unreachable then).
    await outreach.delivery.on_request(
        checkin("chk-broken", promise_broken=True, incidents=["inc-never"]), later
    )
    assert (await outreach.ledger.by_request("chk-broken")).status == "sent"
    assert len(sendgrid_double.messages) == 3  # the apology about inc-told, two check-ins
