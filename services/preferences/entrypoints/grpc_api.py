"""The gRPC servicer: decode the request, call the handler, encode the reply. Errors are
status codes with details (INVALID_ARGUMENT carries google.rpc.BadRequest)."""

from __future__ import annotations

import time as _time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, time
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from common.logs import get_logger
from common.outages import outage_of
from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from services.preferences.adapters.change_feed import FeedInterrupted
from services.preferences.domain import validation
from services.preferences.domain.access import Credentials, open_method
from services.preferences.domain.model import ConsentRecord, Customer, Plan, marketing_opt_in
from services.preferences.domain.validation import FieldViolation
from services.preferences.handlers import Preferences

log = get_logger(__name__)
RPCS = Counter(
    "outreach_grpc_requests_total", "gRPC requests by method and status code.", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "outreach_grpc_request_seconds",
    "gRPC latency by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
)
CHANNEL_NAMES = {pb.CHANNEL_EMAIL: "email", pb.CHANNEL_SMS: "sms", pb.CHANNEL_WHATSAPP: "whatsapp"}
CHANNEL_ENUMS = {v: k for k, v in CHANNEL_NAMES.items()}
CATEGORY_NAMES = {pb.CATEGORY_SERVICE: "service", pb.CATEGORY_MARKETING: "marketing"}


def _hhmm(t: time) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"


def plan_message(plan: Plan) -> pb.ContactPlan:
    return pb.ContactPlan(
        customer_id=plan.customer_id,
        known=plan.known,
        first_name=plan.first_name,
        locale=plan.locale,
        time_zone=plan.time_zone,
        quiet_hours=pb.QuietHours(start=_hhmm(plan.quiet_start), end=_hhmm(plan.quiet_end)),
        marketing_opt_in=plan.marketing_opt_in,
        version=plan.version,
        channels=[
            pb.ChannelOption(
                channel=CHANNEL_ENUMS[c.channel],
                address=c.address,
                usable=c.usable,
                reason=c.reason,
            )
            for c in plan.channels
        ],
    )


def preferences_message(c: Customer) -> pb.Preferences:
    message = pb.Preferences(
        customer_id=c.customer_id,
        first_name=c.first_name,
        last_name=c.last_name or "",
        email=c.email or "",
        phone=c.phone or "",
        locale=c.locale,
        time_zone=c.time_zone,
        quiet_hours=pb.QuietHours(start=_hhmm(c.quiet_start), end=_hhmm(c.quiet_end)),
        channel_order=[CHANNEL_ENUMS[ch] for ch in c.channel_order if ch in CHANNEL_ENUMS],
        marketing_opt_in=marketing_opt_in(c),
        version=c.version,
    )
    from services.preferences.domain.model import opted_out

    message.opted_out.extend(CHANNEL_ENUMS[ch] for ch in opted_out(c))
    for r in c.consents:
        consent = message.consent_history.add(
            channel=CHANNEL_ENUMS.get(r.channel or "", pb.CHANNEL_UNSPECIFIED),
            category=pb.CATEGORY_MARKETING if r.category == "marketing" else pb.CATEGORY_SERVICE,
            granted=r.granted,
            source=r.source,
            evidence=r.evidence,
        )
        consent.occurred_at.FromDatetime(r.occurred_at.astimezone(UTC).replace(tzinfo=None))
    return message


def _bad_request(*violations: FieldViolation) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
    )
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="; ".join(str(v) for v in violations),
        details=[detail],
    )


