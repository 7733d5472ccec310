"""OpenTelemetry traces that follow an event across Kafka and gRPC. Off by default.

With `OUTREACH_TRACING_ENABLED=false` (the default) nothing here starts a span, touches
a header or adds an attribute: every hook is one check of a module flag. When it is on,
spans go to an OTLP/HTTP collector configured by the standard `OTEL_*` variables
(`OTEL_ENVIRONMENT` below, listed in docs/configuration.md).

The context travels as a W3C `traceparent` (and `tracestate`) in two places at once, as
the CloudEvents distributed-tracing extension and as Kafka headers: a consumer takes the
header first, the extension when no header came (structured-mode producers that cannot
set headers), so incident → outreach request → message events form one trace. Across
gRPC it travels in the call's metadata.

Span attributes name topics, partitions, offsets, CloudEvent ids and types, gRPC methods
and status codes — never a message body, an address or a name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from common.envelope import CloudEvent
    from common.records import Headers, InputMessage

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_FIELDS = (TRACEPARENT, TRACESTATE)
INSTRUMENTATION = "proactive-outreach"

# The standard variables the SDK and the OTLP exporter read (documented with ours).
OTEL_ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "`http://localhost:4318`",
        "OTLP/HTTP collector (traces go to `<endpoint>/v1/traces`); with tracing on",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "unset",
        "full traces URL, overrides the endpoint above",
    ),
    (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "unset",
        "headers for the collector, `key=value,...` (e.g. an API key; keep it in the Secret)",
    ),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "`10`", "export timeout in seconds"),
    ("OTEL_SERVICE_NAME", "the service", "`service.name` of the spans"),
    ("OTEL_RESOURCE_ATTRIBUTES", "unset", "extra resource attributes, `key=value,...`"),
    (
        "OTEL_TRACES_SAMPLER",
        "`parentbased_always_on`",
        "sampler: `always_on`, `always_off`, `traceidratio`, `parentbased_*`",
    ),
    ("OTEL_TRACES_SAMPLER_ARG", "unset", "the ratio of `*traceidratio` samplers (0..1)"),
    (
        "OTEL_TRACES_EXPORTER",
        "`otlp`",
        "`otlp`, `console` (stdout, for a developer) or `none` (trace ids in logs only)",
    ),
    ("OTEL_SDK_DISABLED", "`false`", "`true` turns tracing off whatever the setting above"),
)
SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
EXPORTERS = frozenset({"otlp", "console", "none"})

_propagator = TraceContextTextMapPropagator()


class _State:
    enabled = False
    tracer: trace.Tracer = trace.NoOpTracer()
    provider: TracerProvider | None = None


_state = _State()


def enabled() -> bool:
    return _state.enabled


def configure_tracing(service: str, enabled: bool) -> bool:
    """Set up tracing for a service process from its settings and the OTEL_* environment.

    Returns whether tracing is on. Raises ValueError naming the variable for a bad value.
    """
    if not enabled or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        disable()
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER: unknown sampler {sampler!r}")
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if exporter_name not in EXPORTERS:
        raise ValueError(f"OTEL_TRACES_EXPORTER: one of {sorted(EXPORTERS)}, not {exporter_name!r}")
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", "").strip() or service}
    )
    # Without an explicit sampler the SDK reads OTEL_TRACES_SAMPLER(_ARG) itself.
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter | None = None
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable(provider)
    return True


def enable(provider: TracerProvider) -> None:
    """Trace through `provider` (tests pass one with an in-memory exporter)."""
    _state.provider = provider
    _state.tracer = provider.get_tracer(INSTRUMENTATION)
    _state.enabled = True


def disable() -> None:
    _state.enabled = False
    _state.tracer = trace.NoOpTracer()
    _state.provider = None


def shutdown() -> None:
    """Flush the spans still queued (the SDK also does it at exit)."""
    if _state.provider is not None:
        _state.provider.shutdown()


# --- reading and writing the context ---------------------------------------------------


def _context_from(carrier: Mapping[str, str]) -> Context | None:
    if TRACEPARENT not in carrier:
        return None
    context = _propagator.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def context_of(msg: InputMessage, event: CloudEvent | None) -> Context | None:
    """The upstream context of a record: Kafka headers first, else the CloudEvent."""
    carrier: dict[str, str] = {}
    for key, value in msg.headers:
        if key in TRACE_FIELDS:
            carrier[key] = value.decode("latin-1")
    context = _context_from(carrier)
    if context is None and event is not None:
        context = _context_from(_event_fields(event))
    return context


def _event_fields(event: CloudEvent) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key in TRACE_FIELDS:
        value = getattr(event, key, None)
        if isinstance(value, str):
            fields[key] = value
    return fields


def current_trace_fields() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span; empty when off or outside one."""
    if not _state.enabled:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def _event_attributes(event: CloudEvent) -> dict[str, Any]:
    return {
        "messaging.message.id": event.id,
        "cloudevents.event_id": event.id,
        "cloudevents.event_type": event.type,
        "cloudevents.event_source": event.source,
    }


