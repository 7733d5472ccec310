"""The port to preferences: contact plans, cached and invalidated by its change stream."""

from __future__ import annotations

import abc
import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import time as dtime
from pathlib import Path
from typing import Any

from common import tracing
from common.logs import get_logger
from common.metrics import PLAN_CACHE
from common.outages import DependencyUnavailable
from services.outreach.domain.decisions import ChannelOption, ContactPlan

log = get_logger(__name__)


class ContactPlans(abc.ABC):
    """`get` returns the plan for a customer and category, or None if preferences does not
    know the customer. Raises `PreferencesUnavailable` when it cannot be asked."""

    @abc.abstractmethod
    async def get(self, customer_id: str, category: str) -> ContactPlan | None: ...

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ready(self) -> bool:
        return True


class PreferencesUnavailable(DependencyUnavailable):
    """preferences cannot be asked now (down, overloaded, unreachable): an outage, so the
    request is held and asked again, never decided without a plan."""

    def __init__(self, detail: str) -> None:
        super().__init__("preferences", detail)


class StaticContactPlans(ContactPlans):
    """A fake for unit tests: plans set by hand."""

    def __init__(self, plans: dict[tuple[str, str], ContactPlan] | None = None) -> None:
        self.plans = dict(plans or {})
        self.calls: list[tuple[str, str]] = []

    async def get(self, customer_id: str, category: str) -> ContactPlan | None:
        self.calls.append((customer_id, category))
        return self.plans.get((customer_id, category)) or self.plans.get((customer_id, "*"))


def _hhmm(value: str, default: dtime) -> dtime:
    try:
        hours, minutes = value.split(":")
        return dtime(int(hours), int(minutes))
    except (ValueError, AttributeError):
        return default


