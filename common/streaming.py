"""Faust plumbing shared by the stream services (orders_watcher, risk_detector).

Topics carry raw bytes: decoding is ours (common.envelope / common.schemas), so that a
malformed value reaches the dead-letter topic with its original bytes instead of
crashing the agent inside faust's codec.
"""

from __future__ import annotations

from typing import Any

import faust
from yarl import URL

from common.kafka import Headers, InputMessage, ProducerPort
from common.settings import ServiceSettings


def create_app(
    service: str, settings: ServiceSettings, *, store: str, **overrides: Any
) -> faust.App:
    brokers = [URL(f"kafka://{host}") for host in settings.kafka_bootstrap_servers.split(",")]
    options: dict[str, Any] = dict(
        broker=brokers,
        store=store,
        datadir=str(settings.service_dir(service) / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=200,
        broker_commit_interval=1.0,
        stream_wait_empty=False,
        table_standby_replicas=0,
        autodiscover=False,
    )
    options.update(overrides)
    return faust.App(f"{settings.topic_prefix}{service}", **options)


def raw_topic(app: faust.App, *names: str, **kwargs: Any) -> faust.TopicT:
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        **kwargs,
    )


def input_message(event: faust.EventT) -> InputMessage:
    message = event.message
    headers = message.headers or []
    if isinstance(headers, dict):
        header_list: Headers = [(k, v) for k, v in headers.items()]
    else:
        header_list = [(k, v) for k, v in headers]
    return InputMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=header_list,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


class FaustProducer(ProducerPort):
    """Sends through the faust app's own producer (flushed before every offset commit)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        await self.app.producer.send_and_wait(
            topic, key, value, partition=None, timestamp=None, headers=headers
        )


def caught_up(app: faust.App, msg: InputMessage) -> bool:
    """Whether the message's partition holds nothing more to read (for the event clock)."""
    from faust.types import TP

    highwater = app.consumer.highwater(TP(msg.topic, msg.partition))
    return highwater is None or msg.offset + 1 >= highwater
