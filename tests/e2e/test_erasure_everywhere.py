"""Erasure that reaches everything: a customer goes through a whole journey — known to
preferences, an order, a failed delivery, an email and an SMS, a reply to the email
(through SendGrid's Inbound Parse), a dead letter of theirs —
and is then erased through preferences' EraseCustomer. Afterwards every store is
searched for their email address, phone number and name: both databases, the RocksDB
data of the stream services, every topic of the pipeline (changelogs and dead letters
included) and the services' logs. Nothing may be found.

The erasure is what an operator does (docs/operations.md, "Erasing a customer"): the
RPC (preferences announces customer.erased; every service deletes what it keeps), then
`outreachctl deadletters purge SERVICE --customer ID` for the dead letters. Compaction
of commerce.customers removes the earlier upserts once customer.erased is the key's
latest record; the topic gets fast compaction settings here so the test can wait for it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from common.envelope import new_event
from common.kafka_security import client_options
from common.proto.outreach.preferences.v1 import preferences_pb2 as pb
from common.proto.outreach.preferences.v1 import preferences_pb2_grpc as pb_grpc
from tests.conftest import wait_for
from tests.doubles.twilio import provider_env
from tests.e2e.stack import ROOT, WRITE_TOKEN, Shop, Stack, TopicReader
from tests.e2e.test_walking_skeleton import at, consumed, order, publish_in_time_order, tracking
from tests.e2e.test_walking_skeleton import shipment as shipped

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

CUSTOMER = "c-zq"
FIRST, LAST = "Zephyrine", "Quillfeather"
EMAIL = "zephyrine.quill@example.com"
PHONE = "+4915112345678"
PERSONAL = (FIRST, LAST, EMAIL, PHONE.removeprefix("+"))
PARSE = ("parse", "erasure-test-password")


def upserted(event_id: str, **data: object):
    return new_event(
        type="customer.upserted",
        source="/shop/test",
        subject=CUSTOMER,
        time=at(-1),
        id=event_id,
        data={
            "customer_id": CUSTOMER,
            "first_name": FIRST,
            "last_name": LAST,
            "email": EMAIL,
            "phone": PHONE,
            "locale": "en-GB",
            "timezone": "Europe/London",
            "marketing_opt_in": False,
            **data,
        },
    )


@pytest.fixture
def stack(kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double):
    s = Stack(
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        extra_env={
            **provider_env(twilio_double, sendgrid_double),
            "OUTREACH_REPLY_DOMAIN": "replies.shop.example",
            "OUTREACH_REPLY_SECRET": "a-reply-secret-for-the-test",
            "OUTREACH_INBOUND_PARSE_USER": PARSE[0],
            "OUTREACH_INBOUND_PARSE_PASSWORD": PARSE[1],
        },
    )
    try:
        s.start()
        compact_fast(kafka_bootstrap, topic_prefix + "commerce.customers")
        yield s
    finally:
        s.stop()


def compact_fast(bootstrap: str, topic: str) -> None:
    """Segments that roll after a second and are cleaned as soon as they may be (the
    production topic compacts on the broker's defaults: within hours)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), **client_options())
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic,
                    configs={
                        "cleanup.policy": "compact",
                        "segment.ms": "1000",
                        "min.cleanable.dirty.ratio": "0.001",
                        "min.compaction.lag.ms": "0",
                        "max.compaction.lag.ms": "1000",
                    },
                )
            ]
        )
    finally:
        admin.close()


