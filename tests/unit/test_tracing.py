"""OpenTelemetry tracing: one trace from a consumed record to the records it causes, log
lines that name their span, and nothing at all when tracing is off (the default)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from common import tracing
from common.clock import FixedClock
from common.envelope import CloudEvent, new_event
from common.kafka import (
    DeadLetters,
    InputMessage,
    MessageProcessor,
    Outgoing,
    RecordingProducer,
)
from common.logs import configure_logging
from common.settings import ServiceSettings

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_SPAN = "00f067aa0ba902b7"
UPSTREAM = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"


def incident(event_id: str = "evt-1", **extensions: str) -> CloudEvent:
    return new_event(
        type="incident.opened",
        source="/outreach/orders_watcher",
        subject="o-1",
        time=T0,
        id=event_id,
        data={"incident_id": "inc-1", "customer_id": "c-1", "order_id": "o-1"},
        **extensions,
    )


def record(event: CloudEvent, headers: list[tuple[str, bytes]] | None = None) -> InputMessage:
    return InputMessage(
        topic="outreach.incidents",
        partition=2,
        offset=41,
        key=b"c-1",
        value=event.to_bytes(),
        headers=headers if headers is not None else [],
    )


def relaying_processor(producer: RecordingProducer, handler=None) -> MessageProcessor:
    """A service that turns each incident into one outreach request (like risk_detector)."""

    async def relay(msg: InputMessage, event: CloudEvent) -> None:
        request = new_event(
            type="outreach.request.created",
            source="/outreach/risk_detector",
            subject="c-1",
            time=event.time,
            id=f"req-for-{event.id}",
            data={"request_id": f"req-for-{event.id}", "customer_id": "c-1"},
        )
        if handler is not None:
            handler(msg, event)
        await producer.emit("risk_detector", [Outgoing("outreach.requests", "c-1", request)])

    return MessageProcessor(
        "risk_detector",
        relay,
        DeadLetters(producer, "deadletter.risk_detector", "risk_detector"),
        FixedClock(T0),
    )


def header(headers: list[tuple[str, bytes]], name: str) -> str | None:
    values = [v.decode() for k, v in headers if k == name]
    assert len(values) <= 1, headers
    return values[0] if values else None


async def test_consume_then_produce_stays_in_the_trace_that_arrived_in_the_kafka_header(spans):
    producer = RecordingProducer()
    processor = relaying_processor(producer)

    outcome = await processor.process(record(incident(), [("traceparent", UPSTREAM.encode())]))

    assert outcome == "processed"
    consumer = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER)
    producer_span = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.PRODUCER)
    assert format(consumer.context.trace_id, "032x") == UPSTREAM_TRACE
    assert format(consumer.parent.span_id, "016x") == UPSTREAM_SPAN
    assert consumer.name == "process outreach.incidents"
    assert dict(consumer.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "outreach.incidents",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "risk_detector",
        "messaging.message.id": "evt-1",
        "cloudevents.event_id": "evt-1",
        "cloudevents.event_type": "incident.opened",
        "cloudevents.event_source": "/outreach/orders_watcher",
        "outreach.outcome": "processed",
    }
    assert producer_span.parent.span_id == consumer.context.span_id
    assert producer_span.context.trace_id == consumer.context.trace_id
    assert producer_span.attributes["messaging.destination.name"] == "outreach.requests"

    [(topic, _key, value, headers)] = producer.records
    produced = CloudEvent.from_bytes(value)
    sent = header(headers, "traceparent")
    assert topic == "outreach.requests"
    assert sent == produced.traceparent  # type: ignore[attr-defined]
    assert sent == f"00-{UPSTREAM_TRACE}-{format(producer_span.context.span_id, '016x')}-01"


async def test_without_a_header_the_cloudevent_traceparent_extension_is_the_parent(spans):
    producer = RecordingProducer()
    await relaying_processor(producer).process(record(incident(traceparent=UPSTREAM)))

    consumer = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER)
    assert format(consumer.context.trace_id, "032x") == UPSTREAM_TRACE
    assert UPSTREAM_TRACE in header(producer.records[0][3], "traceparent")


async def test_two_hops_make_one_trace_incident_to_request_to_the_next_consumer(spans):
    first, second = RecordingProducer(), RecordingProducer()
    await relaying_processor(first).process(record(incident()))  # no upstream: a new trace
    topic, key, value, headers = first.records[0]
    hop = InputMessage(topic=topic, partition=0, offset=0, key=key, value=value, headers=headers)
    await relaying_processor(second).process(hop)

    traces = {s.context.trace_id for s in spans.get_finished_spans()}
    assert len(traces) == 1
    assert len(spans.get_finished_spans()) == 4  # process, send, process, send
    assert header(second.records[0][3], "traceparent").split("-")[1] == format(traces.pop(), "032x")


async def test_a_dead_lettered_record_has_an_error_span_and_its_headers_travel_unchanged(spans):
    producer = RecordingProducer()
    processor = relaying_processor(producer)
    garbage = InputMessage(
        topic="outreach.incidents",
        partition=0,
        offset=7,
        key=None,
        value=b"not json",
        headers=[("traceparent", UPSTREAM.encode())],
    )

    assert await processor.process(garbage) == "dead_lettered"

    [span] = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert format(span.context.trace_id, "032x") == UPSTREAM_TRACE
    assert header(producer.records[0][3], "traceparent") == UPSTREAM


async def test_tracing_off_makes_no_spans_and_adds_no_traceparent():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert not tracing.enabled()
    producer = RecordingProducer()

    await relaying_processor(producer).process(
        record(incident(), [("traceparent", UPSTREAM.encode())])
    )

    assert exporter.get_finished_spans() == ()
    [(_topic, _key, value, headers)] = producer.records
    assert headers == [("content-type", b"application/cloudevents+json")]
    assert "traceparent" not in json.loads(value)
    assert tracing.current_trace_fields() == {}
    assert tracing.grpc_client_interceptors() == []
    assert tracing.grpc_server_interceptors() == []


async def test_tracing_off_still_forwards_a_traceparent_the_event_already_carried():
    producer = RecordingProducer()
    await producer.emit("s", [Outgoing("t", "k", incident(traceparent=UPSTREAM))])
    assert header(producer.records[0][3], "traceparent") == UPSTREAM


def test_off_by_default_and_the_otel_sdk_switch_wins(monkeypatch):
    monkeypatch.delenv("OUTREACH_TRACING_ENABLED", raising=False)
    assert ServiceSettings().tracing_enabled is False
    assert ServiceSettings().configure_tracing("orders_watcher") is False
    monkeypatch.setenv("OUTREACH_TRACING_ENABLED", "true")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert ServiceSettings().configure_tracing("orders_watcher") is False
    assert not tracing.enabled()


def test_a_bad_otel_value_is_refused_with_the_variables_name(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        tracing.configure_tracing("outreach", True)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER"):
        tracing.configure_tracing("outreach", True)
    assert not tracing.enabled()


@pytest.fixture
def json_logs(capsys) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The service's JSON logging, read back line by line. It is configured in the test
    body: the stdout capsys gives a fixture is not the one the test writes to."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configured = False

    def lines() -> list[dict[str, Any]]:
        nonlocal configured
        if not configured:
            configure_logging("risk_detector", "INFO", "json")
            # Module loggers must not keep capsys's stream once the test is over.
            structlog.configure(cache_logger_on_first_use=False)
            configured = True
            return []
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    yield lines
    structlog.configure(**saved_config)
    structlog.contextvars.unbind_contextvars("service")
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


async def test_log_lines_of_a_handled_event_carry_trace_span_and_event_ids(spans, json_logs):
    def log_something(msg: InputMessage, event: CloudEvent) -> None:
        structlog.get_logger("handler").info("request_created", customer_id="c-1")

    json_logs()
    await relaying_processor(RecordingProducer(), log_something).process(
        record(incident(), [("traceparent", UPSTREAM.encode())])
    )
    structlog.get_logger("after").info("idle")

    lines = json_logs()
    handled = next(line for line in lines if line["event"] == "request_created")
    consumer = next(s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER)
    assert handled["trace_id"] == UPSTREAM_TRACE
    assert handled["span_id"] == format(consumer.context.span_id, "016x")
    assert handled["event_id"] == "evt-1" and handled["event_type"] == "incident.opened"
    assert handled["service"] == "risk_detector"
    idle = next(line for line in lines if line["event"] == "idle")
    assert "trace_id" not in idle and "event_id" not in idle


async def test_tracing_off_log_lines_have_event_ids_but_no_trace_ids(json_logs):
    def log_something(msg: InputMessage, event: CloudEvent) -> None:
        structlog.get_logger("handler").info("request_created")

    json_logs()
    await relaying_processor(RecordingProducer(), log_something).process(
        record(incident(), [("traceparent", UPSTREAM.encode())])
    )
    lines = json_logs()
    handled = next(line for line in lines if line["event"] == "request_created")
    assert handled["event_id"] == "evt-1"
    assert "trace_id" not in handled and "span_id" not in handled
