"""risk_detector as a real process on the real broker: from incidents, returns, orders and
feedback to outreach requests and hand-offs — a rhythm check-in fired by the absence of
orders across a restart (state recovered from the changelogs only), and a replay in
event-clock mode into a fresh app giving byte-for-byte the same output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from common.admin import ensure_topics
from common.envelope import CloudEvent, new_event
from common.marks import Mark
from common.topics import (
    CUSTOMERS,
    INCIDENTS,
    INPUT_TOPICS,
    ORDERS,
    RETURNS,
    SHIPMENTS,
    WATERMARKS,
    TopicSpec,
)
from tests.conftest import events_consumed, free_port, stop_process, wait_for
from tests.risk_scenario import LAPSE_CHECK, at, history

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 4
# The shop's facts are published one at a time, each once the app has handled the one
# before (and the order facts it re-keys): live, facts about a customer are hours apart;
# read faster than `rekey` forwards, they could reach `assess` in another order (a known
# limit, docs/risk.md), and a replay would differ from the live run for that reason alone.
ORDER_KEYED = frozenset({ORDERS, RETURNS})
ORDER_MEMORY_DAYS = 7


class Detector:
    """One risk_detector process (event clock, in-memory tables: a restart with a fresh
    data dir has nothing but the changelog topics to recover from)."""

    def __init__(self, bootstrap: str, prefix: str, tmp: Path, name: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(
            os.environ,
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            OUTREACH_TOPIC_PREFIX=prefix,
            OUTREACH_TOPIC_PARTITIONS=str(PARTITIONS),
            OUTREACH_CLOCK="event",
            OUTREACH_DATA_DIR=str(tmp / name),
            OUTREACH_HTTP_HOST="127.0.0.1",
            OUTREACH_KAFKA_SESSION_TIMEOUT_S="8",
            RISK_DETECTOR_HTTP_PORT=str(self.port),
            RISK_DETECTOR_STORE="memory://",
            RISK_DETECTOR_TICK_INTERVAL_S="0.5",
            # Short enough that the history's early orders are forgotten by its end.
            RISK_DETECTOR_ORDER_MEMORY_DAYS=str(ORDER_MEMORY_DAYS),
            PYTHONPATH=str(ROOT),
        )
        self.log = open(tmp / f"{name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.risk_detector"],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return orjson.loads(r.read())
        except (OSError, ValueError):
            return None

    def handled(self) -> int:
        """Input records handled so far (processed or dead-lettered), over every topic."""
        return events_consumed(self.port, ("processed", "dead_lettered"))

    def explain(self, customer: str) -> dict:
        return self.get(f"/customers/{customer}/explain") or {}

    def wait_ready(self) -> None:
        """Assigned and its tables recovered (so it reads as the shop writes)."""
        wait_for(lambda: self.get("/readyz"), timeout=60, message="risk_detector ready")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def create_inputs(bootstrap: str, prefix: str) -> None:
    names = [*INPUT_TOPICS, INCIDENTS]
    specs = [TopicSpec(prefix + t, PARTITIONS) for t in names]
    ensure_topics(bootstrap, [*specs, TopicSpec(prefix + WATERMARKS, 1)])


def publish(bootstrap: str, prefix: str, events: list, app: Detector | None = None) -> None:
    """Each event in turn, stamped with its time as the shop stamps its records; with
    `app`, each once `app` has handled the ones before (an order or return fact twice:
    by `rekey`, then re-keyed by `assess`). The test stands in for orders_watcher too:
    after each record, its mark says every incident up to that moment is published."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all")
    expected = app.handled() if app is not None else 0
    incidents: dict[tuple[str, int], int] = {}
    try:
        for topic, key, event in events:
            moment_ms = int(event.time.timestamp() * 1000)
            sent = producer.send(
                prefix + topic,
                key=key.encode(),
                value=event.to_bytes(),
                headers=[("content-type", b"application/cloudevents+json")],
                timestamp_ms=moment_ms,
            ).get(timeout=10)
            if topic == INCIDENTS:
                incidents[(sent.topic, sent.partition)] = sent.offset + 1
            watcher = Mark(
                service="orders_watcher",
                instance="test",
                inputs={prefix + t: PARTITIONS for t in (ORDERS, SHIPMENTS, RETURNS)},
                sources=tuple(
                    (prefix + t, p) for t in (ORDERS, SHIPMENTS, RETURNS) for p in range(PARTITIONS)
                ),
                at_ms=moment_ms + 1,
                outputs=dict(incidents),
            )
            producer.send(prefix + WATERMARKS, key=b"test", value=watcher.to_bytes(), partition=0)
            producer.flush()
            if app is not None:
                expected += 2 if topic in ORDER_KEYED else 1
                wait_for(
                    lambda n=expected: app.handled() >= n,
                    timeout=30,
                    interval=0.01,
                    message=f"{event.id} handled",
                )
    finally:
        producer.close()


def changelog(bootstrap: str, prefix: str, table: str) -> list[tuple[str, dict | None]]:
    """(key, value) of every record of a risk_detector table's changelog, in order."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        f"{prefix}risk_detector-{table}-changelog",
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=3000,
    )
    try:
        return [
            (r.key.decode(), orjson.loads(r.value) if r.value is not None else None)
            for r in consumer
        ]
    finally:
        consumer.close()


def outputs(bootstrap: str, prefix: str, expect: int, quiet_s: float = 4.0, timeout: float = 60):
    """Requests and hand-offs, once at least `expect` arrived and `quiet_s` passed with
    nothing new: {event id: event bytes} (a redelivered record has the same bytes)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        prefix + "outreach.requests",
        prefix + "support.handoffs",
        bootstrap_servers=bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    found: dict[str, bytes] = {}
    last_new = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            fresh = [r for rs in consumer.poll(timeout_ms=300).values() for r in rs]
            for record in fresh:
                event_id = orjson.loads(record.value)["id"]
                assert found.get(event_id, record.value) == record.value, "one id, two events"
                found[event_id] = record.value
            if fresh:
                last_new = time.monotonic()
            elif len(found) >= expect and time.monotonic() - last_new > quiet_s:
                break
    finally:
        consumer.close()
    return found


