"""The gRPC servicer: decode the request, call the handler, encode the reply. Errors are
status codes with details (INVALID_ARGUMENT carries google.rpc.BadRequest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from typing import Any

import grpc
from grpc_status import rpc_status

from common.clock import wall_now
from common.logs import get_logger
from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from services.preferences.adapters.change_feed import FeedInterrupted
from services.preferences.domain import validation
from services.preferences.domain.model import ConsentRecord, Customer
from services.preferences.domain.validation import FieldViolation
from services.preferences.entrypoints.grpc_messages import (
    CATEGORY_NAMES,
    CHANNEL_NAMES,
    bad_request,
    plan_message,
    preferences_message,
)
from services.preferences.handlers import Preferences

log = get_logger(__name__)


class PreferencesServicer(pb_grpc.PreferencesServiceServicer):
    def __init__(self, prefs: Preferences) -> None:
        self.prefs = prefs

    async def _run(
        self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            return await call()
        except FieldViolation as exc:
            await context.abort_with_status(rpc_status.to_status(bad_request(exc)))

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
                    bad_request(
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
                    bad_request(
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
        now = wall_now()
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
        now = wall_now()
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
                    bad_request(FieldViolation("customer_id", "must not be empty"))
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
