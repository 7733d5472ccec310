"""Endpoints closed by default: who was written to and why (explain), the kill switch,
and every preferences RPC — reads as much as writes — answer only those who prove who
they are; health answers everyone (probes). Tokens are compared in constant time."""

from __future__ import annotations

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from services.outreach.adapters.contact_plans import StaticContactPlans
from services.outreach.adapters.providers import OutboxSender
from services.outreach.bootstrap import bootstrap
from services.outreach.config import Settings as OutreachSettings
from services.outreach.entrypoints.http import routes
from services.preferences.bootstrap import build_grpc_server
from services.preferences.config import Settings as PreferencesSettings
from services.preferences.domain.access import Credentials
from tests.integration.preferences.test_preferences_store_and_api import prefs, upsert

pytestmark = pytest.mark.integration
__all__ = ["prefs"]  # preferences on SQLite and PostgreSQL
OPERATOR = "an-operator-token"


@pytest.fixture
async def outreach_http(tmp_path):
    settings = OutreachSettings(
        database_url=f"sqlite:///{tmp_path / 'o.db'}", data_dir=tmp_path, operator_token=OPERATOR
    )
    app = bootstrap(settings, plans=StaticContactPlans({}), senders={"email": OutboxSender()})
    await app.start()
    web_app = web.Application()
    web_app.add_routes(routes(app))
    client = TestClient(TestServer(web_app))
    await client.start_server()
    yield client
    await client.close()
    await app.stop()


@pytest.mark.parametrize(
    "path",
    ["/customers/c-1/explain", "/orders/o-1/explain", "/ops/sending"],
)
async def test_operator_routes_want_the_token(outreach_http, path):
    assert (await outreach_http.get(path)).status == 401
    wrong = {"Authorization": "Bearer not-it"}
    assert (await outreach_http.get(path, headers=wrong)).status == 401
    right = {"Authorization": f"Bearer {OPERATOR}"}
    assert (await outreach_http.get(path, headers=right)).status == 200


async def test_public_routes_stay_public(outreach_http):
    # The unsubscribe page and the webhooks check their own signatures, not the token.
    assert (await outreach_http.get("/unsubscribe?token=x")).status == 400
    assert (await outreach_http.post("/webhooks/twilio/status", data={})).status == 403


def test_without_a_token_operator_routes_answer_loopback_only():
    from unittest.mock import Mock

    from common.ops_http import operator_allowed

    assert operator_allowed(Mock(remote="127.0.0.1", headers={}), None)
    assert not operator_allowed(Mock(remote="10.1.2.3", headers={}), None)
    assert not operator_allowed(Mock(remote="10.1.2.3", headers={}), "t")
    assert operator_allowed(Mock(remote="10.1.2.3", headers={"Authorization": "Bearer t"}), "t")


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        (dict(), "PREFERENCES_WRITE_TOKEN"),
        (dict(write_token="w"), "PREFERENCES_READ_TOKEN"),
    ],
)
def test_preferences_refuses_to_serve_unprotected(settings, missing, tmp_path):
    with pytest.raises(ValueError, match=missing):
        PreferencesSettings(data_dir=tmp_path, **settings).credentials()
    anonymous = PreferencesSettings(data_dir=tmp_path, allow_anonymous=True, **settings)
    assert anonymous.credentials().allows("SetOptOut", None)  # only when set explicitly


def test_tokens_grant_what_they_are_for():
    keys = Credentials(read="r", write="w")
    assert keys.allows("GetContactPlan", "Bearer r") and keys.allows("GetContactPlan", "Bearer w")
    assert not keys.allows("SetOptOut", "Bearer r") and keys.allows("SetOptOut", "Bearer w")
    for sent in (None, "", "r", "Bearer ", "Bearer R", "Basic r", "Bearer r "):
        assert not keys.allows("GetContactPlan", sent), sent
    assert Credentials(read=None, write="w", mtls=True).allows("WatchChanges", None)


@pytest.fixture
async def guarded_preferences(prefs, tmp_path):
    settings = PreferencesSettings(
        grpc_port=0, data_dir=tmp_path, read_token="r-token", write_token="w-token"
    )
    server, health, port = build_grpc_server(settings, prefs)
    await server.start()
    from grpc_health.v1 import health_pb2

    from services.preferences.bootstrap import SERVICE_NAME

    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.PreferencesServiceStub(channel), channel
    await channel.close()
    await server.stop(0)


CALLS = {
    "GetContactPlan": pb.GetContactPlanRequest(customer_id="c-1", category=pb.CATEGORY_SERVICE),
    "GetPreferences": pb.GetPreferencesRequest(customer_id="c-1"),
    "UpdatePreferences": pb.UpdatePreferencesRequest(
        preferences=pb.Preferences(customer_id="c-1", locale="de-DE"),
        update_mask={"paths": ["locale"]},
    ),
    "SetOptOut": pb.SetOptOutRequest(customer_id="c-1", channel=pb.CHANNEL_SMS, opted_out=True),
    "RecordConsent": pb.RecordConsentRequest(
        customer_id="c-1",
        consent=pb.Consent(channel=pb.CHANNEL_SMS, category=pb.CATEGORY_SERVICE, source="x"),
    ),
    "EraseCustomer": pb.EraseCustomerRequest(customer_id="c-1"),
}


@pytest.mark.parametrize("method", sorted(CALLS))
async def test_every_rpc_refuses_a_caller_without_credentials(guarded_preferences, prefs, method):
    stub, _ = guarded_preferences
    await prefs.on_customer_event(upsert())
    for metadata in (None, [("authorization", "Bearer guessed")]):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await getattr(stub, method)(CALLS[method], metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = await getattr(stub, method)(
        CALLS[method], metadata=[("authorization", "Bearer w-token")]
    )
    assert reply is not None


async def test_the_change_stream_wants_the_read_token_and_health_wants_nothing(
    guarded_preferences,
):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub, channel = guarded_preferences
    watch = stub.WatchChanges(pb.WatchChangesRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await watch.read()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    allowed = stub.WatchChanges(
        pb.WatchChangesRequest(), metadata=[("authorization", "Bearer r-token")]
    )
    await allowed.initial_metadata()  # subscribed
    allowed.cancel()
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
