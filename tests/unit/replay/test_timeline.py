"""The replay's one order (replay/timeline.py): the event clock's rule across records,
decided records and deadlines."""

from __future__ import annotations

from replay.timeline import DEADLINE, RECORD, Deadlines, Timeline


def order(timeline: Timeline) -> list[tuple[float, str]]:
    return [
        (at, what if kind == RECORD else f"deadline {what}") for at, kind, _, _, what in timeline
    ]


def test_a_deadline_before_a_record_goes_first_and_one_at_its_moment_after_it():
    timeline = Timeline()
    timeline.load([(10.0, "w", "a"), (20.0, "w", "b")])
    deadlines = Deadlines()
    timeline.schedule(deadlines, "early", 19.999, "w")
    timeline.schedule(deadlines, "same", 20.0, "w")
    assert order(timeline) == [
        (10.0, "a"), (19.999, "deadline early"), (20.0, "b"), (20.0, "deadline same"),
    ]  # fmt: skip


def test_a_decided_record_goes_after_the_input_of_its_moment_and_before_later_input():
    timeline = Timeline()
    timeline.load([(10.0, "w", "a"), (10.0, "w", "b"), (11.0, "w", "c")])
    seen = []
    for at, _, _, _, what in timeline:
        seen.append(what)
        if what == "a":
            timeline.record(at, "r", "decided from a")
    assert seen == ["a", "b", "decided from a", "c"]


def test_a_rescheduled_deadline_comes_once_at_its_new_moment():
    timeline = Timeline()
    timeline.load([(50.0, "w", "end")])
    deadlines = Deadlines()
    timeline.schedule(deadlines, "k", 10.0, "w")
    timeline.schedule(deadlines, "k", 30.0, "w")  # moved: the entry at 10 is stale
    timeline.schedule(deadlines, "gone", 20.0, "w")
    timeline.schedule(deadlines, "gone", None, "w")  # cleared
    current = [
        (at, what)
        for at, kind, _, _, what in timeline
        if kind == DEADLINE and deadlines.is_current(what, at)
    ]
    assert current == [(30.0, "k")]


def test_time_ends_with_the_last_input_what_is_due_at_its_moment_included():
    timeline = Timeline()
    timeline.load([(10.0, "w", "a"), (20.0, "w", "last")])
    deadlines = Deadlines()
    timeline.schedule(deadlines, "at the end", 20.0, "w")
    timeline.schedule(deadlines, "after it", 20.001, "w")
    seen = []
    for at, _, _, _, what in timeline:
        seen.append(what)
        if what == "last":
            timeline.record(at, "r", "decided at the end")
            timeline.record(at + 60, "r", "decided for later")
    assert seen == ["a", "last", "decided at the end", "at the end"]