@dataclass(frozen=True)
class PreferencesTls:
    """TLS towards preferences. `ca` is the PEM bundle that signs preferences' certificate
    (None: the system's roots); `cert` + `key` are outreach's own certificate when
    preferences asks for one (mTLS); `server_name` overrides the name checked against
    preferences' certificate (when the target is an address the certificate does not
    name)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


class GrpcContactPlans(ContactPlans):
    """Asks preferences over gRPC and caches plans, trusting a cached plan only as long
    as preferences' `WatchChanges` stream would have said that it changed.

    - Plans are cached only while the stream is established (its initial metadata seen:
      preferences has registered the subscription); when it breaks, the whole cache
      goes and nothing is cached until it is back.
    - A change drops the customer's plans. A plan whose reply raced a change to that
      customer (or a restart of the stream) is returned but not cached.
    - At most `max_entries` plans (least recently used go first), each for `cache_ttl_s`.
    """

    CHANNELS = {1: "email", 2: "sms", 3: "whatsapp"}
    CATEGORIES = {"service": 1, "marketing": 2}

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 2.0,
        cache_ttl_s: float = 300.0,
        max_entries: int = 100_000,
        token: str | None = None,
        tls: PreferencesTls | None = None,
        retry_s: float = 1.0,
    ) -> None:
        self.target = target
        self.tls = tls
        self.timeout_s = timeout_s
        self.cache_ttl_s = cache_ttl_s
        self.max_entries = max_entries
        self.token = token
        # preferences' read token (OUTREACH_PREFERENCES_TOKEN), on every call and stream.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.retry_s = retry_s
        self._cache: OrderedDict[tuple[str, str], tuple[float, ContactPlan | None]] = OrderedDict()
        self._channel: Any = None
        self._stub: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watching = asyncio.Event()
        self._stream_generation = 0  # bumped whenever the stream starts or breaks
        self._changes = 0  # changes heard so far
        self._changed_during_calls: dict[str, int] = {}  # customer -> `_changes` then
        self._in_flight = 0
        self.hits = 0
        self.misses = 0

    async def start(self) -> None:
        import grpc

        from common.proto.outreach.preferences.v1 import preferences_pb2_grpc

        interceptors = tracing.grpc_client_interceptors()
        if self.tls is None:
            self._channel = grpc.aio.insecure_channel(self.target, interceptors=interceptors)
        else:
            self._channel = grpc.aio.secure_channel(
                self.target,
                self.tls.credentials(),
                options=self.tls.options(),
                interceptors=interceptors,
            )
        self._stub = preferences_pb2_grpc.PreferencesServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._watch_task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._channel is not None:
            await self._channel.close()

    async def ready(self) -> bool:
        import grpc

        if self._channel is None:
            return False
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout=1.0)
            return bool(self._channel.get_state() == grpc.ChannelConnectivity.READY)
        except TimeoutError:
            return False

    async def _watch(self) -> None:
        from common.proto.outreach.preferences.v1 import preferences_pb2

        while True:
            try:
                stream = self._stub.WatchChanges(
                    preferences_pb2.WatchChangesRequest(), metadata=self._metadata
                )
                await stream.initial_metadata()
                self._stream_generation += 1
                self._watching.set()
                async for change in stream:
                    self._forget(change.customer_id)
                reason = "ended"
            except asyncio.CancelledError:
                self._lose_stream()
                raise
            except Exception as exc:
                reason = type(exc).__name__
            # Changes may have gone unheard: forget everything, cache nothing until the
            # stream is back.
            self._lose_stream()
            log.warning("preferences_watch_reconnect", error=reason)
            await asyncio.sleep(self.retry_s)

    @property
    def watching(self) -> bool:
        """The change stream is established: plans are being cached."""
        return self._watching.is_set()

    async def until_watching(self) -> None:
        await self._watching.wait()

    def _lose_stream(self) -> None:
        self._watching.clear()
        self._stream_generation += 1
        self._cache.clear()

    def _forget(self, customer_id: str) -> None:
        self._changes += 1
        if self._in_flight:
            self._changed_during_calls[customer_id] = self._changes
        for category in self.CATEGORIES:
            self._cache.pop((customer_id, category), None)

    async def get(self, customer_id: str, category: str) -> ContactPlan | None:
        import grpc

        from common.proto.outreach.preferences.v1 import preferences_pb2

        key = (customer_id, category)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > time.monotonic():
                self._cache.move_to_end(key)
                self.hits += 1
                PLAN_CACHE.labels("hit").inc()
                return cached[1]
            del self._cache[key]
        self.misses += 1
        PLAN_CACHE.labels("miss").inc()
        generation, changes = self._stream_generation, self._changes
        self._in_flight += 1
        try:
            reply = await self._stub.GetContactPlan(
                preferences_pb2.GetContactPlanRequest(
                    customer_id=customer_id,
                    category=self.CATEGORIES[category],  # type: ignore[arg-type]
                ),
                timeout=self.timeout_s,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise PreferencesUnavailable(f"GetContactPlan: {exc.code().name}") from exc
        finally:
            self._in_flight -= 1
            raced = self._changed_during_calls.get(customer_id, changes) > changes
            if not self._in_flight:
                self._changed_during_calls.clear()
        plan = self._plan(reply) if reply.known else None
        if (
            self.watching
            and self.cache_ttl_s > 0
            and self._stream_generation == generation
            and not raced
        ):
            self._cache[key] = (time.monotonic() + self.cache_ttl_s, plan)
            if len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return plan

    def _plan(self, reply: Any) -> ContactPlan:
        return ContactPlan(
            customer_id=reply.customer_id,
            known=reply.known,
            first_name=reply.first_name,
            locale=reply.locale or "en",
            time_zone=reply.time_zone or "UTC",
            quiet_start=_hhmm(reply.quiet_hours.start, dtime(21, 0)),
            quiet_end=_hhmm(reply.quiet_hours.end, dtime(8, 0)),
            marketing_opt_in=reply.marketing_opt_in,
            channels=tuple(
                ChannelOption(
                    channel=self.CHANNELS.get(c.channel, "unknown"),
                    address=c.address,
                    usable=c.usable,
                    reason=c.reason,
                )
                for c in reply.channels
            ),
        )
