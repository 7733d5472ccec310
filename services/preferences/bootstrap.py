"""Wires preferences: store, handlers, gRPC server, Kafka consumer, ops server."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common import tracing
from common.admin import ensure_topics
from common.clock import wall_now
from common.envelope import CloudEvent, derived_id, new_event
from common.heap import freeze_startup_objects
from common.kafka import (
    AiokafkaProducer,
    ConsumerLoop,
    DeadLetters,
    InputMessage,
    MessageProcessor,
    Outgoing,
)
from common.logs import get_logger
from common.marks import AppliedFront, MarkPublisher, instance_name
from common.metrics import EVENTS_CONSUMED
from common.ops_http import Heartbeat, OpsServer
from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from common.streaming import StreamFront
from common.topics import WATERMARKS_RETENTION_MS, TopicSpec
from services.preferences.adapters.change_feed import ChangeFeed, PostgresChangeFeed
from services.preferences.adapters.store import PreferencesStore, migrate, postgres_dsn
from services.preferences.config import Settings
from services.preferences.entrypoints.grpc_api import PreferencesServicer
from services.preferences.entrypoints.grpc_guard import OpsInterceptor, ReflectionDescriptors
from services.preferences.handlers import Preferences

SERVICE = "preferences"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PreferencesService"].full_name
log = get_logger(__name__)


def build_grpc_server(
    settings: Settings, prefs: Preferences
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    server = grpc.aio.server(
        interceptors=[*tracing.grpc_server_interceptors(), OpsInterceptor(settings.credentials())],
        options=[("grpc.so_reuseport", 1 if settings.grpc_reuse_port else 0)],
    )
    pb_grpc.add_PreferencesServiceServicer_to_server(  # type: ignore[no-untyped-call]
        PreferencesServicer(prefs), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
        pool=ReflectionDescriptors(descriptor_pool.Default()),
    )
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.tls_cert and settings.tls_key:
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    return server, health_servicer, port


def change_feed(store: PreferencesStore) -> ChangeFeed:
    """Every replica's changes from PostgreSQL; this process's own with SQLite."""
    if store.engine.dialect.name == "postgresql":
        return PostgresChangeFeed(postgres_dsn(store.url))
    return ChangeFeed()


class ErasureAnnouncements:
    """`customer.erased` on commerce.customers, as the shop would publish it: every
    service that keeps something of the customer hears it and deletes it."""

    def __init__(self, producer: AiokafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def announce(self, customer_id: str) -> None:
        at = wall_now()
        event = new_event(
            type="customer.erased",
            source="/outreach/preferences",
            subject=customer_id,
            time=at,
            id=derived_id("erased", customer_id, at.isoformat()),
            data={"customer_id": customer_id},
        )
        record = Outgoing(self.topic, customer_id, event)
        await self.producer.send(
            self.topic, customer_id.encode(), event.to_bytes(), record.headers()
        )


def applied_front(
    settings: Settings, producer: AiokafkaProducer
) -> Callable[[Any, dict[Any, list[Any]]], Awaitable[None]] | None:
    """On the event clock: marks saying how far the customers' contact data is applied,
    so that outreach decides no record before the contact data stamped earlier is in
    (common/marks.py). None on the wall clock."""
    if settings.outreach_clock != "event":
        return None
    topics = settings.topics

    async def send(topic: str, key: bytes, value: bytes) -> None:
        await producer.send(topic, key, value, [])

    publisher = MarkPublisher(
        SERVICE,
        instance_name(SERVICE),
        {topics.customers: settings.topic_partitions},
        topics.watermarks,
        send,
        outputs=(),
    )
    shop = [topics.orders, topics.shipments, topics.returns, topics.customers, topics.feedback]
    front = StreamFront(settings.kafka_bootstrap_servers, shop, settings.topic_partitions)
    return AppliedFront(publisher, [topics.customers], front).after_batch


def own_topics(settings: Settings) -> list[TopicSpec]:
    """The topics preferences reads and writes, made if missing."""
    topics, partitions = settings.topics, settings.topic_partitions
    specs = [
        TopicSpec(topics.customers, partitions, compacted=True),
        TopicSpec(topics.optouts, partitions),
        TopicSpec(topics.deadletter(SERVICE), 1),
    ]
    if settings.outreach_clock == "event":
        specs.append(TopicSpec(topics.watermarks, 1, retention_ms=WATERMARKS_RETENTION_MS))
    return specs


def input_consumer(
    settings: Settings, prefs: Preferences, producer: AiokafkaProducer, heartbeat: Heartbeat
) -> ConsumerLoop:
    """The shop's customer records and outreach's opt-outs, applied in order per
    partition; on the event clock each round ends with a mark of how far (applied_front)."""
    topics = settings.topics

    async def handle(msg: InputMessage, event: CloudEvent) -> None:
        if msg.topic == topics.optouts:
            outcome = await prefs.on_optout_event(event)
        else:
            outcome = await prefs.on_customer_event(event)
        if outcome != "processed":
            EVENTS_CONSUMED.labels(SERVICE, msg.topic, outcome).inc()

    processor = MessageProcessor(
        SERVICE,
        handle,
        DeadLetters(producer, topics.deadletter(SERVICE), SERVICE),
        settings.make_clock(),
    )
    return ConsumerLoop(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.topic_prefix}{SERVICE}",
        topics=[topics.customers, topics.optouts],
        processor=processor,
        heartbeat=heartbeat,
        client_id=SERVICE,
        session_timeout_s=settings.kafka_session_timeout_s,
        after_batch=applied_front(settings, producer),
    )


@dataclass
class PreferencesService:
    """preferences, wired: the store and its change feed, the handlers, the producer, the
    consumer, the gRPC server with its health service, and the ops server."""

    settings: Settings
    store: PreferencesStore
    feed: ChangeFeed
    producer: AiokafkaProducer
    prefs: Preferences
    consumer: ConsumerLoop
    server: grpc.aio.Server
    health_service: health.aio.HealthServicer
    grpc_port: int
    ops: OpsServer

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        await self._start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        consuming = asyncio.create_task(self.consumer.run())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([consuming, stopping], return_when=asyncio.FIRST_COMPLETED)
        if consuming.done() and consuming.exception() is not None:
            log.error("consumer_died", error=repr(consuming.exception()))
        await self.health_service.enter_graceful_shutdown()
        await self.consumer.stop()
        consuming.cancel()
        await self.server.stop(self.settings.shutdown_grace_s)
        await self.ops.stop()
        await self.producer.stop()
        await self.feed.stop()
        await self.store.close()
        log.info("stopped")

    async def _start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        await self.server.start()
        await self.health_service.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self.health_service.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.ops.start()
        frozen = freeze_startup_objects()
        log.info(
            "started",
            grpc_port=self.grpc_port,
            http_port=self.ops.port,
            database=self.settings.db_url().split(":", 1)[0],
            gc_frozen_objects=frozen,
        )


async def bootstrap(settings: Settings) -> PreferencesService:
    """preferences, wired: the database migrated, the change feed started, the topics
    made."""
    url = settings.db_url()
    await asyncio.to_thread(migrate, url)
    store = PreferencesStore(url, settings.salt())
    feed = change_feed(store)
    await feed.start()
    producer = AiokafkaProducer(settings.kafka_bootstrap_servers, f"{SERVICE}")
    prefs = Preferences(
        store,
        feed,
        tuple(settings.default_channel_order.split(",")),
        erasures=ErasureAnnouncements(producer, settings.topics.customers),
    )
    ensure_topics(settings.kafka_bootstrap_servers, own_topics(settings))
    heartbeat = Heartbeat()
    consumer = input_consumer(settings, prefs, producer, heartbeat)
    server, health_servicer, port = build_grpc_server(settings, prefs)
    ops = OpsServer(
        settings.http_host,
        settings.http_port,
        heartbeat,
        checks={
            "database": store.ping,
            "kafka_assignment": consumer.ready,
            "change_feed": lambda: feed.live,
        },
    )
    return PreferencesService(
        settings, store, feed, producer, prefs, consumer, server, health_servicer, port, ops
    )


async def serve(settings: Settings) -> None:
    await (await bootstrap(settings)).run()