def every_topic(bootstrap: str, prefix: str) -> dict[str, bytes]:
    """Every record (key, value, headers) of every topic of this pipeline, as bytes."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, **client_options()
    )
    found: dict[str, bytes] = {}
    try:
        for topic in sorted(t for t in consumer.topics() if prefix in t):
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            chunks: list[bytes] = []
            deadline = time.monotonic() + 20
            while any(consumer.position(tp) < end[tp] for tp in tps):
                assert time.monotonic() < deadline, f"could not read {topic}"
                for batch in consumer.poll(timeout_ms=300).values():
                    for r in batch:
                        chunks += [r.key or b"", r.value or b""]
                        chunks += [v for _, v in r.headers or []]
            found[topic] = b"\n".join(chunks)
    finally:
        consumer.close()
    return found


def sqlite_dump(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


def files_under(path: Path) -> dict[str, bytes]:
    return {str(f): f.read_bytes() for f in path.rglob("*") if f.is_file()}


def found_in(text: bytes | str) -> list[str]:
    raw = text if isinstance(text, bytes) else text.encode()
    return [p for p in PERSONAL if p.encode() in raw]


def test_an_erased_customer_is_found_nowhere(
    stack, kafka_bootstrap, topic_prefix, twilio_double, sendgrid_double
):
    shop = Shop(kafka_bootstrap, topic_prefix)
    try:
        shop.publish("commerce.customers", CUSTOMER, upserted("zq-v1"))
        # A malformed event of theirs: it ends up in preferences' dead letters.
        shop.publish("commerce.customers", CUSTOMER, upserted("zq-bad", timezone="Mars/Olympus"))
        wait_for(
            lambda: consumed(stack, "preferences", "commerce.customers", "processed") >= 1,
            timeout=60,
            message="preferences to know the customer",
        )
        # An email (their first channel) for a failed delivery, an SMS for a lost parcel.
        publish_in_time_order(
            shop,
            [
                order("o-zq1", CUSTOMER, 1, 120),
                shipped("o-zq1", 5),
                tracking("o-zq1", 30, "attempt_failed"),
            ],
        )
        wait_for(lambda: sendgrid_double.messages, timeout=90, message="the email")
        assert EMAIL in str(sendgrid_double.messages[0])  # it really was about them
        # They answer it, signing with their name: outreach keeps the reply's words.
        reply_to = sendgrid_double.messages[0]["json"]["reply_to"]["email"]
        replies = TopicReader(kafka_bootstrap, topic_prefix + "outreach.replies")
        try:
            status = sendgrid_double.inbound_parse(
                f"http://127.0.0.1:{stack.ports['outreach']}/webhooks/sendgrid/inbound",
                from_=f"{FIRST} {LAST} <{EMAIL}>",
                to=reply_to,
                text=f"Thanks so much for letting me know!\n{FIRST} {LAST}",
                auth=PARSE,
            )
            assert status == 204
            wait_for(replies.poll, timeout=30, message="the reply read")
        finally:
            replies.close()

        before = personal_data_left(stack, kafka_bootstrap, topic_prefix)
        # The search finds them where they were kept (so that it can find them at all).
        assert {"preferences database", "outreach database"} <= set(before), before
        assert f"topic {topic_prefix}commerce.customers" in before
        assert f"topic {topic_prefix}deadletter.preferences" in before

        erase(stack)
        purge_dead_letters(stack)
        # Rolls a segment (the broker rolls by record time: stamped now, after the
        # preferences service's tombstone).
        shop.publish(
            "commerce.customers", "c-other", other_customer(), stamp_ms=int(time.time() * 1000)
        )

        left: dict[str, list[str]] = {}

        def clean() -> bool:
            nonlocal left
            left = personal_data_left(stack, kafka_bootstrap, topic_prefix)
            return not left

        try:
            wait_for(clean, timeout=120, interval=3, message="every store to be clean")
        except AssertionError:
            raise AssertionError(f"personal data left after the erasure: {left}") from None
    finally:
        shop.close()


def personal_data_left(stack: Stack, bootstrap: str, prefix: str) -> dict[str, list[str]]:
    """Where the customer's email, phone or name can still be found."""
    stores: dict[str, bytes | str] = {
        "preferences database": sqlite_dump(stack.data_dir / "preferences" / "preferences.db"),
        "outreach database": sqlite_dump(stack.data_dir / "outreach" / "outreach.db"),
    }
    for service in ("risk_detector", "orders_watcher"):
        stores.update(files_under(stack.data_dir / service))
    for topic, data in every_topic(bootstrap, prefix).items():
        stores[f"topic {topic}"] = data
    for service in ("preferences", "orders_watcher", "risk_detector", "outreach"):
        stores[f"{service} log"] = stack.logs(service)
    return {where: hits for where, data in stores.items() if (hits := found_in(data))}


def erase(stack: Stack) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.ports['grpc']}")
    try:
        stub = pb_grpc.PreferencesServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.EraseCustomer(
            pb.EraseCustomerRequest(customer_id=CUSTOMER),
            metadata=[("authorization", f"Bearer {WRITE_TOKEN}")],
            timeout=10,
        )
        assert reply.erased
    finally:
        channel.close()


def purge_dead_letters(stack: Stack) -> None:
    for service in ("preferences", "orders_watcher", "risk_detector", "outreach"):
        done = subprocess.run(
            [sys.executable, "-m", "common.cli", "deadletters", "purge", service,
             "--customer", CUSTOMER, "--yes"],
            env=stack.env(), cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


def other_customer():
    return new_event(
        type="customer.upserted",
        source="/shop/test",
        subject="c-other",
        time=at(2),
        id="other-v1",
        data={
            "customer_id": "c-other",
            "first_name": "Olaf",
            "locale": "en-GB",
            "timezone": "Europe/London",
            "marketing_opt_in": False,
            "email": "olaf@example.com",
        },
    )
