"""Deadlines in event time: act on the *absence* of events (shared by the stream services).

Two parts:

- `DeadlineIndex`, pure: the next moment each key needs attention, a sorted list per
  partition, so a tick costs the number of due keys (times log n), never the number of
  keys.
- `DeadlineSchedule`, the faust glue: the index is a cache of a changelogged table
  (key → {"at": epoch seconds, "p": partition}) and is rebuilt from it after every
  assignment. Faust only lets a table change inside stream iteration (the changelog
  partition comes from the current event), so for an agent the passing of time arrives
  as *tick* records on a ticks topic, one partition per input partition: whoever
  notices that a partition's earliest deadline is due sends it a tick, and the agent
  handles the tick like an event and asks `due()` which keys to act on. A service that
  writes its table by partition itself (common/tables.py) needs no ticks: it asks
  `due()` between its records and when idle, after `input_confirmed()`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import orjson
from sortedcontainers import SortedList

from common.logs import get_logger
from common.metrics import DEADLINE_LAG_SECONDS, DEADLINES_OVERDUE

log = get_logger(__name__)


class DeadlineIndex:
    """The next moment each key needs attention, in one time-ordered list per partition
    (sortedcontainers): the keys due by a moment are a prefix of their partition's list,
    so a tick costs the due keys (times log n), counting the overdue costs log n, and
    rescheduling a key replaces its entry (nothing stale is left behind)."""

    def __init__(self) -> None:
        self._lists: dict[int, SortedList] = {}
        self._current: dict[str, tuple[float, int]] = {}
        self.version = 0  # moves with every change of what is scheduled

    def __len__(self) -> int:
        return len(self._current)

    def get(self, key: str) -> float | None:
        current = self._current.get(key)
        return current[0] if current else None

    def set(self, key: str, partition: int, at: float | None) -> None:
        """Schedule (or reschedule, or with None cancel) the key's next moment."""
        current = self._current.get(key)
        if current is None and at is None:
            return
        if current is not None:
            if current == (at, partition):
                return
            self._lists[current[1]].remove((current[0], key))
        self.version += 1
        if at is None:
            del self._current[key]
            return
        self._current[key] = (at, partition)
        entries = self._lists.get(partition)
        if entries is None:
            entries = self._lists[partition] = SortedList()
        entries.add((at, key))

    def replace(self, entries: Iterable[tuple[str, int, float]]) -> None:
        """Everything at once, (key, partition, moment) each, the last of a key winning:
        one sort instead of a insertion per key (the rebuild after a rebalance)."""
        self.clear()
        current = self._current
        for key, partition, at in entries:
            current[key] = (at, partition)
        by_partition: dict[int, list[tuple[float, str]]] = {}
        for key, (at, partition) in current.items():
            by_partition.setdefault(partition, []).append((at, key))
        for partition, items in by_partition.items():
            self._lists[partition] = SortedList(items)

    def earliest(self, partition: int) -> float | None:
        entries = self._lists.get(partition)
        return entries[0][0] if entries else None

    def overdue(self, now: float, limit: int = 100_000) -> tuple[int, float | None]:
        """(how many keys are due by `now`, at most `limit`; the earliest of their
        moments): a binary search per partition, whatever the number of keys."""
        count, earliest = 0, None
        after_now = (math.nextafter(now, math.inf),)  # sorts after every (now, key)
        for entries in self._lists.values():
            if not entries or entries[0][0] > now:
                continue
            first = entries[0][0]
            earliest = first if earliest is None else min(earliest, first)
            count += entries.bisect_left(after_now)
        return min(count, limit), earliest

    def partitions_due(self, now: float) -> list[int]:
        return [p for p, entries in self._lists.items() if entries and entries[0][0] <= now]

    def pop_due(self, partition: int, now: float, limit: int = 10_000) -> Iterator[str]:
        """Yield (and unschedule) up to `limit` keys of `partition` due by `now`."""
        entries = self._lists.get(partition)
        count = 0
        while entries and count < limit and entries[0][0] <= now:
            _, key = entries.pop(0)
            del self._current[key]
            self.version += 1
            count += 1
            yield key

    def pop_earliest(self, until: float, *, inclusive: bool) -> tuple[str, int, float] | None:
        """Unschedule and return (key, partition, moment) of the earliest key due before
        `until` (or at it, with `inclusive`) over every partition; ties by partition,
        then key: one order whatever the partitions' turns."""
        best: tuple[float, int] | None = None
        for partition, entries in self._lists.items():
            if not entries:
                continue
            at = entries[0][0]
            if (at < until or (inclusive and at == until)) and (
                best is None or (at, partition) < best
            ):
                best = (at, partition)
        if best is None:
            return None
        at, key = self._lists[best[1]].pop(0)
        del self._current[key]
        self.version += 1
        return key, best[1], at

    def drop_partitions(self, keep: frozenset[int]) -> None:
        self.version += 1
        for partition in list(self._lists):
            if partition not in keep:
                del self._lists[partition]
        self._current = {k: v for k, v in self._current.items() if v[1] in keep}

    def clear(self) -> None:
        self.version += 1
        self._lists.clear()
        self._current.clear()


