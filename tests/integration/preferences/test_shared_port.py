"""Replicas on one host: by default a second preferences server cannot bind a taken gRPC
port (it fails at start instead of quietly taking half of the connections); with
PREFERENCES_GRPC_REUSE_PORT both bind it and the kernel hands connections to each."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from services.preferences.adapters.change_feed import ChangeFeed
from services.preferences.adapters.store import PreferencesStore, migrate
from services.preferences.bootstrap import build_grpc_server
from services.preferences.config import Settings
from services.preferences.handlers import Preferences
from tests.conftest import free_port
from tests.integration.preferences.events import customer_upserted

pytestmark = pytest.mark.integration
CONNECTIONS = 16  # all on one of two servers by chance: 2 in 2**16


class Counting(Preferences):
    calls = 0

    async def plan(self, customer_id: str, category: str) -> Any:
        self.calls += 1
        return await super().plan(customer_id, category)


@pytest.fixture
async def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'prefs.db'}"
    await asyncio.to_thread(migrate, url)
    store = PreferencesStore(url, "salt")
    await Preferences(store, ChangeFeed()).on_customer_event(customer_upserted("c-1"))
    yield store
    await store.close()


async def test_a_taken_port_fails_unless_replicas_share_it(store, tmp_path):
    port = free_port()
    first, _, _ = build_grpc_server(
        Settings(grpc_port=port, data_dir=tmp_path, allow_anonymous=True),
        Preferences(store, ChangeFeed()),
    )
    try:
        with pytest.raises(RuntimeError):
            build_grpc_server(
                Settings(grpc_port=port, data_dir=tmp_path, allow_anonymous=True),
                Preferences(store, ChangeFeed()),
            )
    finally:
        await first.stop(0)

    port = free_port()  # gRPC releases the first one's socket only when it is collected
    replicas = [Counting(store, ChangeFeed()) for _ in range(2)]
    servers = []
    for prefs in replicas:
        settings = Settings(
            grpc_port=port, grpc_reuse_port=True, data_dir=tmp_path, allow_anonymous=True
        )
        server, _, bound = build_grpc_server(settings, prefs)
        assert bound == port
        await server.start()
        servers.append(server)
    channels = [
        # a subchannel pool of its own: each channel opens its own connection
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CONNECTIONS)
    ]
    try:
        for channel in channels:
            stub = pb_grpc.PreferencesServiceStub(channel)  # type: ignore[no-untyped-call]
            plan = await stub.GetContactPlan(
                pb.GetContactPlanRequest(customer_id="c-1", category=pb.CATEGORY_SERVICE),
                timeout=5,
            )
            assert plan.customer_id == "c-1"
        assert sum(p.calls for p in replicas) == CONNECTIONS
        assert all(p.calls > 0 for p in replicas), [p.calls for p in replicas]
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(0)
