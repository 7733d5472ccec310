"""What every gRPC call to preferences passes through: the caller's credentials (and
the open health and reflection methods), the request metrics, and an unexpected error
turned into INTERNAL without its details."""

from __future__ import annotations

import time as _time
from typing import Any

import grpc

from common.logs import get_logger
from common.metrics import GRPC_REQUESTS, GRPC_SECONDS
from common.outages import outage_of
from services.preferences.domain.access import Credentials, open_method

log = get_logger(__name__)


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
        ok, seconds = GRPC_REQUESTS.labels(method, "OK"), GRPC_SECONDS.labels(method)

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
                (ok if code == "OK" else GRPC_REQUESTS.labels(method, code)).inc()
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


__all__ = ["OpsInterceptor", "ReflectionDescriptors"]
