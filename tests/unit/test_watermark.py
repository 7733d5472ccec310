"""The event clock's aligner: one order of release, whatever order the fetches bring."""

from __future__ import annotations

import random

import pytest

from common.watermark import Aligner

A, B, C = ("t", 0), ("t", 1), ("u", 0)


class Wall:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def aligner(
    *lanes: tuple[str, int], idle_s: float = 30.0, max_buffered: int = 100
) -> Aligner[tuple[str, int], str]:
    found: Aligner[tuple[str, int], str] = Aligner(
        idle_s=idle_s, max_buffered=max_buffered, monotonic=Wall()
    )
    found.assign(lanes)
    return found


def released(found: Aligner[tuple[str, int], str]) -> list[tuple[int, str]]:
    return list(found.release())


def test_a_lane_never_read_holds_until_the_broker_confirms_it_empty() -> None:
    found = aligner(A, B)
    found.received()
    found.add(A, 10, "a10")
    assert released(found) == []
    assert found.unconfirmed() == [B]
    epoch = found.received()  # the confirmation request goes out after a10 came
    found.confirm([B], epoch)
    assert released(found) == [(10, "a10")]


def test_a_confirmation_older_than_the_head_does_not_count() -> None:
    found = aligner(A, B)
    found.confirm([B], found.received())
    found.received()
    found.add(A, 10, "a10")  # came after the broker said B was empty
    assert released(found) == []
    found.confirm([B], found.received())
    assert released(found) == [(10, "a10")]


def test_records_go_lowest_arrival_first_across_lanes() -> None:
    found = aligner(A, B)
    found.received()
    found.add(A, 30, "a30")
    found.add(A, 40, "a40")
    found.add(B, 10, "b10")
    found.add(B, 35, "b35")
    # B's head goes; then a30 (B's next is later); then b35 needs nothing (A has a40
    # waiting); then a40 waits for B, which has nothing left and is behind.
    assert released(found) == [(10, "b10"), (30, "a30"), (35, "b35")]
    assert found.unconfirmed() == [B]


def test_a_lane_past_the_head_needs_no_confirmation() -> None:
    found = aligner(A, B)
    found.received()
    found.add(A, 50, "a50")
    found.add(B, 60, "b60")
    assert released(found) == [(50, "a50")]
    found.received()
    found.add(A, 55, "a55")  # A is empty again after b60 waits: B (60) is past 55
    assert released(found) == [(55, "a55")]


def test_a_lane_keys_never_go_back() -> None:
    found = aligner(A, B)
    found.received()
    found.add(A, 50, "a50")
    found.add(A, 20, "a20-late")  # stamped before its predecessor: counts at 50
    found.add(B, 30, "b30")
    found.confirm([A, B], found.received())
    assert released(found) == [(30, "b30"), (50, "a50"), (50, "a20-late")]


def test_an_unconfirmable_lane_is_passed_over_after_the_idleness() -> None:
    wall = Wall()
    found: Aligner[tuple[str, int], str] = Aligner(idle_s=5.0, monotonic=wall)
    found.assign([A, B])
    found.received()
    found.add(A, 10, "a10")
    assert released(found) == []
    wall.now = 4.9
    assert released(found) == []
    wall.now = 5.0
    assert released(found) == [(10, "a10")]
    assert found.idle_lanes() == [B]
    found.received()
    found.add(A, 20, "a20")
    assert released(found) == [(20, "a20")]  # still idle: it yielded nothing
    found.add(B, 15, "b15")  # it speaks again: no longer idle, and late
    assert found.idle_lanes() == []
    assert released(found) == [(15, "b15")]


def test_a_lane_far_ahead_is_paused_and_resumed_at_half() -> None:
    found = aligner(A, B, max_buffered=4)
    found.received()
    for n in range(4):
        found.add(A, 100 + n, f"a{n}")
    assert found.paused() == ([A], [])
    found.add(B, 101, "b")
    found.confirm([B], found.received())
    assert [item for _, item in found.release()] == ["a0", "a1", "b", "a2", "a3"]  # a tie: by lane
    assert found.paused() == ([], [A])


