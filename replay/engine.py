"""A replay in one process: the archive's records, the four services' handlers
(stages.py, outreach.py) and the timeline (timeline.py) that puts everything in the
event clock's order.

Each record goes to the services that read its topic, in the order a record's readers
depend on one another at one moment: preferences first (outreach waits for it),
orders_watcher, risk_detector, outreach, and — when a remedy rule learns from them —
outreach's outcome recorder last. What a service decides goes on the timeline at
the moment it was decided, to the services that read that topic; deadlines come at
their own moments. The settings of each service are read from the environment a
rehearsal's namespace would give its processes (its rules, nothing of production)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.envelope import CloudEvent, InvalidEvent
from common.kafka import Outgoing
from common.logs import get_logger
from common.records import InputMessage
from replay.outreach import OutreachStage
from replay.stages import DeadLetters, PreferencesStage, RiskStage, WatcherStage
from replay.timeline import DEADLINE, Timeline
from replay.watcher_process import RemoteWatcher, WatcherLost, forkable
from services.orders_watcher.config import Settings as WatcherSettings
from services.outreach.config import Settings as OutreachSettings
from services.outreach.rehearsal import archive, report, run
from services.outreach.rehearsal.archive import Record
from services.outreach.rehearsal.namespace import Namespace
from services.outreach.rehearsal.run import Options
from services.preferences.config import Settings as PreferencesSettings
from services.risk_detector.config import Settings as RiskSettings

log = get_logger(__name__)


@dataclass
class Replayed:
    """What a replay decided: the ledger's decisions, the storms, what it would have
    dead-lettered, how many records it replayed and decided."""

    decisions: list[report.Decision]
    storms: list[report.StormLine]
    dead: DeadLetters
    records: int
    decided: int
    seconds: dict[str, float] = field(default_factory=dict)  # time spent in each service


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ is `env` while the services' settings are read."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def service_of(reader: str) -> str:
    """The service a reader of a topic is part of (the outcome recorder: outreach's)."""
    return "outreach" if reader == "outcomes" else reader


class Engine:
    def __init__(
        self, env: dict[str, str], partitions: int, *, watcher_process: bool | None = None
    ) -> None:
        """`watcher_process`: orders_watcher in a child process (watcher_process.py);
        by default when the machine has a second core."""
        # No broker: nothing of a replay connects to one (a name that cannot resolve).
        own = {"OUTREACH_TOPIC_PREFIX": "", "OUTREACH_CLOCK": "event",
               "KAFKA_BOOTSTRAP_SERVERS": "no-broker.invalid:9092"}  # fmt: skip
        with environment(env | own):
            watcher, risk = WatcherSettings(), RiskSettings()
            preferences, outreach = PreferencesSettings(), OutreachSettings()
        self.database_url = outreach.db_url()
        self.timeline = Timeline()
        self.dead = DeadLetters()
        self.decided = 0
        self.failed_sends = 0  # rounds of sending what was due that failed (a bug)
        self.seconds: dict[str, float] = {}
        self.preferences = PreferencesStage(
            tuple(preferences.default_channel_order.split(",")), self.dead
        )
        self.watcher_settings = watcher
        self.watcher: WatcherStage | RemoteWatcher = WatcherStage(
            watcher, self.timeline, self._emit, self.dead
        )
        self.watcher_process = (
            (os.cpu_count() or 1) > 1 if watcher_process is None else watcher_process
        )
        self.risk = RiskStage(risk, self.timeline, self._emit, self.dead, partitions)
        self.outreach = OutreachStage(outreach, self.preferences.preferences, self.dead)
        t = outreach.topics
        # Who reads each topic, in the order they go at one moment.
        self.readers: dict[str, tuple[str, ...]] = {
            t.orders: ("orders_watcher", "risk_detector"),
            t.shipments: ("orders_watcher",),
            t.returns: ("orders_watcher", "risk_detector"),
            t.customers: ("preferences", "risk_detector", "outreach"),
            t.feedback: ("risk_detector",),
            t.optouts: ("preferences",),
            t.incidents: ("risk_detector", "outreach"),
            t.requests: ("outreach",),
        }
        self.customers = t.customers

    def _emit(self, at: float, record: Outgoing) -> None:
        self.decided += 1
        if record.topic in self.readers:
            msg = InputMessage(record.topic, 0, 0, record.key.encode(), None)
            self.timeline.record(at, record.topic, (msg, record.event))

    async def run(self, records: Sequence[Record], say: Callable[[str], None]) -> Replayed:
        inputs, undecodable = self._inputs(records)
        apart = self.watcher_process and inputs and forkable()
        remote = self._watcher_apart(inputs) if apart else None
        completed = False
        try:
            await self.outreach.start()
            try:
                replayed = await self._replay(inputs, undecodable, say)
                completed = True
            finally:
                await self.outreach.stop()
        finally:
            if remote is not None:
                remote.close(completed=completed)
                # The handler's time is the child's; the replay's own is its waiting.
                waited = self.seconds.pop("orders_watcher", 0.0)
                self.seconds["orders_watcher"] = remote.child_seconds
                self.seconds["waiting for orders_watcher"] = waited
        return replayed

    async def _replay(
        self,
        inputs: list[tuple[float, Any, Any]],
        undecodable: list[tuple[str, str]],
        say: Callable[[str], None],
    ) -> Replayed:
        if await self.outreach.learns():
            self._read_outcomes()
        for topic, code in undecodable:  # as the services that read them would count
            for reader in self.readers[topic]:
                self.dead[service_of(reader), code] += 1
        self.timeline.load(inputs)
        handled = 0
        for at, kind, _, whose, what in self.timeline:
            if kind == DEADLINE:
                await self._deadline(whose, what, at)
                continue
            await self._record(at, whose, what)
            handled += 1
            if handled % 100_000 == 0:
                say(f"{handled} records handled")
        if inputs:
            await self._send_due(inputs[-1][0], inclusive=True)
        return Replayed(
            decisions=self._decisions(),
            storms=await self._storms(),
            dead=self.dead,
            records=len(inputs),
            decided=self.decided,
            seconds=self.seconds,
        )

    def _watcher_apart(self, inputs: list[tuple[float, Any, Any]]) -> RemoteWatcher:
        """orders_watcher in a child process, started on its part of the input before
        anything else (no thread yet to fork with)."""
        reads = {t for t, readers in self.readers.items() if "orders_watcher" in readers}
        remote = RemoteWatcher(
            self.watcher_settings,
            [entry for entry in inputs if entry[1] in reads],
            inputs[-1][0],
            self.timeline,
            self._emit,
            self.dead,
        )
        self.watcher = remote
        return remote

    def _read_outcomes(self) -> None:
        """outreach's outcome recorder reads the shop's orders, returns and feedback and
        the opt-outs: after every other reader of the record (it decides nothing; its
        facts are there for the decisions that come later)."""
        t = self.outreach.topics
        for topic in (t.orders, t.returns, t.feedback, t.optouts):
            if "outcomes" not in self.readers[topic]:
                self.readers[topic] = (*self.readers[topic], "outcomes")

    def _inputs(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[float, Any, Any]], list[tuple[str, str]]]:
        """Each record decoded once, in story order; and the topic and reason of each
        that cannot be (its readers dead-letter it)."""
        inputs, undecodable = [], []
        story = archive.stamped(sorted(records, key=lambda r: r.timestamp_ms))
        for n, (stamp, r) in enumerate(story):
            if r.topic not in self.readers:
                continue
            try:
                event = CloudEvent.from_bytes(r.value)
            except InvalidEvent as exc:
                undecodable.append((r.topic, exc.code))
                continue
            msg = InputMessage(r.topic, 0, n, r.key, r.value, list(r.headers), stamp)
            inputs.append((stamp / 1000, r.topic, (msg, event)))
        return inputs, undecodable

    async def _record(self, at: float, topic: str, what: tuple[InputMessage, CloudEvent]) -> None:
        msg, event = what
        # What outreach scheduled before this moment leaves at its own (before an opt-out
        # or a customer's change that comes later could stop it).
        await self._send_due(at)
        for reader in self.readers[topic]:
            service = service_of(reader)
            started = time.perf_counter()
            try:
                if reader == "preferences":
                    await self.preferences.on_record(topic == self.customers, event)
                elif reader == "orders_watcher":
                    self.watcher.on_record(at, msg, event)
                elif reader == "risk_detector":
                    self.risk.on_record(at, msg, event)
                elif reader == "outcomes":
                    await self.outreach.on_outcome(at, topic, event)
                else:
                    await self.outreach.on_record(at, topic, event)
            except WatcherLost:
                raise
            except Exception:
                # As each service's processor does (after its retries): dead-lettered,
                # named in the log — a bug of ours, or of a draft's template.
                log.exception("handler_failed", service=service, topic=topic, event_id=event.id)
                self.dead[service, "handler_error"] += 1
            self._count(service, started)

    async def _send_due(self, at: float, *, inclusive: bool = False) -> None:
        started = time.perf_counter()
        try:
            await self.outreach.send_due(at, inclusive=inclusive)
        except Exception:
            # The worker's scheduler logs it and tries again at its next turn: so does
            # the next record here (what failed stays due).
            log.exception("send_due_failed")
            self.failed_sends += 1
        self._count("outreach", started)

    async def _deadline(self, stage: Any, key: str, at: float) -> None:
        if not stage.deadlines.is_current(key, at):
            return  # rescheduled since
        del stage.deadlines.current[key]
        started = time.perf_counter()
        service = "orders_watcher" if stage is self.watcher else "risk_detector"
        try:
            stage.on_deadline(key, at)
        except WatcherLost:
            raise
        except Exception:
            log.exception("deadline_failed", service=service, key=key)
            self.dead[service, "handler_error"] += 1
        self._count(service, started)

    def _count(self, service: str, started: float) -> None:
        self.seconds[service] = self.seconds.get(service, 0.0) + time.perf_counter() - started

    def _decisions(self) -> list[report.Decision]:
        return [
            report.Decision(
                customer_id=row.customer_id,
                intent=row.intent,
                message_kind=row.message_kind,
                channel=row.channel,
                locale=row.locale,
                status=row.status,
                reason=row.reason,
                decided_at=row.decided_at,
                subject=row.subject,
                body_text=row.body_text,
                first_name=str((row.request or {}).get("first_name") or ""),
            )
            for row in self.outreach.ledger.rows.values()
        ]

    async def _storms(self) -> list[report.StormLine]:
        found = await self.outreach.app.storms.recent(limit=1_000_000)
        return [report.StormLine(s.scope, s.size, s.state.value, s.started_at) for s in found]


