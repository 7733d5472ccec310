"""orders_watcher on the real broker: what it cannot use goes to its dead-letter topic,
the original bytes with the reason, while the rest of the stream is judged as usual.

Orphans (shipments and returns of orders that never come) are held for the configured
time and then released as dead letters; malformed records and unknown statuses are
dead-lettered at once. Neither stops the watcher nor costs it the valid records around
them."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

import orjson
import pytest
from msgspec import structs

from simulator.shop import Emission
from tests.conftest import events_consumed, free_port, wait_for
from tests.integration.orders_watcher.test_watcher_on_kafka import (
    Watchers,
    incidents,
    publish,
    read_topic,
    record_stream,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WATCHED = ("commerce.orders", "commerce.shipments", "commerce.returns")


def dead_letters(
    bootstrap: str, topic: str, orphans: set[str], bad: int, timeout: float = 150
) -> list:
    """The records on the dead-letter topic, once every orphan's and `bad` others are
    there (or at `timeout`). Not a count of records: a copy of an orphan may or may not
    get a letter of its own (merged into the hold, or after its release)."""

    def complete(found: list) -> bool:
        released, others = set(), 0
        for record in found:
            if dict(record.headers).get("dlq.reason.code") == b"orphan_expired":
                released.add(orjson.loads(record.value)["id"])
            else:
                others += 1
        return released >= orphans and others >= bad

    return read_topic(bootstrap, topic, 0.5, timeout, complete)


def with_bad_input(
    stream: list[Emission],
) -> tuple[list[Emission], list[Emission], set[str], list[Emission]]:
    """The recorded stream without the order.placed of every fourth uncancelled order that
    has shipments (their shipments and returns become orphans), with malformed records and
    unknown statuses among the rest; and, to publish once those are read, orders a day
    after the end on every partition, so that the event clock passes every orphan's hold.
    Returns the stream, those later orders, the ids of the orphaned events, and the
    records that are bad in themselves."""
    watched = [e for e in stream if e.topic in WATCHED]
    cancelled = {e.key for e in watched if e.event and e.event.type == "order.cancelled"}
    shipped = sorted({e.key for e in watched if e.topic == "commerce.shipments"} - cancelled)
    dropped = set(shipped[::4])
    orphans = {
        e.event.id
        for e in watched
        if e.key in dropped and e.topic != "commerce.orders" and e.event is not None
    }
    kept = [
        e
        for e in watched
        if not (e.key in dropped and e.event is not None and e.event.type == "order.placed")
    ]
    tracking = [e for e in kept if e.event and e.event.type == "shipment.tracking_updated"]
    bad: list[Emission] = []
    for n, e in enumerate(tracking[:40:2]):
        assert e.event is not None
        if n % 2:
            bad.append(replace(e, raw=b'{"specversion": "1.0", "id": "cut-' + str(n).encode()))
        else:
            data = {**e.event.data, "status": "teleported"}
            bad.append(replace(e, event=structs.replace(e.event, id=f"bad-{n}", data=data)))
    every = len(kept) // (len(bad) + 1)
    mixed: list[Emission] = []
    for i, e in enumerate(kept):
        mixed.append(e)
        if i % every == every - 1 and i // every < len(bad):
            mixed.append(bad[i // every])
    placed = next(e.event for e in kept if e.event and e.event.type == "order.placed")
    assert placed is not None
    end = max(e.at for e in kept) + timedelta(days=1)
    later: list[Emission] = []
    for n in range(16):  # keys on every partition
        order_id = f"ord-late-{n}"
        event = structs.replace(
            placed,
            id=f"late-{n}",
            subject=order_id,
            time=end,
            data={**placed.data, "order_id": order_id},
        )
        later.append(Emission(end, "commerce.orders", order_id, event))
    return mixed, later, orphans, bad


def test_orphans_and_bad_records_are_dead_lettered_and_the_rest_is_judged(
    kafka_bootstrap, tmp_path
):
    prefix = f"dl{os.getpid()}."
    stream, later, orphans, bad = with_bad_input(record_stream())
    orphan_records = sum(1 for e in stream if e.event and e.event.id in orphans)
    assert len(orphans) > 20 and len(bad) == 20
    watchers = Watchers(kafka_bootstrap, prefix, tmp_path)
    port = free_port()
    try:
        watcher = watchers.start("w1", ORDERS_WATCHER_HTTP_PORT=str(port))
        publish(kafka_bootstrap, prefix, stream)
        # The day after, once the stream is read: an orphan read after it would be held
        # an hour from then.
        wait_for(
            lambda: events_consumed(port) >= len(stream),
            timeout=120,
            interval=0.2,
            message="the watcher to read the stream",
        )
        publish(kafka_bootstrap, prefix, later)
        letters = dead_letters(
            kafka_bootstrap, f"{prefix}deadletter.orders_watcher", orphans, len(bad)
        )
        opened = incidents(kafka_bootstrap, f"{prefix}outreach.incidents")
        assert watcher.poll() is None, "the watcher must not exit on bad input"
    finally:
        watchers.stop()

    by_code: dict[str, list] = {}
    for record in letters:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["dlq.service"] == "orders_watcher"
        assert headers["dlq.reason"], "every dead letter says why"
        assert headers["dlq.original.topic"].startswith(prefix)
        by_code.setdefault(headers["dlq.reason.code"], []).append(record)

    released = by_code.pop("orphan_expired", [])
    assert {orjson.loads(r.value)["id"] for r in released} == orphans
    # One dead letter per input record: a copy of an orphan that came after the first was
    # released (a carrier's duplicate an hour late) is an input of its own.
    origins = [dict(r.headers) for r in released]
    where = {
        (h["dlq.original.topic"], h["dlq.original.partition"], h["dlq.original.offset"])
        for h in origins
    }
    assert len(where) == len(released)
    assert len(orphans) <= len(released) <= orphan_records
    reasons = {dict(r.headers)["dlq.reason"].decode() for r in released}
    assert all("no order.placed for order" in reason for reason in reasons)

    # The malformed and the unknown statuses: the original bytes, each once.
    assert sorted(r.value for rs in by_code.values() for r in rs) == sorted(e.value() for e in bad)
    assert set(by_code) == {"not_json", "bad_data"}

    # The valid records around them were judged: incidents of the orders kept, none of
    # the orphaned ones.
    assert len(opened) > 20
    orphaned_orders = {orjson.loads(r.value)["data"]["order_id"] for r in released}
    assert not {e["data"]["order_id"] for e in opened} & orphaned_orders
