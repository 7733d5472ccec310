"""The ledger's contract, run on every implementation of `LedgerPort`: the in-memory one
the unit tests use, and the SQL one on SQLite and on PostgreSQL. A behaviour that differs
between them fails here, not in a unit test that trusted the fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.adapters.ledger import Delivery, DeliveryEvent, Ledger, LedgerPort
from services.outreach.adapters.memory_ledger import InMemoryLedger
from services.outreach.domain.lifecycle import CauseState
from services.outreach.domain.states import IllegalMove, Status

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[LedgerPort]:
    if request.param == "memory":
        yield InMemoryLedger()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = str(request.getfixturevalue("postgres_database_url"))
    engine = create_engine(url)
    await create_schema(engine)
    try:
        yield Ledger(session_factory(engine))
    finally:
        await engine.dispose()


def row(n: int = 1, **values: Any) -> Delivery:
    fields: dict[str, Any] = {
        "decision_id": f"d-{n}",
        "request_id": f"r-{n}",
        "customer_id": "c-1",
        "order_id": "o-1",
        "cause_type": "incident",
        "cause_id": f"inc-{n}",
        "cause_kind": "delivery_late",
        "intent": "apology",
        "message_kind": "delivery_late",
        "severity": "warning",
        "category": "service",
        "status": Status.DECIDED,
        "channel": "email",
        "address": "ada@example.com",
        "decided_at": T0,
        "updated_at": T0,
        "request": {"request_id": f"r-{n}", "customer_id": "c-1", "context": {"name": "Ada"}},
    }
    return Delivery(**(fields | values))


def event(decision_id: str, status: str, n: int = 0, at: datetime = T0) -> DeliveryEvent:
    return DeliveryEvent(
        event_id=f"e-{decision_id}-{status}-{n}",
        decision_id=decision_id,
        customer_id="c-1",
        status=status,
        at=at,
        payload={"status": status},
    )


async def add(ledger: LedgerPort, n: int = 1, **values: Any) -> Delivery:
    created = row(n, **values)
    assert await ledger.create(created, event(created.decision_id, created.status))
    found = await ledger.get(created.decision_id)
    assert found is not None
    return found


async def test_a_decision_is_created_once_per_decision_and_per_request(ledger):
    first = await add(ledger)
    assert (first.attempts, first.fallbacks, first.revision, first.scrubbed) == (0, [], 1, False)
    assert not await ledger.create(row(1), event("d-1", "decided", 1))
    assert not await ledger.create(row(2, request_id="r-1"), event("d-2", "decided"))
    assert (await ledger.by_request("r-1")).decision_id == "d-1"
    assert await ledger.get("d-2") is None and await ledger.by_request("r-9") is None


async def test_a_transition_is_a_compare_and_set_on_the_state_and_the_claim(ledger):
    await add(ledger)
    claimed = await ledger.transition(
        "d-1",
        (Status.DECIDED,),
        event("d-1", "sending"),
        fence=0,
        status=Status.SENDING,
        attempts=1,
        lease_until=T0 + timedelta(minutes=1),
    )
    assert claimed
    # Another worker, still expecting `decided` or holding the old claim, changes nothing.
    assert not await ledger.transition("d-1", (Status.DECIDED,), None, status=Status.SENDING)
    assert not await ledger.transition(
        "d-1", (Status.SENDING,), event("d-1", "sent"), fence=0, status=Status.SENT
    )
    assert await ledger.transition(
        "d-1",
        (Status.SENDING,),
        event("d-1", "sent"),
        fence=1,
        status=Status.SENT,
        provider_message_id="pm-1",
        sent_at=T0,
    )
    found = await ledger.get("d-1")
    assert (found.status, found.attempts, found.provider_message_id) == ("sent", 1, "pm-1")
    assert (await ledger.by_provider_id("pm-1")).decision_id == "d-1"
    assert [e.status for e in await ledger.events_of("d-1")] == ["decided", "sending", "sent"]
    assert not await ledger.transition("d-9", (Status.DECIDED,), None, status=Status.SENDING)


async def test_writes_asked_for_at_once_each_get_their_own_answer(ledger):
    """As the worker's lanes ask: many decisions and claims at the same moment (the SQL
    ledger writes them in one transaction). Each caller learns whether its own write took
    effect, the same decision or claim twice takes effect once, and only writes that took
    effect leave an event."""
    await add(ledger, 1)
    decided = [row(n) for n in range(2, 7)] + [row(2), row(9, request_id="r-3")]
    claims = [
        ledger.transition(
            "d-1", (Status.DECIDED,), event("d-1", "sending", n), fence=0,
            status=Status.SENDING, attempts=1,
        )
        for n in range(2)
    ]  # fmt: skip
    answers = await asyncio.gather(
        *(ledger.create(r, event(r.decision_id, "decided", i)) for i, r in enumerate(decided)),
        *claims,
    )
    assert answers[:7] == [True] * 5 + [False, False]
    assert sorted(answers[7:]) == [False, True]
    assert await ledger.get("d-9") is None
    assert [e.status for e in await ledger.events_of("d-1")] == ["decided", "sending"]
    for n in range(2, 7):
        assert len(await ledger.events_of(f"d-{n}")) == 1


async def test_a_move_the_state_machine_forbids_raises(ledger):
    await add(ledger, status=Status.SUPPRESSED)
    with pytest.raises(IllegalMove):
        await ledger.transition("d-1", (Status.SUPPRESSED,), None, status=Status.DECIDED)


async def test_a_returned_row_is_a_copy(ledger):
    found = await add(ledger)
    found.status = Status.FAILED
    found.fallbacks.append({"channel": "sms"})
    again = await ledger.get("d-1")
    assert (again.status, again.fallbacks) == ("decided", [])


async def test_the_frequency_cap_counts_sent_under_way_and_planned_messages(ledger):
    await add(ledger, 1, status=Status.SENT, sent_at=T0 - timedelta(days=2))
    await add(ledger, 2, status=Status.SENDING)
    await add(ledger, 3, status=Status.SCHEDULED, send_at=T0 + timedelta(hours=8))
    await add(ledger, 4, status=Status.SCHEDULED, channel=None)  # held by a pause
    await add(ledger, 5, status=Status.SUPPRESSED)
    await add(ledger, 6, customer_id="c-2")
    since = T0 - timedelta(days=1)
    assert await ledger.count_recent("c-1", since) == 2
    assert await ledger.count_recent("c-1", since - timedelta(days=2)) == 3
    assert await ledger.count_recent("c-1", since, besides_cause=("incident", "inc-3")) == 1
    assert await ledger.reached_about("c-1", ["inc-1", "inc-3"])
    assert not await ledger.reached_about("c-1", ["inc-3", "inc-5"])
    assert not await ledger.reached_about("c-1", [])
    state = await ledger.cause_state("incident", "inc-3", 1, recent=("c-1", since))
    assert state.sent_in_window == 1  # what count_recent says besides the cause
    assert (await ledger.cause_state("incident", "inc-3", 1)).sent_in_window == 0


async def test_causes_their_revisions_and_their_resolution(ledger):
    await add(ledger, 1, cause_id="inc-x", revision=1, status=Status.SCHEDULED, send_at=T0)
    await add(ledger, 2, cause_id="inc-x", revision=2)
    await add(ledger, 3, cause_id="inc-x", revision=3, status=Status.SENT)
    assert {r.decision_id for r in await ledger.open_for_cause("inc-x")} == {"d-1", "d-2"}
    assert [r.decision_id for r in await ledger.older_unsent("incident", "inc-x", 2)] == ["d-1"]
    assert await ledger.newer_revision("incident", "inc-x", 2)
    assert not await ledger.newer_revision("incident", "inc-x", 3)
    assert not await ledger.is_resolved("inc-x")
    assert await ledger.cause_state("incident", "inc-x", 2) == CauseState(False, True)
    await ledger.mark_resolved("inc-x", T0, "delivered")
    await ledger.mark_resolved("inc-x", T0 + timedelta(hours=1), "cancelled")
    assert await ledger.is_resolved("inc-x")
    assert await ledger.cause_state("incident", "inc-x", 3) == CauseState(True, False)
    assert await ledger.cause_state("incident", "inc-y", 1) == CauseState(False, False)


async def test_due_held_and_stale_rows(ledger):
    later = T0 + timedelta(hours=2)
    await add(ledger, 1, status=Status.SCHEDULED, send_at=later)
    await add(ledger, 2, status=Status.SCHEDULED, send_at=T0 + timedelta(hours=1))
    await add(ledger, 3, status=Status.SCHEDULED, send_at=None)
    await add(ledger, 4, lease_until=T0 - timedelta(seconds=1))
    await add(ledger, 5, status=Status.IN_DOUBT, lease_until=T0 - timedelta(minutes=5))
    await add(ledger, 6, lease_until=T0 + timedelta(minutes=5))
    assert [r.decision_id for r in await ledger.due(later)] == ["d-2", "d-1"]
    assert [r.decision_id for r in await ledger.due(later, limit=1)] == ["d-2"]
    assert await ledger.due(T0) == []
    assert await ledger.earliest_due() == T0 + timedelta(hours=1)
    assert [r.decision_id for r in await ledger.held()] == ["d-3"]
    assert [r.decision_id for r in await ledger.stale(T0)] == ["d-5", "d-4"]
    counts = await ledger.count_by_status()
    assert counts["scheduled"] == 2 and counts["held"] == 1 and counts["decided"] == 2
    assert counts["delivered"] == 0 and set(counts) >= {s.value for s in Status}


async def test_the_outbox_gives_events_in_order_until_published(ledger):
    await add(ledger, 1)
    await add(ledger, 2)
    await ledger.transition(
        "d-1", (Status.DECIDED,), event("d-1", "suppressed"), status="suppressed"
    )
    pending = await ledger.unpublished()
    assert [(e.decision_id, e.status) for e in pending] == [
        ("d-1", "decided"),
        ("d-2", "decided"),
        ("d-1", "suppressed"),
    ]
    assert [e.id for e in pending] == sorted(e.id for e in pending)
    await ledger.mark_published([pending[0].id, pending[2].id])
    assert [e.decision_id for e in await ledger.unpublished()] == ["d-2"]
    assert [e.decision_id for e in await ledger.unpublished(limit=0)] == []


async def test_an_erasure_scrubs_settled_rows_now_and_those_in_flight_once_settled(ledger):
    await add(ledger, 1, fallbacks=[{"channel": "sms", "address": "+49151"}])
    await add(ledger, 2, status=Status.SENDING, attempts=1)
    await add(ledger, 3, customer_id="c-2")
    assert await ledger.erase_customer("c-1", T0) == 1
    scrubbed = await ledger.get("d-1")
    assert (scrubbed.address, scrubbed.subject, scrubbed.scrubbed) == (None, None, True)
    assert scrubbed.fallbacks == [{"channel": "sms"}]
    assert "context" not in scrubbed.request and scrubbed.request["request_id"] == "r-1"
    assert (await ledger.get("d-2")).address == "ada@example.com"  # a provider call settles
    await ledger.transition("d-2", (Status.SENDING,), None, fence=1, status=Status.SENT, sent_at=T0)
    assert await ledger.scrub_due(T0 - timedelta(days=365)) == 1  # settled now: erased
    assert (await ledger.get("d-2")).address is None
    assert (await ledger.get("d-3")).address == "ada@example.com"
    assert await ledger.scrub_due(T0 + timedelta(seconds=1)) == 1  # the body retention
    assert (await ledger.get("d-3")).scrubbed


async def test_the_latest_message_to_an_address_and_a_customers_history(ledger):
    await add(ledger, 1, channel="sms", address="+49151", decided_at=T0)
    await add(ledger, 2, channel="whatsapp", address="+49151", decided_at=T0 + timedelta(hours=1))
    await add(ledger, 3, customer_id="c-2", order_id="o-2", decided_at=T0 + timedelta(hours=2))
    assert (await ledger.latest_to("sms", "+49151")).decision_id == "d-2"
    assert (await ledger.latest_to("email", "+49151")) is None
    assert [r.decision_id for r in await ledger.history()] == ["d-3", "d-2", "d-1"]
    assert [r.decision_id for r in await ledger.history(customer_id="c-1")] == ["d-2", "d-1"]
    assert [r.decision_id for r in await ledger.history(order_id="o-2")] == ["d-3"]
    assert [r.decision_id for r in await ledger.history(limit=1)] == ["d-3"]
    # A reply answers the latest message that went out, not a later one held back.
    await add(ledger, 4, channel="sms", address="+49152", decided_at=T0, sent_at=T0)
    await add(ledger, 5, channel="sms", address="+49152", decided_at=T0 + timedelta(hours=1))
    assert (await ledger.latest_to("sms", "+49152")).decision_id == "d-4"


async def test_a_lease_is_held_by_one_holder_until_it_runs_out(ledger):
    until = T0 + timedelta(seconds=30)
    assert await ledger.hold_lease("relay", "w-1", until, T0)
    assert not await ledger.hold_lease("relay", "w-2", until, T0 + timedelta(seconds=10))
    assert await ledger.hold_lease("relay", "w-1", until + timedelta(seconds=30), until)
    assert await ledger.hold_lease(
        "relay", "w-2", T0 + timedelta(hours=1), until + timedelta(minutes=1)
    )


async def test_workers_seen_tell_since_when_the_receivers_were_up(ledger):
    assert await ledger.receivers_up_since(T0, timedelta(seconds=5)) is None
    await ledger.worker_seen("w-1", T0, T0)
    await ledger.worker_seen("w-2", T0 + timedelta(minutes=1), T0 + timedelta(minutes=1))
    now = T0 + timedelta(minutes=1, seconds=2)
    assert await ledger.receivers_up_since(now, timedelta(seconds=5)) == T0 + timedelta(minutes=1)
    assert await ledger.live_workers(now, timedelta(seconds=5)) == 1  # w-1 went quiet
    await ledger.worker_seen("w-1", T0, now)
    assert await ledger.receivers_up_since(now, timedelta(seconds=5)) == T0
    assert await ledger.live_workers(now, timedelta(seconds=5)) == 2


async def test_the_messages_that_went_to_a_customer_oldest_first(ledger):
    await add(ledger, 1, status=Status.SENT, sent_at=T0 + timedelta(hours=2))
    await add(ledger, 2, status=Status.DELIVERED, sent_at=T0 + timedelta(hours=1))
    await add(ledger, 3, status=Status.SCHEDULED)  # not sent: not part of the conversation
    await add(ledger, 4, customer_id="c-2", status=Status.SENT, sent_at=T0)
    await add(ledger, 5, status=Status.SENT, sent_at=T0)
    assert [r.decision_id for r in await ledger.messages_to("c-1", 10)] == ["d-5", "d-2", "d-1"]
    assert [r.decision_id for r in await ledger.messages_to("c-1", 2)] == ["d-2", "d-1"]
    assert await ledger.messages_to("c-9", 10) == []
