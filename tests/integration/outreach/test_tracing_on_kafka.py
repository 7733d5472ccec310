"""A trace survives a hop through the real outreach worker on the real broker: the
request's traceparent (Kafka header) → the CONSUMER span → the ledger → the relay's
PRODUCER span → the `outreach.messages` record's header and CloudEvent extension."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from opentelemetry.trace import SpanKind

from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.providers import OutboxSender
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings
from services.outreach.entrypoints.worker import OutreachWorker
from tests.outreach_requests import EMAIL, plan, request

pytestmark = pytest.mark.integration
UPSTREAM_TRACE = "5b8aa5a2d2c872e8321cf37308d69df2"
UPSTREAM_SPAN = "051581bf3cb55c13"
UPSTREAM = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"


async def until(condition, within: float, what: str):
    deadline = time.monotonic() + within
    while not (value := await condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


async def test_the_message_event_is_in_the_trace_of_the_request_that_caused_it(
    spans, kafka_bootstrap, topic_prefix, tmp_path
):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        database_url=f"sqlite:///{tmp_path / 'outreach.db'}",
        data_dir=tmp_path,
        http_port=0,
        public_base_url="http://127.0.0.1:9",
        tracing_enabled=True,
    )
    outbox = OutboxSender()
    app = bootstrap(
        settings,
        plans=StaticContactPlans({("c-1", "*"): plan(EMAIL)}),
        senders={"email": outbox, "sms": outbox, "whatsapp": outbox},
    )
    worker = OutreachWorker(settings, app)
    running = asyncio.create_task(worker.run())
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    consumer = AIOKafkaConsumer(
        settings.topics.messages, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    try:

        async def assigned() -> bool:
            assert not running.done(), running
            return worker.consumer.ready()

        await until(assigned, 30, "the worker's partitions")
        await producer.start()
        now = datetime.now(UTC) - timedelta(minutes=1)
        await producer.send_and_wait(
            settings.topics.requests,
            request(at=now).to_bytes(),
            key=b"c-1",
            headers=[("traceparent", UPSTREAM.encode())],
        )
        await consumer.start()

        async def sent_message():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if orjson.loads(record.value)["type"] == "outreach.message.sent":
                        return record
            return None

        record = await until(sent_message, 20, "outreach.message.sent")
    finally:
        worker._stop.set()
        await asyncio.wait_for(running, 15)
        await producer.stop()
        await consumer.stop()

    header = dict(record.headers)["traceparent"].decode()
    event = orjson.loads(record.value)
    assert header.split("-")[1] == UPSTREAM_TRACE
    assert event["traceparent"] == header
    assert "_trace" not in event["data"] and event["data"]["outbox"] is True

    finished = spans.get_finished_spans()
    process = next(
        s for s in finished if s.kind == SpanKind.CONSUMER and "outreach.requests" in s.name
    )
    send = next(
        s
        for s in finished
        if s.kind == SpanKind.PRODUCER
        and s.attributes["cloudevents.event_type"] == "outreach.message.sent"
    )
    assert format(process.parent.span_id, "016x") == UPSTREAM_SPAN
    assert send.parent.span_id == process.context.span_id
    assert header.split("-")[2] == format(send.context.span_id, "016x")
    assert {format(s.context.trace_id, "032x") for s in (process, send)} == {UPSTREAM_TRACE}
