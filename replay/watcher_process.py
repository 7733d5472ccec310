"""orders_watcher in a process of its own, beside the replay.

It reads nothing another service decides (the shop's orders, shipments and returns, and
its own deadlines), so a child process can run it ahead on the same input, on a second
core, while the replay goes on. The child walks its part of the timeline — its input
records and its current deadlines, in the order the whole timeline puts them (the order
of two of its entries never depends on anything else's) — and for each of these steps
sends a `Step`: what the handler decided (stamped), what it refused, and the key's next
deadline. `RemoteWatcher` stands in for the watcher in the replay: at each of the
watcher's entries of the timeline it takes the next step and does with it what
`WatcherStage.keep` does in one process (the records onto the timeline, then the
deadline), so that everything is ordered and decided as with the watcher in the process
(tests/unit/replay/test_engine.py compares the two).
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from common.kafka import Outgoing
from replay.stages import DeadLetters, Emit, WatcherStage
from replay.timeline import DEADLINE, Deadlines, Timeline
from services.orders_watcher.config import Settings

CHUNK = 2_000  # steps a message


class WatcherLost(RuntimeError):
    """The child is gone, or walked another timeline: the replay cannot go on."""


@dataclass
class Step:
    """One input record or deadline handled by the watcher."""

    records: list[tuple[float, Outgoing]] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    schedule: tuple[str, float | None] | None = None  # the key's next deadline, if kept
    error: str | None = None  # the handler failed (its traceback)


@dataclass
class Finished:
    seconds: float  # the handler's time in the child


class _Recording(Timeline):
    """The child's timeline: it schedules the watcher's deadlines and notes each."""

    def __init__(self) -> None:
        super().__init__()
        self.step = Step()

    def schedule(self, deadlines: Deadlines, key: str, at: float | None, whose: Any) -> None:
        self.step.schedule = (key, at)
        super().schedule(deadlines, key, at, whose)


def _watch(
    conn: Connection, theirs: Connection, settings: Settings, inputs: Sequence[Any], until: float
) -> None:
    """The child: every step of the watcher, in order, sent in chunks."""
    theirs.close()  # the replay's end: if the replay dies, a send here fails (no hang)
    timeline = _Recording()
    dead = DeadLetters()
    stage = WatcherStage(settings, timeline, lambda at, r: timeline.step.records.append((at, r)),
                         dead)  # fmt: skip
    timeline.load(inputs, until=until)
    chunk: list[Step] = []
    spent = 0.0
    for at, kind, _, _, what in timeline:
        if kind == DEADLINE:
            if not stage.deadlines.is_current(what, at):
                continue  # rescheduled since: the replay skips it too
            del stage.deadlines.current[what]
        started = time.perf_counter()
        try:
            if kind == DEADLINE:
                stage.on_deadline(what, at)
            else:
                stage.on_record(at, *what)
        except Exception:
            timeline.step.error = traceback.format_exc(limit=8)
        spent += time.perf_counter() - started
        timeline.step.dead = [code for (_, code), n in dead.items() for _ in range(n)]
        dead.clear()
        chunk.append(timeline.step)
        timeline.step = Step()
        if len(chunk) >= CHUNK:
            conn.send(chunk)
            chunk = []
    conn.send(chunk)
    conn.send(Finished(spent))
    conn.close()


def forkable() -> bool:
    """A fork copies one thread: only a process with no other is safe to fork."""
    return threading.active_count() == 1


class RemoteWatcher:
    """The watcher as the replay sees it when it runs in a child process."""

    def __init__(
        self,
        settings: Settings,
        inputs: Sequence[Any],
        until: float,
        timeline: Timeline,
        emit: Emit,
        dead: DeadLetters,
    ) -> None:
        self.timeline, self.emit, self.dead = timeline, emit, dead
        self.deadlines = Deadlines()
        self.child_seconds = 0.0
        self._steps: Iterator[Step] = iter(())
        # Forked, so that the child shares the decoded input instead of a pickled copy;
        # before the replay starts any thread.
        context = multiprocessing.get_context("fork")
        self._conn, theirs = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_watch, args=(theirs, self._conn, settings, inputs, until),
            name="replay-orders_watcher", daemon=True,
        )  # fmt: skip
        # The collector leaves what exists now alone in the child, so that the pages of
        # the input it shares stay shared (gc.freeze's own advice for a fork).
        gc.freeze()
        try:
            self._process.start()
        finally:
            gc.unfreeze()
        theirs.close()

    def on_record(self, at: float, msg: Any, event: Any) -> None:
        self._apply()

    def on_deadline(self, key: str, at: float) -> None:
        self._apply()

    def _apply(self) -> None:
        step = next(self._steps, None) or self._receive()
        for at, record in step.records:
            self.emit(at, record)
        for code in step.dead:
            self.dead["orders_watcher", code] += 1
        if step.schedule is not None:
            key, due = step.schedule
            self.timeline.schedule(self.deadlines, key, due, self)
        if step.error is not None:
            raise RuntimeError(f"orders_watcher's handler failed:\n{step.error}")

    def _receive(self) -> Step:
        while True:
            try:
                got = self._conn.recv()
            except EOFError:
                raise WatcherLost("orders_watcher's process ended before the replay") from None
            if isinstance(got, Finished):
                raise WatcherLost("orders_watcher's process had no step left for the replay")
            self._steps = iter(got)
            step = next(self._steps, None)
            if step is not None:
                return step

    def close(self, *, completed: bool) -> None:
        """Stop the child. After a whole replay, first take its own time — and make
        sure it had no step the replay did not take (they would have walked two
        different timelines)."""
        try:
            while completed:
                if not self._conn.poll(60):
                    raise WatcherLost("orders_watcher's process did not finish")
                try:
                    got = self._conn.recv()
                except EOFError:
                    raise WatcherLost("orders_watcher's process ended unfinished") from None
                if next(self._steps, None) is not None or (got and not isinstance(got, Finished)):
                    raise WatcherLost("orders_watcher's process had steps the replay never took")
                if isinstance(got, Finished):
                    self.child_seconds = got.seconds
                    break
        finally:
            self._process.terminate()
            self._process.join(timeout=10)
            self._conn.close()


__all__ = ["CHUNK", "RemoteWatcher", "Step", "WatcherLost", "forkable"]
