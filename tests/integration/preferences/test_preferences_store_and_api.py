"""preferences on a real database (SQLite and PostgreSQL) behind a real gRPC server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from common.envelope import InvalidEvent, new_event
from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from services.preferences.adapters.store import PreferencesStore, migrate
from services.preferences.bootstrap import SERVICE_NAME, build_grpc_server, change_feed
from services.preferences.config import Settings
from services.preferences.handlers import Preferences

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TOKEN = "s3cret-write-token"
READ = "s3cret-read-token"


def _with_read_token(details):
    """The call's details with the read token, unless it brings an authorization."""
    metadata = list(details.metadata or [])
    if not any(key == "authorization" for key, _ in metadata):
        metadata.append(("authorization", f"Bearer {READ}"))
    return details._replace(metadata=metadata)


class Reader(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_read_token(details), request)


class StreamReader(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(_with_read_token(details), request)


def upsert(
    cid="c-1", *, opt_in=True, hours=0.0, phone="+4915112345678", tz="Europe/Berlin", id_=None
):
    return new_event(
        type="customer.upserted",
        source="/t",
        subject=cid,
        time=T0 + timedelta(hours=hours),
        id=id_ or f"up-{cid}-{hours}",
        data={
            "customer_id": cid,
            "first_name": "Ada",
            "email": "ada@example.com",
            "phone": phone,
            "locale": "de-DE",
            "timezone": tz,
            "marketing_opt_in": opt_in,
        },
    )


def optout(cid="c-1", channel="sms", hours=1.0, kind="contact.opted_out"):
    return new_event(
        type=kind,
        source="/t",
        subject=cid,
        time=T0 + timedelta(hours=hours),
        id=f"{kind}-{cid}-{channel}-{hours}",
        data={"customer_id": cid, "channel": channel, "source": "sms_stop"},
    )


@pytest.fixture
async def prefs(database_url):
    await asyncio.to_thread(migrate, database_url)
    store = PreferencesStore(database_url, "salt")
    feed = change_feed(store)  # PostgreSQL: heard through LISTEN/NOTIFY
    await feed.start()
    yield Preferences(store, feed)
    await feed.stop()
    await store.close()


async def test_plan_lists_every_channel_in_order_with_why_it_is_usable_or_not(prefs):
    await prefs.on_customer_event(upsert())
    plan = await prefs.plan("c-1", "service")
    assert [(c.channel, c.usable, c.reason) for c in plan.channels] == [
        ("email", True, "ok"),
        ("sms", True, "ok"),
        ("whatsapp", False, "no_consent"),
    ]
    unknown = await prefs.plan("nobody", "service")
    assert not unknown.known and unknown.channels == ()


async def test_a_later_upsert_never_re_opts_in_someone_who_opted_out(prefs):
    await prefs.on_customer_event(upsert(opt_in=True))
    await prefs.on_optout_event(optout(channel="sms", hours=1))
    await prefs.on_customer_event(upsert(opt_in=False, hours=2))  # withdraws marketing
    await prefs.on_customer_event(upsert(opt_in=True, hours=3))  # cannot grant it again
    plan = await prefs.plan("c-1", "marketing")
    assert not plan.marketing_opt_in
    service = await prefs.plan("c-1", "service")
    assert [c.reason for c in service.channels if c.channel == "sms"] == ["opted_out"]
    await prefs.on_optout_event(optout(channel="sms", hours=4, kind="contact.opted_in"))
    service = await prefs.plan("c-1", "service")
    assert [c.reason for c in service.channels if c.channel == "sms"] == ["ok"]


async def test_duplicate_events_have_no_second_effect(prefs):
    assert await prefs.on_customer_event(upsert()) == "processed"
    assert await prefs.on_customer_event(upsert()) == "duplicate"
    customer = await prefs.get("c-1")
    assert customer is not None and customer.version == 1


async def test_bad_contact_data_is_refused_with_a_precise_reason(prefs):
    with pytest.raises(InvalidEvent, match="phone"):
        await prefs.on_customer_event(upsert(phone="0151 1234"))
    with pytest.raises(InvalidEvent, match="time zone"):
        await prefs.on_customer_event(upsert(tz="Europe/Atlantis", id_="x2"))
    assert await prefs.get("c-1") is None


async def test_erasure_removes_personal_data_and_a_replayed_upsert_cannot_resurrect(prefs):
    await prefs.on_customer_event(upsert())
    await prefs.on_customer_event(
        new_event(
            type="customer.erased",
            source="/t",
            subject="c-1",
            time=T0 + timedelta(hours=5),
            id="erase-1",
            data={"customer_id": "c-1"},
        )
    )
    assert await prefs.get("c-1") is None
    assert await prefs.on_customer_event(upsert(id_="replayed")) == "erased_customer_ignored"
    assert await prefs.get("c-1") is None
    assert not (await prefs.plan("c-1", "service")).known


@pytest.fixture
async def server(prefs, tmp_path):
    settings = Settings(grpc_port=0, write_token=TOKEN, read_token=READ, data_dir=tmp_path)
    srv, health, port = build_grpc_server(settings, prefs)
    await srv.start()
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=[Reader(), StreamReader()]
    )
    yield pb_grpc.PreferencesServiceStub(channel), channel, port
    await channel.close()
    await srv.stop(0)


