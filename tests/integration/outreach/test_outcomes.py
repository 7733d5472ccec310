"""The outcomes of decisions on the real broker and database: simulated customers with
hidden true effects answer what outreach did (simulator/responses.py), their orders and
support contacts go through the shop's topics to outreach's outcome recorder, and the
outcome report finds the effects within its confidence intervals. Only outside effects
are read: the ledger, the outcome store, the dead-letter topic."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from common.envelope import new_event
from common.kafka import DeadLetters
from common.ops_http import Heartbeat
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.db import session_factory
from services.outreach.adapters.outcomes import OutcomeEvent
from services.outreach.adapters.providers import OutboxSender
from services.outreach.adapters.remedies import RemedyGrant
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from services.outreach.domain.decisions import ChannelOption
from services.outreach.entrypoints.inputs import own_topics
from services.outreach.entrypoints.records import outcome_records
from services.outreach.outcome_report.build import build
from simulator.responses import Customers, Truth
from tests.outreach_requests import NOON, plan, request

pytestmark = pytest.mark.integration
CUSTOMERS = [f"cust-{n:04d}" for n in range(800)]
TRUTH = Truth(repeat=0.20, message=0.10, wismo=0.30, wismo_message=-0.20)


async def until(condition, within: float, what: str):
    deadline = time.monotonic() + within
    while not (value := await condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.2)
    return value


def plans() -> StaticContactPlans:
    found = {}
    for cid in CUSTOMERS:
        email = ChannelOption("email", f"{cid}@example.com", True, "ok")
        found[(cid, "*")] = replace(plan(email), customer_id=cid)
    return StaticContactPlans(found)


async def test_the_report_finds_the_true_effect_of_messages_within_its_intervals(
    kafka_bootstrap, topic_prefix, postgres_database_url, tmp_path
):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from common.admin import ensure_topics

    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        database_url=postgres_database_url,
        data_dir=tmp_path,
        public_base_url="http://127.0.0.1:9",
        holdout_share=0.5,
    )
    ensure_topics(kafka_bootstrap, own_topics(settings, event_clock=False))
    outbox = OutboxSender()
    app = bootstrap(
        settings, plans=plans(), senders={"email": outbox, "sms": outbox, "whatsapp": outbox}
    )
    await app.start()
    # Apologies carry a 10 % code (no effect of their own here): customers who order
    # again use it, and the recorder counts its redemption from the order event.
    policy = {"rules": [{"intents": ["apology"], "offer": ["percent:10"]}]}
    await app.remedies.publish(await app.remedies.save_draft(policy, "a", "", NOON), "a", NOON)
    await app.producer.start()
    deadletters = DeadLetters(app.producer, settings.topics.deadletter("outreach"), "outreach")
    recorder = outcome_records(settings, app, Heartbeat(), deadletters)
    await recorder.start()
    consuming = asyncio.create_task(recorder.run())
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for cid in CUSTOMERS:  # one late delivery each; the holdout keeps half in control
            await app.delivery.on_request(request(f"r-{cid}", customer=cid, cause=f"i-{cid}"), NOON)
        rows = {r.customer_id: r for r in await app.ledger.history(limit=5000)}
        customers = Customers(TRUTH, seed=5)
        answers = []
        for cid in CUSTOMERS:
            messaged = rows[cid].status == "sent"
            grant = await app.remedies.get(rows[cid].decision_id)
            code = grant.code if grant is not None else None
            answers += customers.answer(cid, NOON, messaged=messaged, code=code)
        coded = [e for e in answers if e.event is not None and e.event.data.get("discount_codes")]
        # The same order event read twice (right after itself: the events behind it on
        # its partition, all recorded before the wait ends, vouch it was read): one use.
        answers.insert(answers.index(coded[0]) + 1, coded[0])
        for emission in answers:
            topic = topic_prefix + emission.topic
            await producer.send(topic, emission.value(), key=emission.key.encode())
        bad = new_event(
            type="support.ticket.opened", source="/shop", subject="x", time=NOON, id="bad-1",
            data={"ticket_id": "t", "customer_id": "x", "topic": "teleport"},
        )  # fmt: skip
        await producer.send_and_wait(settings.topics.feedback, bad.to_bytes(), key=b"x")
        sessions = session_factory(app.engine)

        async def recorded() -> bool:
            async with sessions() as s:
                count = (await s.execute(select(func.count()).select_from(OutcomeEvent))).scalar()
            return count == len(answers) - 1

        await until(recorded, 90, f"{len(answers) - 1} outcome facts recorded")
        async with sessions() as s:
            redeemed = await s.execute(
                select(func.count(), func.sum(RemedyGrant.uses)).where(
                    RemedyGrant.redeemed_at.is_not(None)
                )
            )
            assert tuple(redeemed.one()) == (len(coded), len(coded))
        report = await build(
            app.outcomes, since=NOON - timedelta(hours=1), until=NOON + timedelta(hours=1),
            now=NOON + timedelta(days=31),
        )  # fmt: skip
        erased = CUSTOMERS[0]
        event = new_event(
            type="customer.erased", source="/shop", subject=erased, id="erased-1",
            data={"customer_id": erased}, time=NOON + timedelta(days=40),
        )  # fmt: skip
        await app.delivery.on_customer_event(event)
        async with sessions() as s:
            left = await s.execute(select(func.count()).where(OutcomeEvent.customer_id == erased))
            assert left.scalar() == 0  # an erasure takes the customer's outcomes too
    finally:
        await recorder.stop()
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
        await producer.stop()
        await app.producer.stop()
        await app.stop()

    (whole,) = [g for g in report["experiments"] if g["experiment"] == "holdout"]
    assert 320 < whole["control_customers"] < 480 and 320 < whole["treatment_customers"] < 480
    found = {o["metric"]: o for o in whole["outcomes"]}
    repeat, wismo = found["repeat_30"], found["wismo_30"]
    assert repeat["low"] <= TRUTH.message <= repeat["high"] and repeat["verdict"] == "better"
    assert wismo["low"] <= TRUTH.wismo_message <= wismo["high"] and wismo["verdict"] == "better"
    assert "repeat_90" not in {o["metric"] for o in whole["outcomes"] if o["control_n"]}

    consumer = AIOKafkaConsumer(
        settings.topics.deadletter("outreach"),
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    reasons = [
        dict(r.headers).get("dlq.reason", b"").decode()
        for records in batches.values()
        for r in records
    ]
    assert any("topic" in reason for reason in reasons), reasons  # the bad ticket, and why
