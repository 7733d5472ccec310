"""Outreach's delivery service on the in-memory ledger (held to the SQL ledger's contract by
tests/contract/test_ledger.py), with recording senders and static contact plans: the
decisions and the state machine, without a database for the ledger or a provider. The
same paths on SQLite and PostgreSQL through the official SDKs: tests/integration/outreach.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.clock import FixedClock
from common.envelope import new_event
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.memory_ledger import InMemoryLedger
from services.outreach.adapters.optouts import RecordingOptOuts
from services.outreach.adapters.providers import (
    PermanentProviderError,
    RecordingSender,
    TransientProviderError,
)
from services.outreach.adapters.render_pool import InlineRenderer
from services.outreach.bootstrap import Outreach, bootstrap
from services.outreach.config import Settings
from tests.outreach_requests import EMAIL, NIGHT, NOON, SMS, plan, request, resolved


@dataclass
class World:
    outreach: Outreach
    ledger: InMemoryLedger
    plans: StaticContactPlans
    email: RecordingSender
    sms: RecordingSender

    async def history(self, rid: str = "req-1") -> tuple[str, str | None, list[str]]:
        row = await self.ledger.by_request(rid)
        assert row is not None
        events = await self.ledger.events_of(row.decision_id)
        return row.status, row.reason, [e.status for e in events]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ledger = InMemoryLedger()
    plans = StaticContactPlans({("c-1", "*"): plan(EMAIL, SMS)})
    email, sms = RecordingSender("email-rec"), RecordingSender("sms-rec")
    outreach = bootstrap(
        Settings(data_dir=tmp_path, public_base_url="http://127.0.0.1:9"),
        plans=plans,
        senders={"email": email, "sms": sms, "whatsapp": sms},
        wall=FixedClock(datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
        renderer=InlineRenderer(),
        optouts=RecordingOptOuts(),
        ledger=ledger,
    )
    await outreach.start()
    try:
        yield World(outreach, ledger, plans, email, sms)
    finally:
        await outreach.stop()


async def test_a_request_is_decided_sent_once_and_told_on_the_outbox(world: World) -> None:
    await world.outreach.delivery.on_request(request(), NOON)
    await world.outreach.delivery.on_request(request(), NOON)  # redelivered
    assert await world.history() == ("sent", None, ["decided", "sending", "sent"])
    assert [m.to for m in world.email.sent] == ["ada@example.com"]
    assert "Ada" in (world.email.sent[0].text or "")
    assert [e.status for e in await world.ledger.unpublished()] == ["decided", "sending", "sent"]


async def test_at_night_an_sms_waits_for_8_local_and_a_resolution_meanwhile_suppresses_it(
    world: World,
) -> None:
    world.plans.plans[("c-1", "*")] = plan(SMS, EMAIL)
    delivery = world.outreach.delivery
    await delivery.on_request(request(at=NIGHT), NIGHT)
    row = await world.ledger.by_request("req-1")
    assert row is not None and row.status == "scheduled"
    assert row.send_at == datetime(2026, 3, 5, 7, 0, tzinfo=UTC)
    await delivery.on_incident(resolved("inc-1", NIGHT + timedelta(hours=2)), NIGHT)
    await delivery.send_due(datetime(2026, 3, 5, 7, 0, tzinfo=UTC))
    assert (await world.history())[:2] == ("suppressed", "already_resolved")
    assert world.sms.sent == [] and world.email.sent == []


async def test_no_channel_is_a_suppression_with_its_reason(world: World) -> None:
    world.plans.plans.clear()
    await world.outreach.delivery.on_request(request(), NOON)
    assert await world.history() == ("suppressed", "no_contact", ["suppressed"])


async def test_a_throttled_provider_is_tried_again_later_and_sends_once(world: World) -> None:
    world.email.errors.append(TransientProviderError("429", retry_after=30, throttled=True))
    delivery = world.outreach.delivery
    await delivery.on_request(request(), NOON)
    row = await world.ledger.by_request("req-1")
    assert row is not None and row.status == "scheduled"
    assert row.send_at is not None and row.send_at >= NOON + timedelta(seconds=30)
    assert await delivery.send_due(NOON + timedelta(seconds=10)) == 0
    await delivery.send_due(NOON + timedelta(minutes=1))
    assert (await world.history())[0] == "sent" and len(world.email.sent) == 1


async def test_a_refused_address_falls_back_to_the_next_channel(world: World) -> None:
    world.email.errors.append(PermanentProviderError("550", "no mailbox", category="recipient"))
    await world.outreach.delivery.on_request(request(), NOON)
    row = await world.ledger.by_request("req-1")
    assert row is not None and (row.status, row.channel) == ("sent", "sms")
    assert [m.to for m in world.sms.sent] == ["+4915112345678"]


def resolution(outcome: str, at: datetime):
    return new_event(
        type="support.handoff.resolved",
        source="/helpdesk",
        subject="c-1",
        time=at,
        id=f"res-{outcome}",
        data={
            "handoff_id": "h-1",
            "customer_id": "c-1",
            "outcome": outcome,
            "resolved_at": at.isoformat(),
        },
    )


async def test_an_agent_solving_the_case_cancels_the_check_ins_not_yet_sent(world: World) -> None:
    world.plans.plans[("c-1", "*")] = plan(SMS)
    delivery = world.outreach.delivery
    checkin = request("req-c", kind="post_incident_checkin", intent="check_in", at=NIGHT)
    await delivery.on_request(checkin, NIGHT)  # held for the morning
    await delivery.on_request(request("req-a", cause="inc-2", at=NIGHT), NIGHT)  # an apology
    assert await delivery.on_resolution(resolution("no_contact", NIGHT), NIGHT) == 0
    assert (await world.history("req-c"))[0] == "scheduled"
    assert await delivery.on_resolution(resolution("solved", NIGHT), NIGHT) == 1
    assert (await world.history("req-c"))[:2] == ("suppressed", "resolved_by_agent")
    assert (await world.history("req-a"))[0] == "scheduled"  # not a check-in: it goes
    await delivery.send_due(datetime(2026, 3, 5, 7, 0, tzinfo=UTC))
    assert len(world.sms.sent) == 1


async def test_the_check_in_after_an_incident_asks_how_we_did_once_a_month(world: World) -> None:
    world.plans.plans[("c-1", "*")] = plan(EMAIL)
    delivery = world.outreach.delivery
    first = request("req-1", kind="post_incident_checkin", intent="check_in", cause="inc-1")
    await delivery.on_request(first, NOON)
    (mail,) = world.email.sent
    links = [line for line in (mail.text or "").splitlines() if "/survey?token=" in line]
    assert [line.split(":", 1)[0] for line in links] == ["1", "2", "3", "4", "5"]
    assert (mail.html or "").count("/survey?token=") == 5
    later = NOON + timedelta(days=10)
    second = request("req-2", kind="post_incident_checkin", intent="check_in", cause="inc-2")
    await delivery.on_request(second, later)
    assert len(world.email.sent) == 2 and "/survey?token=" not in (world.email.sent[1].text or "")
