"""The event clock: the watermark of consumed event times, held back by partitions that
still hold unread (possibly older) events, never going back."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from common.clock import EPOCH, EventClock

T0 = datetime(2026, 3, 2, tzinfo=UTC)


class Reference:
    """The watermark's definition, recomputed from scratch at every step."""

    def __init__(self) -> None:
        self.latest: dict[Hashable, datetime] = {}
        self.pending: set[Hashable] = set()
        self.now = EPOCH

    def step(self) -> None:
        if not self.latest:
            return
        lagging = [self.latest.get(p, self.now) for p in self.pending]
        candidate = min(lagging) if lagging else max(self.latest.values())
        self.now = max(self.now, candidate)


operations = st.lists(
    st.tuples(
        st.sampled_from(["observe", "observe", "observe", "hold", "release", "advance"]),
        st.integers(0, 3),
        st.integers(0, 500),
        st.booleans(),
    ),
    max_size=60,
)


@given(operations)
def test_the_watermark_is_the_one_its_definition_gives_at_every_step(ops) -> None:
    clock, ref = EventClock(), Reference()
    for op, partition, minutes, caught_up in ops:
        moment = T0 + timedelta(minutes=minutes)
        if op == "observe":
            clock.observe(partition, moment, caught_up=caught_up)
            ref.latest[partition] = max(ref.latest.get(partition, EPOCH), moment)
            (ref.pending.discard if caught_up else ref.pending.add)(partition)
            ref.step()
        elif op == "hold":
            clock.hold(partition)
            ref.pending.add(partition)
        elif op == "release":
            clock.release(partition)
            ref.pending.discard(partition)
            ref.step()
        else:
            clock.advance_to(moment)
            ref.now = max(ref.now, moment)
        assert clock.now() == ref.now


def test_a_partition_with_unread_events_holds_the_watermark_back() -> None:
    clock = EventClock()
    clock.observe("shipments", T0 + timedelta(hours=1), caught_up=False)
    clock.observe("orders", T0 + timedelta(hours=5), caught_up=True)
    assert clock.now() == T0 + timedelta(hours=1)  # shipments may still hold older ones
    clock.observe("shipments", T0 + timedelta(hours=3), caught_up=True)
    assert clock.now() == T0 + timedelta(hours=5)
    clock.observe("orders", T0 + timedelta(hours=2), caught_up=True)  # late: no way back
    assert clock.now() == T0 + timedelta(hours=5)


def test_times_in_any_offset_count_as_the_same_instant() -> None:
    clock = EventClock()
    clock.observe(
        "p", datetime(2026, 3, 2, 10, tzinfo=timezone(timedelta(hours=2))), caught_up=True
    )
    assert clock.now() == datetime(2026, 3, 2, 8, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