def test_a_new_assignment_gives_back_what_was_waiting() -> None:
    found = aligner(A, B)
    found.received()
    found.add(A, 10, "a10")
    assert found.assign([B, C]) == ["a10"]
    assert found.waiting == 0
    with pytest.raises(KeyError):
        found.add(A, 11, "a11")


@pytest.mark.parametrize("seed", range(20))
def test_the_order_does_not_depend_on_how_the_records_were_fetched(seed: int) -> None:
    """A story published in arrival order over three lanes, fetched in random slices
    with the broker's confirmations in between: released in the same order every time,
    the story's."""
    rnd = random.Random(seed)
    story, key = [], 1_000
    for _ in range(300):
        key += rnd.randint(1, 90)  # the simulator stamps its records strictly increasing
        story.append((rnd.choice([A, B, C]), key))
    expected = [f"{lane}@{key}" for lane, key in story]

    published = 0
    read = {A: 0, B: 0, C: 0}
    per_lane = {lane: [(k, f"{lane}@{k}") for ln, k in story if ln == lane] for lane in read}
    found = aligner(A, B, C)
    out: list[str] = []
    for _ in range(10_000):
        if len(out) == len(story):
            break
        published = min(len(story), published + rnd.randint(0, 15))
        visible = {lane: sum(1 for ln, _ in story[:published] if ln == lane) for lane in read}
        found.received()
        for lane in rnd.sample(list(read), k=rnd.randint(1, 3)):
            upto = rnd.randint(read[lane], visible[lane])
            for key, item in per_lane[lane][read[lane] : upto]:
                found.add(lane, key, item)
            read[lane] = upto
        out += [item for _, item in found.release()]
        if rnd.random() < 0.7:
            # The runner asks the broker about the lanes holding the head back.
            epoch = found.received()
            empty = [lane for lane in found.unconfirmed() if read[lane] == visible[lane]]
            found.confirm(empty, epoch)
            out += [item for _, item in found.release()]
    assert out == expected


# --- derived lanes: another service's outputs, complete below the bound its marks give ---


def derived(*lanes: tuple[str, int], wall: Wall | None = None) -> Aligner[tuple[str, int], str]:
    found: Aligner[tuple[str, int], str] = Aligner(idle_s=5.0, monotonic=wall or Wall())
    found.assign([A, *lanes], derived=lanes)
    return found


def test_a_derived_lane_holds_the_head_until_its_bound_passes_it() -> None:
    found = derived(C)
    found.received()
    found.add(A, 10, "a10")
    assert found.unconfirmed() == []  # the broker's end offsets say nothing about it
    assert released(found) == []
    found.bound(C, 10)  # complete below 10: a record at 10 may still come
    assert released(found) == []
    found.bound(C, 11)
    assert released(found) == [(10, "a10")]


def test_a_derived_lane_releases_its_own_records_below_its_bound_in_key_order() -> None:
    found = derived(C)
    found.confirm([A], found.received())
    found.add(C, 40, "c40")  # two upstream instances interleave on one partition
    found.add(C, 20, "c20")
    assert released(found) == []
    found.bound(C, 30)
    assert released(found) == [(20, "c20")]
    found.bound(C, 41)
    assert released(found) == [(40, "c40")]


def test_a_derived_lane_whose_upstream_is_silent_is_passed_over_after_the_idleness() -> None:
    wall = Wall()
    found = derived(C, wall=wall)
    found.received()
    found.add(A, 10, "a10")
    found.bound(C, 5)
    wall.now = 4.0
    found.bound(C, 8)  # progress: the idleness counts again from here
    assert released(found) == []
    wall.now = 8.9
    assert released(found) == []
    wall.now = 9.0
    assert released(found) == [(10, "a10")]
    found.bound(C, 9)  # it speaks again
    assert found.idle_lanes() == []
