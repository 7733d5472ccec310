"""A rehearsal on the real broker (docs/rehearsal.md): the live pipeline has run a shop's
days; `outreachctl rehearse` replays the retained input with a lowered stall threshold
— in one process, and again through the four services in a namespace of their own on
the broker, which report the same — and reports more customers reached than the live
run, and nothing live changes: the live topics' end offsets, the live ledger and what the
provider doubles accepted are the same before and after, and the rehearsal's topics
are gone."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.topics import WATERMARKS
from services.outreach.rehearsal.rest import wait_at_rest
from tests.conftest import wait_for
from tests.doubles.twilio import provider_env
from tests.e2e.stack import ROOT, Shop, Stack
from tests.e2e.test_walking_skeleton import (
    at,
    customer,
    order,
    publish_in_time_order,
    shipment,
    tracking,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def live(kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double):
    stack = Stack(kafka_bootstrap, topic_prefix, tmp_path / "live",
                  extra_env=provider_env(twilio_double, sendgrid_double))  # fmt: skip
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def story(shop: Shop) -> None:
    """Ann's parcel goes 30 hours without a scan (not stalled at the live 72 h, stalled
    at 24 h), Ben's order is late for everyone, Cai's goes well."""
    for cid, name in (("c-ann", "Ann"), ("c-ben", "Ben"), ("c-cai", "Cai")):
        email = f"{name.lower()}@example.com"
        event = customer(cid, name, locale="en-GB", tz="Europe/London", email=email)
        shop.publish("commerce.customers", cid, event)
    publish_in_time_order(shop, [
        order("o-ann", "c-ann", 0, 120), shipment("o-ann", 10), tracking("o-ann", 12, "in_transit"),
        tracking("o-ann", 42, "in_transit"), tracking("o-ann", 60, "delivered"),
        order("o-ben", "c-ben", 1, 30), shipment("o-ben", 5), tracking("o-ben", 6, "in_transit"),
        tracking("o-ben", 50, "delivered"),
        order("o-cai", "c-cai", 2, 120), shipment("o-cai", 8), tracking("o-cai", 20, "delivered"),
        order("o-end", "c-cai", 90, 200),  # the story's clock moves on past every deadline
    ])  # fmt: skip


def live_state(stack: Stack, bootstrap: str, doubles: tuple[Any, Any]) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    from common.kafka_security import client_options

    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), **client_options())
    try:
        # The services' marks keep coming while they idle: not a change of the story.
        topics = sorted(
            t
            for t in consumer.topics()
            if t.startswith(stack.prefix) and not t.endswith(WATERMARKS)
        )
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t)]
        ends = {f"{tp.topic}/{tp.partition}": end for tp, end in consumer.end_offsets(tps).items()}
        rehearsals = sorted(t for t in consumer.topics() if t.startswith("rehearsal-"))
    finally:
        consumer.close()
    with sqlite3.connect(stack.data_dir / "outreach" / "outreach.db") as db:
        ledger = db.execute("SELECT * FROM deliveries ORDER BY decision_id").fetchall()
        reached = db.execute(
            "SELECT DISTINCT customer_id FROM deliveries WHERE status IN ('sent', 'delivered')"
        ).fetchall()
    twilio, sendgrid = doubles
    return {"ends": ends, "ledger": ledger, "sent": (len(twilio.messages), len(sendgrid.messages)),
            "reached": {r[0] for r in reached}, "rehearsal topics": rehearsals}  # fmt: skip


def rehearse(
    stack: Stack, bootstrap: str, work: Path, providers: dict[str, str], *args: str
) -> dict[str, Any]:
    """`outreachctl rehearse` with the live worker's environment: its cluster, prefix,
    database and provider credentials (which it must not use)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("KAFKA_") or k in ("PATH",)}
    env |= providers | {
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "OUTREACH_TOPIC_PREFIX": stack.prefix,
        "OUTREACH_DATABASE_URL": f"sqlite:///{stack.data_dir / 'outreach' / 'outreach.db'}",
        "OUTREACH_DATA_DIR": str(work),
    }
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "rehearse", "--from", at(-2).isoformat(),
         "--until", at(100).isoformat(), "--output", "json", "--timeout", "180", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        raise AssertionError(
            f"not one JSON document:\n{done.stdout[:3000]}\n{done.stderr[-3000:]}"
        ) from None


def readable(samples: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The samples as read, their links aside (signed with each rehearsal's own secrets)."""
    return [
        (s["message_kind"], s["locale"], s["channel"], s["subject"] or "",
         re.sub(r"https?://\S+", "<link>", s["text"]))
        for s in samples
    ]  # fmt: skip


def test_a_lowered_threshold_reaches_more_customers_and_changes_nothing_live(
    live, kafka_bootstrap, topic_prefix, tmp_path, twilio_double, sendgrid_double
):
    shop = Shop(kafka_bootstrap, topic_prefix)
    try:
        story(shop)
    finally:
        shop.close()
    wait_for(lambda: sendgrid_double.messages, timeout=90, message="Ben's apology")
    wait_at_rest(kafka_bootstrap, topic_prefix, quiet_s=5, timeout_s=120, skip=(WATERMARKS,))
    doubles = (twilio_double, sendgrid_double)
    before = live_state(live, kafka_bootstrap, doubles)
    reached_live = before["reached"]
    assert "c-ben" in reached_live and "c-ann" not in reached_live  # not stalled at 72 h

    rules = tmp_path / "stall.env"
    rules.write_text("# stalled after a day without a scan\nORDERS_WATCHER_STALL_HOURS=24\n")
    providers = provider_env(twilio_double, sendgrid_double)
    lowered = rehearse(
        live, kafka_bootstrap, tmp_path / "lowered", providers, "--rules", str(rules)
    )
    assert lowered["customers_reached"] == len(reached_live) + 1, lowered
    assert lowered["live"]["only_rehearsed_ids"] == ["c-ann"]
    assert lowered["live"]["only_live"] == 0
    kinds = {(s["message_kind"], s["locale"]) for s in lowered["samples"]}
    assert ("shipment_stalled", "en") in kinds and ("delivery_late", "en") in kinds
    stalled = next(s for s in lowered["samples"] if s["message_kind"] == "shipment_stalled")
    # Rendered as the customers would read it (Ben's parcel, too, stood still for a day).
    # (The first name masked: a report is kept and shown, and names nobody.)
    assert stalled["text"].startswith("Hello [first name],") and "o-" in stalled["text"]
    assert "Ann" not in json.dumps(lowered) and "Ben" not in json.dumps(lowered)

    # Replayed in one process (the default) as through the four services on the broker.
    services = rehearse(
        live, kafka_bootstrap, tmp_path / "services", providers, "--rules", str(rules),
        "--through-services",
    )  # fmt: skip
    for part in ("customers_reached", "messages", "segments", "suppressed", "failed", "live"):
        assert services[part] == lowered[part], part
    assert readable(services["samples"]) == readable(lowered["samples"])

    after = live_state(live, kafka_bootstrap, doubles)
    assert after == before  # nothing live moved, no rehearsal topic is left

    # The same rules as live: the rehearsal reaches whom the live run reached.
    same = rehearse(live, kafka_bootstrap, tmp_path / "same", providers)
    assert same["customers_reached"] == len(reached_live)
    assert same["live"]["rehearsed"] == same["live"]["live"]
    assert (same["live"]["only_rehearsed"], same["live"]["only_live"]) == (0, 0)