class PreferencesServicer(pb_grpc.PreferencesServiceServicer):
    def __init__(self, prefs: Preferences) -> None:
        self.prefs = prefs

    async def _run(
        self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            return await call()
        except FieldViolation as exc:
            await context.abort_with_status(rpc_status.to_status(_bad_request(exc)))

    async def _existing(
        self, context: grpc.aio.ServicerContext, customer: Customer | None, customer_id: str
    ) -> pb.Preferences:
        if customer is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown customer {customer_id!r}")
        assert customer is not None
        return preferences_message(customer)

    async def GetContactPlan(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        category = CATEGORY_NAMES.get(request.category)
        if category is None:
            await context.abort_with_status(
                rpc_status.to_status(
                    _bad_request(
                        FieldViolation("category", "must be CATEGORY_SERVICE or CATEGORY_MARKETING")
                    )
                )
            )
        plan = await self._run(
            context, lambda: self.prefs.plan(request.customer_id, category or "service")
        )
        return plan_message(plan)

    async def GetPreferences(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        customer = await self._run(context, lambda: self.prefs.get(request.customer_id))
        return await self._existing(context, customer, request.customer_id)

    async def UpdatePreferences(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = request.preferences
        paths = set(request.update_mask.paths)
        allowed = {
            "locale",
            "time_zone",
            "quiet_hours",
            "quiet_hours.start",
            "quiet_hours.end",
            "channel_order",
        }
        unknown = sorted(paths - allowed)
        if not paths or unknown:
            await context.abort_with_status(
                rpc_status.to_status(
                    _bad_request(
                        FieldViolation(
                            "update_mask",
                            f"must name some of {sorted(allowed)}; not {unknown or 'nothing'}",
                        )
                    )
                )
            )
        whole_quiet = "quiet_hours" in paths
        customer = await self._run(
            context,
            lambda: self.prefs.update(
                p.customer_id,
                locale=p.locale if "locale" in paths else None,
                time_zone=p.time_zone if "time_zone" in paths else None,
                quiet_start=p.quiet_hours.start
                if whole_quiet or "quiet_hours.start" in paths
                else None,
                quiet_end=p.quiet_hours.end if whole_quiet or "quiet_hours.end" in paths else None,
                channel_order=[CHANNEL_NAMES.get(c, "?") for c in p.channel_order]
                if "channel_order" in paths
                else None,
            ),
        )
        return await self._existing(context, customer, p.customer_id)

    async def SetOptOut(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        now = datetime.now(UTC)
        at = request.occurred_at.ToDatetime(tzinfo=UTC) if request.HasField("occurred_at") else now

        async def change() -> Customer | None:
            return await self.prefs.set_opt_out(
                request.customer_id,
                CHANNEL_NAMES.get(request.channel, "?"),
                request.opted_out,
                request.source or "grpc",
                validation.occurred_at(at, now),
                validation.evidence(request.evidence),
            )

        customer = await self._run(context, change)
        return await self._existing(context, customer, request.customer_id)

    async def RecordConsent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        c = request.consent
        now = datetime.now(UTC)
        at = c.occurred_at.ToDatetime(tzinfo=UTC) if c.HasField("occurred_at") else now

        async def change() -> Customer | None:
            record = ConsentRecord(
                channel=CHANNEL_NAMES.get(c.channel),
                category=CATEGORY_NAMES.get(c.category, "?"),
                granted=c.granted,
                source=c.source,
                occurred_at=validation.occurred_at(at, now, "consent.occurred_at"),
                evidence=validation.evidence(c.evidence, "consent.evidence"),
            )
            return await self.prefs.record_consent(request.customer_id, record)

        customer = await self._run(context, change)
        return await self._existing(context, customer, request.customer_id)

    async def EraseCustomer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not request.customer_id:
            await context.abort_with_status(
                rpc_status.to_status(
                    _bad_request(FieldViolation("customer_id", "must not be empty"))
                )
            )
        return pb.EraseCustomerResponse(erased=await self.prefs.erase(request.customer_id))

    async def WatchChanges(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # Registered before the initial metadata goes out: a caller that has seen the
        # metadata misses no change committed after it. A subscription that may have
        # missed one ends UNAVAILABLE, and the caller forgets what it cached.
        try:
            subscription = self.prefs.feed.subscribe()
        except FeedInterrupted as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        try:
            await context.send_initial_metadata(())
            async for change in subscription:
                yield pb.PreferenceChange(
                    customer_id=change.customer_id, version=change.version, kind=change.kind
                )
        except FeedInterrupted as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            subscription.close()


class ReflectionDescriptors:
    """The descriptor pool server reflection answers from, finding methods too.

    The reflection protocol resolves `<package>.<service>.<method>` in
    file_containing_symbol; Python's (upb) pool knows services and types only, so a
    client that asks by method (ghz, bojand/ghz#419) got "Symbol not found" while
    grpcurl, which asks by service, worked. Everything else goes to the wrapped pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, name: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(name)
        except KeyError:
            service, _, method = name.rpartition(".")
            try:
                descriptor = self._pool.FindServiceByName(service)
            except KeyError:
                descriptor = None
            if descriptor is None or method not in descriptor.methods_by_name:
                raise
            return descriptor.file


class OpsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Credentials, metrics and logs per call (domain/access.py says who may call what;
    health and reflection are open to every caller)."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        # method path -> (the handler wrapped, the wrapper): built once per method, not
        # per call (unless an interceptor before this one hands out new handlers).
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        method = details.method.rsplit("/", 1)[-1]
        guarded = not open_method(details.method)
        if handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._observed(method, handler.unary_unary, guarded),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream is not None and guarded:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._streamed(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        else:
            return handler
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    async def _check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        if not self.credentials.allows(method, _authorization(context)):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, self.credentials.what_is_needed(method)
            )

    def _streamed(self, method: str, behaviour: Any) -> Any:
        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._check(method, context)
            async for item in behaviour(request, context):
                yield item

        return streamed

    def _observed(self, method: str, behaviour: Any, guarded: bool) -> Any:
        ok, seconds = RPCS.labels(method, "OK"), RPC_SECONDS.labels(method)

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = _time.perf_counter()
            code = "OK"
            try:
                if guarded:
                    await self._check(method, context)
                try:
                    return await behaviour(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_unexpected(method, exc, context)
                    raise  # abort raised already; this keeps type checkers content
            except BaseException:
                code = context.code().name if context.code() else "UNKNOWN"
                raise
            finally:
                (ok if code == "OK" else RPCS.labels(method, code)).inc()
                seconds.observe(_time.perf_counter() - started)

        return observed


async def _abort_unexpected(method: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
    """An exception a servicer did not turn into a status. A dependency that cannot be
    reached (the database restarting) is UNAVAILABLE — callers try again —; anything
    else is INTERNAL. Neither echoes the exception's text (SQL, parameters, personal
    data): that goes to our log only."""
    dependency = outage_of(exc)
    if dependency is not None:
        log.warning("rpc_unavailable", method=method, dependency=dependency)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, f"preferences cannot reach its {dependency}; try again"
        )
    log.error("rpc_failed", method=method, error=type(exc).__name__)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None
