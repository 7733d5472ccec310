"""Experiments on a real ledger (SQLite and PostgreSQL), sending through the official
SendGrid SDK to the local double: what the provider accepted and what the ledger keeps,
nothing read inside the service."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from common.clock import FixedClock
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.adapters.providers import OutboxSender, SendGridEmailSender
from services.outreach.bootstrap import Outreach, bootstrap
from services.outreach.config import Settings
from services.outreach.domain import experiments as trials
from services.outreach.domain.decisions import ChannelOption
from tests.outreach_requests import NOON, plan, request

pytestmark = pytest.mark.integration
WALL = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
CUSTOMERS = [f"cust-{n:03d}" for n in range(60)]
EXPERIMENTS = "apology-effect intent:apology 40%; offers remedy:* 50%"


def plans() -> StaticContactPlans:
    found = {}
    for cid in CUSTOMERS:
        email = ChannelOption("email", f"{cid}@example.com", True, "ok")
        found[(cid, "*")] = replace(plan(email, opt_in=True), customer_id=cid)
    return StaticContactPlans(found)


def worker(database_url, tmp_path, sendgrid_double, **settings) -> Outreach:
    config = Settings(
        database_url=database_url,
        data_dir=tmp_path,
        public_base_url="http://127.0.0.1:9",
        **settings,
    )
    email = SendGridEmailSender(
        sendgrid_double.api_key, "care@shop.example", base_url=sendgrid_double.base_url
    )
    return bootstrap(
        config,
        plans=plans(),
        senders={"email": email, "sms": OutboxSender(), "whatsapp": OutboxSender()},
        wall=FixedClock(WALL),
        optouts=RecordingOptOuts(),
    )


def reached(sendgrid_double) -> list[str]:
    """The customers the provider accepted a message for, one entry per message."""
    return [
        p["to"][0]["email"].split("@")[0]
        for mail in sendgrid_double.messages
        for p in mail["json"]["personalizations"]
    ]


async def test_each_customer_keeps_one_arm_across_two_workers_and_a_restart(
    database_url, tmp_path, sendgrid_double
):
    settings = {"holdout_share": 0.25, "experiments": EXPERIMENTS}
    first = worker(database_url, tmp_path, sendgrid_double, **settings)
    second = worker(database_url, tmp_path, sendgrid_double, **settings)
    for app in (first, second):
        await app.start()
    for n, cid in enumerate(CUSTOMERS):  # the two workers share the customers out
        app = (first, second)[n % 2]
        await app.delivery.on_request(request(f"a-{cid}", customer=cid, cause=f"i-{cid}"), NOON)
    for app in (first, second):
        await app.stop()
    after_restart = worker(database_url, tmp_path, sendgrid_double, **settings)
    await after_restart.start()
    later = NOON + timedelta(days=10)  # past the frequency cap's window
    try:
        for cid in reversed(CUSTOMERS):
            event = request(f"b-{cid}", customer=cid, cause=f"j-{cid}", at=later)
            await after_restart.delivery.on_request(event, later)
        rows = {cid: await after_restart.ledger.history(customer_id=cid) for cid in CUSTOMERS}
    finally:
        await after_restart.stop()

    got = reached(sendgrid_double)
    assert all(got.count(cid) in (0, 2) for cid in CUSTOMERS)  # both messages, or neither
    withheld = {cid for cid in CUSTOMERS if got.count(cid) == 0}
    # Two experiments cover an apology (the holdout, apology-effect): a customer in the
    # control arm of either is written to by neither message. Roughly 1 - 0.75 × 0.6.
    assert 12 <= len(withheld) <= 36
    for cid, (one, two) in rows.items():
        assert one.experiments == two.experiments  # the same arms, recorded each time
        assert [a["experiment"] for a in one.experiments] == ["holdout", "apology-effect"]
        held = any(a["effect"] == "withheld" for a in one.experiments)
        assert held is (cid in withheld)
        assert {one.reason, two.reason} == ({"holdout"} if held else {None})


async def test_a_lost_parcel_is_never_held_out(database_url, tmp_path, sendgrid_double):
    app = worker(database_url, tmp_path, sendgrid_double, holdout_share=1.0)
    await app.start()
    try:
        cid = CUSTOMERS[0]
        lost = request(
            "lost", customer=cid, cause="i-lost", kind="carrier_exception", severity="critical"
        )
        late = request("late", customer=cid, cause="i-late")
        pickup = request(
            "pickup", customer=cid, cause="i-pick", kind="awaiting_pickup", intent="status_update"
        )
        for event in (lost, late, pickup):
            await app.delivery.on_request(event, NOON)
        rows = {r.request_id: r for r in await app.ledger.history(customer_id=cid)}
    finally:
        await app.stop()
    assert len(reached(sendgrid_double)) == 2  # the lost parcel and the pickup notice
    assert rows["late"].reason == "holdout"
    for rid in ("lost", "pickup"):
        assert rows[rid].status == "sent"
        assert [a["effect"] for a in rows[rid].experiments] == ["protected"]


async def test_the_control_arm_of_a_remedy_experiment_gets_the_message_without_the_code(
    database_url, tmp_path, sendgrid_double
):
    offers = trials.Experiment("offers", "remedy", "*", 0.5)
    control = next(c for c in CUSTOMERS if offers.arm_of(c) == "control")
    treatment = next(c for c in CUSTOMERS if offers.arm_of(c) == "treatment")
    app = worker(database_url, tmp_path, sendgrid_double, experiments="offers remedy:* 50%")
    await app.start()
    try:
        for cid in (control, treatment):
            event = request(
                f"chk-{cid}",
                customer=cid,
                cause=f"r-{cid}",
                kind="churn_risk",
                intent="check_in",
                offer="standard",
            )
            await app.delivery.on_request(event, NOON)
    finally:
        await app.stop()
    texts = {
        p["to"][0]["email"].split("@")[0]: " ".join(c["value"] for c in mail["json"]["content"])
        for mail in sendgrid_double.messages
        for p in mail["json"]["personalizations"]
    }
    assert set(texts) == {control, treatment}  # both written to
    assert "SORRY-" in texts[treatment]
    assert "SORRY-" not in texts[control]
