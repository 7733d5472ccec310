"""Traces cross gRPC: outreach's preferences client and the real preferences server (on
127.0.0.1, SQLite) make one trace with the record outreach is handling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from common import tracing
from common.envelope import new_event
from common.kafka import InputMessage
from services.outreach.adapters.contact_plans import GrpcContactPlans
from services.preferences.adapters.change_feed import ChangeFeed
from services.preferences.adapters.store import PreferencesStore, migrate
from services.preferences.bootstrap import build_grpc_server
from services.preferences.config import Settings
from services.preferences.handlers import Preferences

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
UPSTREAM_TRACE = "0af7651916cd43dd8448eb211c80319c"
UPSTREAM = f"00-{UPSTREAM_TRACE}-b7ad6b7169203331-01"


@pytest.fixture
async def preferences_target(spans, tmp_path) -> AsyncIterator[str]:
    url = f"sqlite:///{tmp_path / 'prefs.db'}"
    await asyncio.to_thread(migrate, url)
    store = PreferencesStore(url, "salt")
    prefs = Preferences(store, ChangeFeed())
    await prefs.on_customer_event(
        new_event(
            type="customer.upserted",
            source="/t",
            subject="c-1",
            time=T0,
            id="up-1",
            data={
                "customer_id": "c-1",
                "first_name": "Ada",
                "email": "ada@example.com",
                "locale": "de-DE",
                "timezone": "Europe/Berlin",
                "marketing_opt_in": False,
            },
        )
    )
    server, _health, port = build_grpc_server(
        Settings(grpc_host="127.0.0.1", grpc_port=0, data_dir=tmp_path, allow_anonymous=True), prefs
    )
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await store.close()


async def test_client_and_server_spans_join_the_trace_of_the_record_being_handled(
    spans, preferences_target
):
    plans = GrpcContactPlans(preferences_target, cache_ttl_s=0)
    await plans.start()
    request = InputMessage(
        topic="outreach.requests",
        partition=0,
        offset=3,
        key=b"c-1",
        value=b"{}",
        headers=[("traceparent", UPSTREAM.encode())],
    )
    try:
        with tracing.consuming("outreach", request, None):
            plan = await plans.get("c-1", "service")
    finally:
        await plans.stop()

    assert plan is not None and plan.known
    finished = await finished_spans(spans, {SpanKind.CONSUMER, SpanKind.CLIENT, SpanKind.SERVER})
    consumer = next(s for s in finished if s.kind == SpanKind.CONSUMER)
    client = next(s for s in finished if s.kind == SpanKind.CLIENT)
    server = next(s for s in finished if s.kind == SpanKind.SERVER)
    assert {format(s.context.trace_id, "032x") for s in (consumer, client, server)} == {
        UPSTREAM_TRACE
    }
    assert client.parent.span_id == consumer.context.span_id
    assert server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    method = "outreach.preferences.v1.PreferencesService/GetContactPlan"
    assert client.name == server.name == method
    for span in (client, server):
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.method"] == "GetContactPlan"
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert "c-1" not in str(dict(span.attributes))  # no customer data in spans


async def finished_spans(spans: InMemorySpanExporter, kinds: set[SpanKind]) -> list:
    """The finished spans once one of each kind is there (at most 5 s)."""
    for _ in range(100):
        finished = spans.get_finished_spans()
        if kinds <= {s.kind for s in finished}:
            return list(finished)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished span of each kind {kinds}: {finished}")


async def test_a_failed_call_is_an_error_on_both_sides(spans, preferences_target):
    import grpc

    from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
    from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(
        preferences_target, interceptors=tracing.grpc_client_interceptors()
    )
    stub = pb_grpc.PreferencesServiceStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetContactPlan(pb.GetContactPlanRequest(customer_id=""), timeout=2)
    await channel.close()

    # The server ends its span as it sends the error: that can come just after the
    # client saw it.
    finished = await finished_spans(spans, {SpanKind.CLIENT, SpanKind.SERVER})
    client = next(s for s in finished if s.kind == SpanKind.CLIENT)
    server = next(s for s in finished if s.kind == SpanKind.SERVER)
    assert client.context.trace_id == server.context.trace_id
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert not span.status.is_ok