# --- Kafka -----------------------------------------------------------------------------


_NO_SPAN: AbstractContextManager[Any] = nullcontext(None)


def consuming(
    service: str, msg: InputMessage, event: CloudEvent | None
) -> AbstractContextManager[Any]:
    """A CONSUMER span around the handling of one record, child of the record's context.

    Yields the span (None when tracing is off).
    """
    if not _state.enabled:
        return _NO_SPAN
    return _consuming(service, msg, event)


@contextmanager
def _consuming(service: str, msg: InputMessage, event: CloudEvent | None) -> Iterator[Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": msg.topic,
        "messaging.destination.partition.id": str(msg.partition),
        "messaging.kafka.offset": msg.offset,
        "messaging.consumer.group.name": service,
    }
    if event is not None:
        attributes.update(_event_attributes(event))
    with _state.tracer.start_as_current_span(
        f"process {msg.topic}",
        context=context_of(msg, event),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


def outcome(span: Any, result: str, error: str | None = None) -> None:
    """Record how a consumed record ended (processed, duplicate, dead_lettered...)."""
    if span is None:
        return
    span.set_attribute("outreach.outcome", result)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))


def producing(topic: str, event: CloudEvent) -> AbstractContextManager[CloudEvent]:
    """A PRODUCER span for one record; yields the event carrying that span's context.

    The parent is the current span (the record being handled), or, outside any span, the
    context the event already carries (a ledger change published later by a relay).
    When tracing is off the event is yielded untouched.
    """
    if not _state.enabled:
        return nullcontext(event)
    return _producing(topic, event)


@contextmanager
def _producing(topic: str, event: CloudEvent) -> Iterator[CloudEvent]:
    parent: Context | None = None
    if not trace.get_current_span().get_span_context().is_valid:
        parent = _context_from(_event_fields(event))
    attributes = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        **_event_attributes(event),
    }
    with _state.tracer.start_as_current_span(
        f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
    ):
        fields = current_trace_fields()
        yield event.with_fields(**fields) if fields else event


def with_trace_headers(headers: Headers) -> Headers:
    """Headers whose trace fields are the current span's (for records forwarded as bytes)."""
    fields = current_trace_fields()
    if not fields:
        return headers
    kept = [(k, v) for k, v in headers if k not in TRACE_FIELDS]
    return kept + [(k, v.encode()) for k, v in fields.items()]


# --- gRPC ------------------------------------------------------------------------------


def _rpc_attributes(method: str) -> dict[str, Any]:
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


class _ClientTracing(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """A CLIENT span per unary call; its context goes out in the call metadata."""

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else str(method)
        with _state.tracer.start_as_current_span(
            method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_rpc_attributes(method)
        ) as span:
            metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
            for key, value in current_trace_fields().items():
                metadata[key] = value
            details = grpc.aio.ClientCallDetails(
                client_call_details.method,
                client_call_details.timeout,
                metadata,
                client_call_details.credentials,
                client_call_details.wait_for_ready,
            )
            call = await continuation(details, request)
            code = await call.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            return call


def grpc_client_interceptors() -> list[Any]:
    """Interceptors for a grpc.aio channel: none when tracing is off."""
    return [_ClientTracing()] if _state.enabled else []


class _ServerTracing(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A SERVER span per unary call, child of the caller's context from the metadata."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method
        carrier = {
            k: v
            for k, v in (details.invocation_metadata or ())
            if k in TRACE_FIELDS and isinstance(v, str)
        }
        behaviour = handler.unary_unary

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _state.tracer.start_as_current_span(
                method.lstrip("/"),
                context=_context_from(carrier),
                kind=SpanKind.SERVER,
                attributes=_rpc_attributes(method),
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                failed = False
                try:
                    return await behaviour(request, context)
                except BaseException:
                    failed = True
                    raise
                finally:
                    code = context.code()
                    if code is None:
                        code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code != grpc.StatusCode.OK:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def grpc_server_interceptors() -> list[Any]:
    """Interceptors for a grpc.aio server (put them first): none when tracing is off."""
    return [_ServerTracing()] if _state.enabled else []