def in_process(records: list[Record], options: Options, db: str) -> run.Replayed:
    """A rehearsal's replay (services/outreach/rehearsal/run.py) in this process, with
    the environment its namespace would give the services (the rules and nothing of
    production) and the rehearsal's database (`db`: where the namespace's outreach
    would have it, under the work directory)."""
    started = time.monotonic()
    env = Namespace(options.bootstrap, options.work, options.rules).env()
    engine = Engine(env, options.partitions)
    if engine.database_url != db:
        raise RuntimeError(f"the replay's database is {engine.database_url}, not {db}")
    done = asyncio.run(engine.run(records, options.progress))
    seconds = time.monotonic() - started
    spent = ", ".join(f"{name} {s:.1f} s" for name, s in sorted(done.seconds.items()))
    beside = " (orders_watcher in a second)" if "waiting for orders_watcher" in done.seconds else ""
    notes = [
        f"replayed in one process{beside} in {seconds:.1f} s ({spent}); "
        f"{done.decided} records decided"
    ]
    if engine.failed_sends:
        notes.append(f"sending what was due failed {engine.failed_sends} times (see the log)")
    if done.dead:
        counted = ", ".join(f"{svc} {code}: {n}" for (svc, code), n in sorted(done.dead.items()))
        notes.append(f"would have been dead-lettered: {counted}")
    return done.decisions, done.storms, notes


__all__ = ["Engine", "Replayed", "environment", "in_process"]
