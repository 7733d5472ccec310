"""orders_watcher scaled out on the real broker (issue 3, items 4 and 5): two worker
processes in one consumer group on the wall clock, as in production; the second joins
mid-stream (a rebalance) and is then killed with SIGKILL (another one). Every incident
the stream implies appears, under its stable id, and nothing else does.

The stream is built so that its incidents do not depend on when each record happens to
be handled: thresholds of a few seconds, event times that follow the wall clock, and
scenarios whose outcome is a fact of event time (a gap between scans, a promise that
passed, a refund that never came). Absence-based incidents are most of them, because
they are the ones a rebalance can lose: the deadline lives in the dead worker's memory
until the survivor rebuilds it from the changelog.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from common.envelope import CloudEvent
from simulator.publisher import Publisher
from tests.conftest import events_consumed, free_port, wait_for
from tests.integration.orders_watcher.test_watcher_on_kafka import Watchers, incidents
from tests.unit.orders_watcher.timeline import TOPIC_OF, placed, return_event, scan, shipped

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STALL_S, LATENESS_S, REFUND_S, CHECKIN_S = 6.0, 1.0, 4.0, 4.0
SETTINGS = {
    "OUTREACH_CLOCK": "wall",
    "OUTREACH_KAFKA_SESSION_TIMEOUT_S": "6",
    "ORDERS_WATCHER_STALL_HOURS": str(STALL_S / 3600),
    "ORDERS_WATCHER_STALL_HOURS_EXPRESS": str(STALL_S / 3600),
    "ORDERS_WATCHER_REFUND_DAYS": str(REFUND_S / 86400),
    "ORDERS_WATCHER_CHECKIN_HOURS": str(CHECKIN_S / 3600),
    "ORDERS_WATCHER_ALLOWED_LATENESS_S": str(LATENESS_S),
    "ORDERS_WATCHER_TICK_INTERVAL_S": "0.25",
}
ORDERS, ORDERS_PER_S = 240, 8.0
Planned = tuple[float, CloudEvent]  # seconds after the start, event


def scenario(n: int, order_id: str, base: datetime) -> tuple[list[Planned], set[str]]:
    """Order n's events (seconds after `base`) and the incident kinds they must raise."""
    start = n / ORDERS_PER_S

    def at(seconds: float) -> datetime:
        return base + timedelta(seconds=start + seconds)

    far = base + timedelta(days=3)
    plan: list[Planned] = []

    def add(seconds: float, make: Any, **kw: Any) -> None:
        plan.append((start + seconds, make(order_id, at=at(seconds), **kw)))

    def order(ship_by: datetime = far) -> None:
        add(0, placed, ship_by=ship_by, deliver_by=far + timedelta(days=1))

    kind = n % 10
    if kind in (0, 1, 2, 3):  # on time: nothing to say
        order()
        add(0.5, shipped, estimate=far)
        add(1.0, scan, status="in_transit")
        add(2.0, scan, status="delivered")
        return plan, set()
    if kind in (4, 5):  # the parcel stops moving
        order()
        add(0.5, shipped, estimate=far)
        add(1.0, scan, status="in_transit")
        return plan, {"shipment_stalled"}
    if kind == 6:  # stalls, then arrives; a check-in follows the delivery
        order()
        add(0.5, shipped, estimate=far)
        add(1.0, scan, status="in_transit")
        add(1.0 + STALL_S + LATENESS_S + 3.0, scan, status="delivered")
        return plan, {"shipment_stalled", "post_incident_checkin"}
    if kind == 7:  # never dispatched
        order(ship_by=at(3.0))
        return plan, {"dispatch_late"}
    if kind == 8:  # lost by the carrier, and (SPEC §6) not moving any more either
        order()
        add(0.5, shipped, estimate=far)
        add(1.0, scan, status="exception", substatus="lost")
        return plan, {"carrier_exception", "shipment_stalled"}
    # delivered, returned, never refunded
    order()
    add(0.5, shipped, estimate=far)
    add(1.0, scan, status="delivered")
    add(1.5, lambda oid, **kw: return_event("requested", oid, **kw))
    add(2.0, lambda oid, **kw: return_event("received", oid, **kw))
    return plan, {"refund_late"}


class TimedPublisher(threading.Thread):
    """Publishes each planned event at its moment, so event time follows the wall clock."""

    def __init__(self, bootstrap: str, prefix: str, plan: list[Planned]) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.prefix, self.plan = prefix, sorted(plan, key=lambda p: p[0])
        self.producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all")
        self.started = time.monotonic()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        sent: list[Any] = []
        try:
            for offset, event in self.plan:
                delay = self.started + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                topic = self.prefix + TOPIC_OF[event.type.split(".")[0]]
                key, value = event.subject.encode(), event.to_bytes()
                sent.append(self.producer.send(topic, key=key, value=value))
                self.sent += 1
            self.producer.flush(timeout=30)
            for future in sent:
                future.get(timeout=30)  # every record is on the broker, or the test says why
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.producer.close(timeout=10)


