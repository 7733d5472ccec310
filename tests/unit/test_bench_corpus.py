"""The benchmark's laps: one after another, or overlapping (the `continuous` story)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from bench.corpus import Corpus, Record, _record

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def story() -> list[Record]:
    """Two orders over ten days; the second order's scan arrives late (out of time order)."""

    def event(order: int, eid: str, day: float) -> Record:
        moment = (T0 + timedelta(days=day)).isoformat().replace("+00:00", "Z")
        order_id = f"ord-99-{order:07d}"
        value = orjson.dumps(
            {"id": f"evt-99-{eid}", "time": moment, "data": {"order_id": order_id}}
        )
        return _record("commerce.orders", order_id.encode(), value)

    return [
        event(1, "0000001", 0),
        event(2, "0000002", 1),
        event(1, "0000003", 6),
        event(2, "0000004", 9),
        event(2, "0000005", 8.5),  # late
        event(1, "0000006", 10),
    ]


def test_laps_follow_one_another_by_default():
    base = story()
    records = Corpus(base).take_laps(2)
    assert [r.order_id for r in records[:6]] == [r.order_id for r in base]
    assert {r.order_id for r in records[6:]} == {"ord-99-0000001.1", "ord-99-0000002.1"}
    assert min(r.time for r in records[6:]) > max(r.time for r in records[:6])


def test_overlapping_laps_are_merged_in_event_time_each_in_its_own_order():
    base = story()
    corpus = Corpus(base, period=timedelta(days=5))
    records = corpus.take_laps(3)
    assert len(records) == 3 * len(base)
    assert len({r.event_id for r in records}) == len(records)
    for lap in range(3):
        mine = [r for r in records if r.order_id.partition(".")[2] == (str(lap) if lap else "")]
        # Every event of the lap, in the lap's order (the late scan stays late), moved by
        # `lap` periods, its ids renamed (laps 0 and 1 whole; lap 2 as far as it got while
        # lap 3 began: three laps' worth of records, not three whole laps).
        expected = [b.time + lap * 5 * 86400 for b in base]
        assert [r.time for r in mine] == expected[: len(mine)]
        assert len(mine) == len(base) or lap == 2
        if lap:
            assert all(f".{lap}" in r.event_id for r in mine)
            moved = orjson.loads(mine[0].value)["time"].replace("Z", "+00:00")
            assert datetime.fromisoformat(moved) == T0 + timedelta(days=5 * lap)
    # Lap 1 starts (day 5) while lap 0 still plays out: right after lap 0's day 1.
    assert [r.order_id for r in records[:4]] == [
        "ord-99-0000001",
        "ord-99-0000002",
        "ord-99-0000001.1",
        "ord-99-0000001",
    ]


def test_a_restart_begins_with_a_lap_nothing_was_taken_from():
    base = story()
    for corpus in (Corpus(base), Corpus(base, period=timedelta(days=5))):
        corpus.take(len(base) + 3)  # into lap 1 (and, overlapping, lap 2 begun)
        corpus.restart()
        records = corpus.take_laps(1)
        first = min(int(r.order_id.partition(".")[2] or 0) for r in records)
        assert first >= 2 and records[0].order_id.endswith(f".{first}")
        assert records[0].time == base[0].time + first * corpus.shift.total_seconds()