class InputGate(Protocol):
    """Whether a partition's input has been read (common.streaming.InputProgress)."""

    def caught_up(self, partition: int) -> bool: ...

    async def confirm(self, partition: int) -> bool: ...

    def lag(self, partition: int) -> object: ...


class DeadlineSchedule:
    """A changelogged deadline table, its in-memory index, and the ticks that fire it.

    Contract: `schedule()` and `due()` are called only from the agent that consumes the
    ticks topic together with the keys' own partitions (table writes need the current
    event), or from the one task that handles the keys' partitions; `request_ticks()`
    may be called from anywhere (a timer, after an event).
    Until the table is recovered after an assignment, nothing is due and no tick is sent;
    nor for a partition whose input `gate` says is not read yet (confirmed with the broker
    before a tick is sent): its deadlines wait until the backlog is read.
    """

    def __init__(
        self,
        app: Any,
        table: Any,
        ticks_topic: str | None,
        *,
        recovery_grace_s: float = 5.0,
        gate: InputGate | None = None,
        entry: Callable[[Any], tuple[float, int] | None] | None = None,
    ):
        """`table` holds {"at": epoch seconds, "p": partition} per key, written by
        `schedule`; or, with `entry` (value -> (at, partition) or None), a table whose
        values carry the deadline among other things: its owner writes it and keeps the
        index in step with `plan`."""
        self.app = app
        self.table = table
        self.entry = entry or _entry
        self.ticks_topic = ticks_topic
        self.recovery_grace_s = recovery_grace_s
        self.gate = gate
        self.wait_warning_s = 30.0
        # How long the broker's word that a partition's input is read holds
        # (`input_confirmed`), so that it is asked at most that often per partition.
        self.confirm_interval_s = 1.0
        self._confirmed: dict[int, tuple[float, bool]] = {}
        self._waiting_since: dict[int, float] = {}
        self.index = DeadlineIndex()
        self.ready = False
        self._settled = False  # rebuilt once more after the whole recovery completed
        self._assigned_at: float | None = None
        self._ticks_in_flight: set[int] = set()
        # Deadlines `plan`ned whose table values the owner has not written yet (`written`
        # says when it has): a rebuild from the table in between must not undo them.
        self._unwritten: dict[str, tuple[int, float | None, int]] = {}

        async def recovered() -> None:
            # Called by faust once the table's changelog has been read back after an
            # assignment: now (and only now) the index can be rebuilt from it.
            self.rebuild()

        table.on_recover(recovered)

    def export_metrics(self, service: str, now: Callable[[], float]) -> None:
        """Report the deadlines that have passed (by the service's clock, `now`) and are not
        handled yet, and how far behind the earliest of them is, whenever metrics are read:
        a service that keeps up shows 0; one that falls behind on the passing of time (its
        ticks wait behind a backlog of input) shows how much."""

        cached: dict[tuple[int, float], tuple[int, float]] = {}

        def overdue() -> tuple[int, float]:
            # One walk per change of the index or the clock serves both gauges (and
            # frequent scrapes of an event-time clock that stands still).
            moment = now()
            key = (self.index.version, moment)
            if key not in cached:
                count, earliest = self.index.overdue(moment)
                cached.clear()
                cached[key] = (count, moment - earliest if earliest is not None else 0.0)
            return cached[key]

        DEADLINES_OVERDUE.labels(service).set_function(lambda: overdue()[0])
        DEADLINE_LAG_SECONDS.labels(service).set_function(lambda: overdue()[1])

    def on_assigned(self) -> None:
        self._assigned_at = time.monotonic()
        self.ready = False
        self._settled = False
        self._ticks_in_flight.clear()
        self._confirmed.clear()

    def on_revoked(self) -> None:
        self.ready = False
        self._ticks_in_flight.clear()
        self._confirmed.clear()
        # A rebalance waits for the batch in hand, whose states are written by then.
        self._unwritten.clear()

    def rebuild(self) -> None:
        """One scan of the table after a rebalance, never per tick."""

        def scheduled() -> Iterator[tuple[str, int, float]]:
            for key, value in self.table.items():
                found = self.entry(value) if value else None
                if found is not None:
                    name = key.decode() if isinstance(key, bytes) else key
                    yield name, found[1], found[0]

        self.index.replace(scheduled())
        for name, (partition, at, _) in self._unwritten.items():
            self.index.set(name, partition, at)
        self.ready = True
        log.info("deadline_index_rebuilt", table=self.table.name, keys=len(self.index))

    def check_recovered(self) -> None:
        """Safety net for a timer, once per assignment after recovery has completed: faust
        calls the recovery hook only for partitions it had to recover (with nothing to read
        back it may never call it), and possibly before all of them are back."""
        if (
            not self._settled
            and self._assigned_at is not None
            and time.monotonic() - self._assigned_at > self.recovery_grace_s
            and bool(self.app.tables.recovery.completed.is_set())
        ):
            # Also when the hook did fire: it may have fired before every newly assigned
            # partition was back (seen as deadlines missing after a takeover). The table
            # has every key the index should hold, so one more scan settles it.
            self.rebuild()
            self._settled = True

    async def request_ticks(self, now: float) -> None:
        """Send one tick to every partition whose earliest deadline is at or before `now`
        (none while a tick for that partition is still on its way)."""
        if not self.ready or self.ticks_topic is None:
            return
        for partition in self.index.partitions_due(now):
            if partition in self._ticks_in_flight or not self._input_read(partition):
                continue
            self._ticks_in_flight.add(partition)
            if self.gate is not None and not await self.gate.confirm(partition):
                self._ticks_in_flight.discard(partition)
                continue
            # Not awaited: a tick is a hint, and the agent that asks has records to handle.
            # One that fails lets the partition be ticked again.
            ack = await self.app.producer.send(
                self.ticks_topic,
                None,
                orjson.dumps({"at": now}),
                partition=partition,
                timestamp=None,
                headers=None,
            )
            ack.add_done_callback(lambda done, p=partition: self._tick_sent(p, done))

    def partitions_due(self, now: float) -> list[int]:
        """The partitions with keys due by `now` (none until the index is rebuilt)."""
        return self.index.partitions_due(now) if self.ready else []

    async def input_confirmed(self, partition: int) -> bool:
        """Whether the partition's input is read, as the broker says (for a service that
        acts on due keys itself, between its records, rather than through ticks): the
        local view first, then the broker's end offsets, asked at most once per
        `confirm_interval_s` per partition (the answer holds that long)."""
        if self.gate is None:
            return True
        if not self._input_read(partition):
            return False
        now = time.monotonic()
        checked = self._confirmed.get(partition)
        if checked is not None and now - checked[0] < self.confirm_interval_s:
            return checked[1]
        confirmed = await self.gate.confirm(partition)
        self._confirmed[partition] = (time.monotonic(), confirmed)
        return confirmed

    def _tick_sent(self, partition: int, done: Any) -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self._ticks_in_flight.discard(partition)
            log.warning("tick_not_sent", partition=partition, error=repr(error))

    def _input_read(self, partition: int) -> bool:
        """Whether the partition's input is read; says so in the log when its deadlines
        have waited for the backlog longer than `wait_warning_s` (once per wait)."""
        if self.gate is None or self.gate.caught_up(partition):
            self._waiting_since.pop(partition, None)
            return True
        since = self._waiting_since.setdefault(partition, time.monotonic())
        if since > 0 and time.monotonic() - since > self.wait_warning_s:
            log.warning(
                "deadlines_wait_for_input",
                partition=partition,
                waited_s=round(time.monotonic() - since, 1),
                lag=self.gate.lag(partition),
            )
            self._waiting_since[partition] = -1.0  # said once for this wait
        return False

    def due(self, partition: int, now: float, limit: int = 10_000) -> list[str]:
        """On a tick of `partition`: up to `limit` keys due by `now`, earliest first,
        unscheduled from the index (the caller reschedules or cancels each, which also
        updates the table). Keys still due after that get the next tick, which the next
        `request_ticks` sends: a wave of deadlines is handled in slices, with the input
        records that arrive meanwhile in between."""
        self._ticks_in_flight.discard(partition)
        if not self.ready or not self._input_read(partition):
            return []
        return list(self.index.pop_due(partition, now, limit))

    def plan(self, key: str, partition: int, at: float | None, batch: int = 0) -> None:
        """Set (or with None cancel) the key's deadline in the index only: for a table
        whose owner writes the deadline itself, inside its own values (`entry`), and
        calls `written` once it has. `batch` numbers the owner's writes (increasing)."""
        self.index.set(key, partition, at)
        self._unwritten[key] = (partition, at, batch)

    def written(self, batch: int | None = None) -> None:
        """The owner has written the planned deadlines of every batch up to `batch` (all,
        without it) into its table values: a rebuild may take them from there (until then
        it re-applies the plans after its scan: a timer's rebuild can come while a batch
        waits for its outputs, before its writes)."""
        if batch is None:
            self._unwritten.clear()
        else:
            self._unwritten = {k: v for k, v in self._unwritten.items() if v[2] > batch}

    def schedule(self, key: str, partition: int, at: float | None) -> None:
        """Set (or with None cancel) the key's deadline; the table is written only on change."""
        previous = self.table.get(key)
        if at is None:
            if previous is not None:
                self.table.pop(key, None)
        elif previous is None or previous.get("at") != at or previous.get("p") != partition:
            self.table[key] = {"at": at, "p": partition}
        self.index.set(key, partition, at)


def _entry(value: Any) -> tuple[float, int] | None:
    return (float(value["at"]), int(value["p"])) if value else None