def opened(events: list[dict]) -> dict[str, tuple[str, str]]:
    """incident id → (order id, kind), as downstream keeps them after deduplication."""
    return {
        e["data"]["incident_id"]: (e["data"]["order_id"], e["data"]["kind"])
        for e in events
        if e["type"] in ("incident.opened", "incident.checkin_due")
    }


@pytest.mark.parametrize("standby", [0, 1], ids=["no-standby", "standby-replica"])
def test_a_worker_joining_then_killed_mid_stream_loses_and_invents_no_incident(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, standby: int
) -> None:
    """With a standby replica (OUTREACH_TABLE_STANDBY_REPLICAS=1) each worker also keeps
    the other's table partitions from their changelog, and takes them over warm."""
    settings = SETTINGS | {"OUTREACH_TABLE_STANDBY_REPLICAS": str(standby)}
    base = datetime.now(UTC) + timedelta(seconds=8)  # the publisher starts in ~8 s
    plan: list[Planned] = []
    expected: set[tuple[str, str]] = set()
    for n in range(ORDERS):
        order_id = f"o-{n:04d}"
        events, kinds = scenario(n, order_id, base)
        plan += events
        expected |= {(order_id, kind) for kind in kinds}
    publisher = Publisher(kafka_bootstrap, topic_prefix)
    publisher.ensure_topics()
    publisher.close()

    watchers = Watchers(kafka_bootstrap, topic_prefix, tmp_path)
    first_port, second_port = free_port(), free_port()
    try:
        watchers.start("w1", ORDERS_WATCHER_HTTP_PORT=str(first_port), **settings)
        wait_for(lambda: _ready(first_port), timeout=90)
        time.sleep(max(0.0, (base - datetime.now(UTC)).total_seconds()))
        feed = TimedPublisher(kafka_bootstrap, topic_prefix, plan)
        feed.start()
        # A second worker joins mid-stream (once the first has handled the stream's first
        # 30 orders): the group rebalances and splits the partitions.
        wait_for(lambda: events_consumed(first_port) >= 60, timeout=60, interval=0.2)
        second = watchers.start("w2", ORDERS_WATCHER_HTTP_PORT=str(second_port), **settings)
        wait_for(lambda: events_consumed(second_port) >= 60, timeout=90, interval=0.2)
        # ... and is killed without warning while the stream and its deadlines run on.
        second.kill()
        second.wait(timeout=10)
        killed_at = time.monotonic() - feed.started
        assert feed.is_alive(), "the stream ended before the kill: nothing was in flight"

        def complete(events: list[dict]) -> bool:
            return expected <= set(opened(events).values())

        feed.join(timeout=120)
        assert feed.error is None, feed.error
        # Until every expected incident is there and nothing new (a duplicate a slow
        # survivor might still emit) came for a few seconds.
        events = incidents(
            kafka_bootstrap, topic_prefix + "outreach.incidents", 4.0, 150, enough=complete
        )
    finally:
        watchers.stop()

    (tmp_path / "incidents.json").write_bytes(orjson.dumps(events))
    got = opened(events)
    by_order_kind: dict[tuple[str, str], set[str]] = defaultdict(set)
    for iid, key in got.items():
        by_order_kind[key].add(iid)
    lost = expected - set(got.values())
    invented = set(got.values()) - expected
    where = f"(w2 killed {killed_at:.1f} s into the stream; logs in {tmp_path})"
    assert not lost, f"lost {len(lost)} incidents {where}: {sorted(lost)[:10]}"
    assert not invented, f"{len(invented)} incidents not in the stream {where}: {invented}"
    assert all(len(ids) == 1 for ids in by_order_kind.values()), "unstable incident ids"
    # The survivor kept the other's partitions as standbys (faust's recovery says so).
    standbys = "Starting standby partitions" in (tmp_path / "w1.log").read_text()
    assert standbys == bool(standby)
    # Re-emissions after the kill are allowed (downstream dedupes by id) but must agree:
    # the same incident id and revision always say the same thing.
    said: dict[tuple[str, int], set[tuple[str, str]]] = defaultdict(set)
    for e in events:
        said[(e["data"]["incident_id"], e["data"]["revision"])].add(
            (e["type"], e["data"]["status"])
        )
    assert all(len(v) == 1 for v in said.values()), "one revision, two meanings"
    kinds = Counter(kind for _, kind in expected)
    repeats = len(events) - len({(e["data"]["incident_id"], e["data"]["revision"]) for e in events})
    print(f"incidents {dict(kinds)}; {repeats} re-emitted after the kill {where}")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