async def test_grpc_contact_plan_errors_auth_and_change_stream(server, prefs):
    stub, channel, _ = server
    await prefs.on_customer_event(upsert())
    plan = await stub.GetContactPlan(
        pb.GetContactPlanRequest(customer_id="c-1", category=pb.CATEGORY_SERVICE)
    )
    assert plan.known and plan.first_name == "Ada" and plan.time_zone == "Europe/Berlin"
    assert plan.quiet_hours.start == "21:00" and plan.quiet_hours.end == "08:00"

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.GetContactPlan(
            pb.GetContactPlanRequest(customer_id="", category=pb.CATEGORY_SERVICE)
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(bad.value)
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    assert detail.field_violations[0].field == "customer_id"

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetPreferences(pb.GetPreferencesRequest(customer_id="nobody"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    request = pb.SetOptOutRequest(
        customer_id="c-1", channel=pb.CHANNEL_EMAIL, opted_out=True, source="support_ticket"
    )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.SetOptOut(request)
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

    watch = stub.WatchChanges(pb.WatchChangesRequest())
    first = asyncio.ensure_future(watch.read())
    await asyncio.sleep(0)
    updated = await stub.SetOptOut(request, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert pb.CHANNEL_EMAIL in updated.opted_out
    change = await asyncio.wait_for(first, timeout=5)
    assert (change.customer_id, change.kind) == ("c-1", "opt_out")
    watch.cancel()

    with pytest.raises(grpc.aio.AioRpcError) as bad_mask:
        await stub.UpdatePreferences(
            pb.UpdatePreferencesRequest(
                preferences=pb.Preferences(customer_id="c-1", time_zone="Mars/Olympus"),
                update_mask={"paths": ["time_zone"]},
            ),
            metadata=[("authorization", f"Bearer {TOKEN}")],
        )
    assert bad_mask.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_and_reflection(server):
    _, channel, _ = server
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in reflection.ServerReflectionInfo(ask()):
        names = {s.name for s in response.list_services_response.service}
        assert SERVICE_NAME in names
        break


async def test_a_database_outage_is_unavailable_and_a_bug_internal_without_their_text(
    server, prefs, monkeypatch
):
    """Callers retry UNAVAILABLE; neither status echoes the exception (SQL, parameters,
    a customer's data)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    stub, _, _ = server
    await prefs.on_customer_event(upsert())
    request = pb.GetContactPlanRequest(customer_id="c-1", category=pb.CATEGORY_SERVICE)
    for error, code in (
        (
            OperationalError("SELECT ... WHERE email = 'ada@example.com'", {}, OSError()),
            "UNAVAILABLE",
        ),
        (
            InterfaceError("SELECT ...", {"p": "c-1"}, OSError("connection is closed")),
            "UNAVAILABLE",
        ),
        (ValueError("ada@example.com broke it"), "INTERNAL"),
    ):

        async def broken(*_args, error=error):
            raise error

        monkeypatch.setattr(prefs.store, "load", broken)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.GetContactPlan(request)
        assert failed.value.code().name == code
        assert "ada@" not in failed.value.details() and "SELECT" not in failed.value.details()
