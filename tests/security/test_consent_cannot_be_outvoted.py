"""Consent that cannot be outvoted: an opt-out always wins over any consent received
before it, whatever that consent claims its time to be; a consent dated in the future
is refused with a clear error; evidence is bounded (real database, real gRPC server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from services.preferences.domain.model import ConsentRecord
from tests.integration.preferences.test_preferences_store_and_api import (
    TOKEN,
    optout,
    prefs,
    server,
    upsert,
)

pytestmark = pytest.mark.integration
__all__ = ["prefs", "server"]  # fixtures: preferences on SQLite and PostgreSQL, its server
AUTH = [("authorization", f"Bearer {TOKEN}")]


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


async def test_an_opt_out_wins_over_a_consent_dated_after_it_but_received_before(prefs):
    """A consent recorded with a time far ahead used to beat every later STOP."""
    await prefs.on_customer_event(upsert())
    far = datetime.now(UTC) + timedelta(days=3650)
    await prefs.record_consent(
        "c-1", ConsentRecord("sms", "service", True, "crm_import", far, "import 2036")
    )
    await prefs.on_optout_event(optout(hours=2))  # STOP, received after
    plan = await prefs.plan("c-1", "service")
    sms = next(c for c in plan.channels if c.channel == "sms")
    assert (sms.usable, sms.reason) == (False, "opted_out")


async def test_a_consent_after_an_opt_out_counts_only_if_it_happened_after_it(prefs):
    await prefs.on_customer_event(upsert())
    await prefs.on_optout_event(optout(hours=5))  # STOP at T0+5h
    stale = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # T0+1h: before the STOP, received late
    await prefs.record_consent("c-1", ConsentRecord("sms", "service", True, "web", stale, "x"))
    assert not next(
        c for c in (await prefs.plan("c-1", "service")).channels if c.channel == "sms"
    ).usable
    fresh = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # START after the STOP: a real re-opt-in
    await prefs.record_consent(
        "c-1", ConsentRecord("sms", "service", True, "sms_start", fresh, "y")
    )
    assert next(
        c for c in (await prefs.plan("c-1", "service")).channels if c.channel == "sms"
    ).usable


async def test_future_times_and_huge_evidence_are_refused_over_grpc(server, prefs):
    stub, _, _ = server
    await prefs.on_customer_event(upsert())
    future = pb.RecordConsentRequest(
        customer_id="c-1",
        consent=pb.Consent(
            channel=pb.CHANNEL_SMS,
            category=pb.CATEGORY_SERVICE,
            granted=True,
            source="crm",
            occurred_at=stamp(datetime.now(UTC) + timedelta(days=1)),
        ),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RecordConsent(future, metadata=AUTH)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "occurred_at" in refused.value.details() and "future" in refused.value.details()
    huge = pb.SetOptOutRequest(
        customer_id="c-1",
        channel=pb.CHANNEL_EMAIL,
        opted_out=True,
        source="support",
        evidence="x" * 3_000_000,
    )
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await stub.SetOptOut(huge, metadata=AUTH)
    assert too_big.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    # Later reads of the customer still work (a 3 MB record would have broken every one).
    plan = await stub.GetContactPlan(
        pb.GetContactPlanRequest(customer_id="c-1", category=pb.CATEGORY_SERVICE)
    )
    assert plan.known
    small = pb.SetOptOutRequest(
        customer_id="c-1", channel=pb.CHANNEL_EMAIL, opted_out=True, source="x", evidence="y" * 5000
    )
    with pytest.raises(grpc.aio.AioRpcError) as long_evidence:
        await stub.SetOptOut(small, metadata=AUTH)
    assert long_evidence.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "evidence" in long_evidence.value.details()