EXPECTED = 8  # 3 lost-parcel messages, 2 apologies, serial returns, the lapse, the hand-off


def test_incidents_returns_and_silence_become_requests_and_a_replay_repeats_them_exactly(
    kafka_bootstrap, tmp_path
):
    events = history()
    split = at(21.5)  # after c-lapse's last fact: after the restart only time passes for it
    before = [e for e in events if e[2].time < split]
    after = [e for e in events if e[2].time >= split]

    # Live: phase one, a restart with nothing local (tables from changelogs), phase two.
    prefix = f"rl{os.getpid()}."
    create_inputs(kafka_bootstrap, prefix)
    first = Detector(kafka_bootstrap, prefix, tmp_path, "live-1")
    try:
        first.wait_ready()
        publish(kafka_bootstrap, prefix, before, first)

        def lapse_known() -> bool:
            profile = first.explain("c-lapse").get("profile", {})
            return len(profile.get("feedback", [])) == 2 and profile.get("usual_gap_days") == 5

        wait_for(lapse_known, timeout=60, message="all of c-lapse's facts handled")
    finally:
        first.stop()
    second = Detector(kafka_bootstrap, prefix, tmp_path, "live-2")
    try:
        second.wait_ready()
        publish(kafka_bootstrap, prefix, after, second)
        live = outputs(kafka_bootstrap, prefix, EXPECTED)
    finally:
        second.stop()

    decided = [orjson.loads(v) for v in live.values()]
    by_kind: dict[str, list[dict]] = {}
    for event in decided:
        by_kind.setdefault(event["data"].get("message_kind", event["type"]), []).append(event)
    assert sorted((k, len(v)) for k, v in by_kind.items()) == [
        ("carrier_exception", 3),
        ("churn_risk", 1),
        ("merchant_fault_return", 2),
        ("serial_returns", 1),
        ("support.handoff.requested", 1),
    ], sorted(by_kind)
    lapse = by_kind["churn_risk"][0]
    assert lapse["data"]["customer_id"] == "c-lapse"
    assert lapse["time"] == LAPSE_CHECK.isoformat().replace("+00:00", "Z")
    assert "falling_order_rhythm" in {r["code"] for r in lapse["data"]["reasons"]}
    handoff = by_kind["support.handoff.requested"][0]["data"]
    assert handoff["customer_id"] == "c-vip" and handoff["risk_score"] >= 85
    assert {e["data"]["customer_id"] for e in by_kind["serial_returns"]} == {"c-return"}

    # Replay: the same input into a fresh app (fresh topics, fresh data dir, no restart).
    prefix = f"rr{os.getpid()}."
    create_inputs(kafka_bootstrap, prefix)
    replay = Detector(kafka_bootstrap, prefix, tmp_path, "replay")
    try:
        replay.wait_ready()
        publish(kafka_bootstrap, prefix, events, replay)
        again = outputs(kafka_bootstrap, prefix, EXPECTED)
        # Erasure: c-clock (ordering to the end, so remembered) vanishes from the profiles
        # and from the order -> customer memory, which another agent keeps.
        known = order_memory(kafka_bootstrap, prefix)[0]
        assert any(v["c"] == "c-clock" for v in known.values())
        end = max(e[2].time for e in events)
        publish(kafka_bootstrap, prefix, [erased("c-clock", end)])
        wait_for(
            lambda: not replay.explain("c-clock").get("profile"),
            timeout=30,
            message="c-clock's profile erased",
        )
        wait_for(
            lambda: all(
                v["c"] != "c-clock" for v in order_memory(kafka_bootstrap, prefix)[0].values()
            ),
            timeout=30,
            message="c-clock's orders forgotten",
        )
    finally:
        replay.stop()
    for key in sorted(live.keys() | again.keys()):
        if live.get(key) != again.get(key):
            print(f"differs: {key}\n  live:   {live.get(key)!r}\n  replay: {again.get(key)!r}")
    assert again == live, "the replay's outputs differ from the live run's (printed above)"

    # The order -> customer memory forgot the orders whose latest fact is more than
    # ORDER_MEMORY_DAYS behind the stream's time (tombstones on its changelog), and no other.
    remembered, forgotten = order_memory(kafka_bootstrap, prefix)
    expired = {k: v for k, v in forgotten.items() if v["c"] != "c-clock"}
    assert expired, "no order was forgotten"
    assert all(v["at"] + ORDER_MEMORY_DAYS * 86400 <= end.timestamp() for v in expired.values())
    assert all(v["c"].startswith("c-") for v in remembered.values())


def erased(customer: str, moment: datetime) -> tuple[str, str, CloudEvent]:
    event = new_event(
        type="customer.erased",
        source="/shop/customers",
        subject=customer,
        id=f"erase-{customer}",
        time=moment,
        data={"customer_id": customer},
    )
    return CUSTOMERS, customer, event


def order_memory(bootstrap: str, prefix: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """risk_detector's `order_customers` as its changelog says: (remembered, forgotten)
    order id -> last value written."""
    remembered: dict[str, dict] = {}
    forgotten: dict[str, dict] = {}
    for key, value in changelog(bootstrap, prefix, "order_customers"):
        if value is None:
            if key in remembered:
                forgotten[key] = remembered.pop(key)
        else:
            remembered[key] = value
    return remembered, forgotten
