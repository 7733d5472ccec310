"""Runs the rehearsals asked for in the studio (rehearsals.py), one at a time: each is
`outreachctl rehearse` for one draft (rehearsal_view.command), run as a child process
with the studio's own environment and working directory — the cluster's address and
security settings, the live topic prefix and database it reads — and a work directory
of its own under `<OUTREACH_DATA_DIR>/rehearsals/<id>`. A child, not a task in the
studio: a rehearsal runs four services and replays days of input, and a studio must
keep answering (and may be stopped) meanwhile.

Every studio process runs this loop. A request wakes the one that took it; the others
look every POLL_S for what another replica queued, and claim it in the database, so
each run is run once and never two at a time. While its child runs, a studio stamps
the row every BEAT_S; a row not stamped for STALE_S was left by a studio that is gone
and is failed by the next one to look. A studio stopping interrupts its child (SIGINT:
the command stops its namespace and deletes its topics) and fails its run; one that
starts fails what an earlier process on its host left running. A run that is done has
its work directory removed (copies of customers' data); a failed one keeps it, with the
logs its error may name."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from common.clock import wall_now
from common.logs import get_logger
from services.outreach.studio.rehearsal_view import (
    INTERRUPTED,
    RehearsalError,
    command,
    error_tail,
    read_report,
)
from services.outreach.studio.rehearsals import RehearsalRow, RehearsalStore

log = get_logger(__name__)

POLL_S = 10.0  # how often a studio looks for a rehearsal another replica queued
BEAT_S = 10.0  # how often a running rehearsal's row is stamped
STALE_S = 90.0  # a running row not stamped for this long: its studio is gone
RUN_TIMEOUT_S = 1800.0  # the command's own --timeout
GRACE_S = 300.0  # after which the studio stops a command that overran its own timeout
STOP_S = 25.0  # what an interrupted command gets to stop its namespace, then SIGKILL

Outcome = tuple[dict[str, Any] | None, str | None]  # the report, or the error


class Rehearser:
    def __init__(
        self,
        store: RehearsalStore,
        runs: Path,
        *,
        python: str = sys.executable,
        poll_s: float = POLL_S,
        beat_s: float = BEAT_S,
        stale_s: float = STALE_S,
        timeout_s: float = RUN_TIMEOUT_S,
        now: Callable[[], datetime] = wall_now,
    ) -> None:
        self.store = store
        self.runs = runs
        self.python = python
        self.poll_s, self.beat_s, self.stale_s = poll_s, beat_s, stale_s
        self.timeout_s = timeout_s
        self.now = now
        self.host = socket.gethostname()
        self.runner = f"{self.host}/{os.getpid()}/{secrets.token_hex(3)}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fail what an earlier studio on this host left running, then run the queue."""
        left = await self.store.fail_left_behind(self._stale_before(), self.now(), host=self.host)
        if left:
            log.warning("rehearsals_interrupted", count=left)
        self._task = asyncio.create_task(self._loop(), name="rehearsals")

    def wake(self) -> None:
        """A rehearsal was queued: look now, not at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _stale_before(self) -> datetime:
        return self.now() - timedelta(seconds=self.stale_s)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # before looking: a request committed after it wakes us
            try:
                await self.store.fail_left_behind(self._stale_before(), self.now())
                row = await self.store.claim(self.runner, self.now())
                if row is not None:
                    await self._run(row)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away, say: look again at the next poll
                log.exception("rehearsals_loop_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _run(self, row: RehearsalRow) -> None:
        work = (self.runs / str(row.id)).resolve()
        started = time.monotonic()
        log.info("rehearsal_running", rehearsal=row.id, draft=row.template_key,
                 version=row.template_version, since=row.since.isoformat(),
                 until=row.until.isoformat())  # fmt: skip
        try:
            await asyncio.to_thread(_fresh, work)
            report, error = await self._command(row, work)
        except asyncio.CancelledError:
            await self.store.finish(row.id, self.runner, self.now(), error=INTERRUPTED)
            raise
        except OSError as exc:
            report, error = None, f"the rehearsal could not be started: {exc}"
        if error is None:  # before it shows as done: a done run has left no copies
            await asyncio.to_thread(shutil.rmtree, work, True)
        await self.store.finish(row.id, self.runner, self.now(), report=report, error=error)
        log.info("rehearsal_finished", rehearsal=row.id, failed=error is not None,
                 seconds=round(time.monotonic() - started, 1))  # fmt: skip

    async def _command(self, row: RehearsalRow, work: Path) -> Outcome:
        environ = dict(os.environ)
        args = command(self.python, row.template_version_id, row.since, row.until, work,
                       self.timeout_s)  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args, env=environ, stdin=asyncio.subprocess.DEVNULL,  # and the studio's directory
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # signalled by us alone (a terminal's Ctrl-C is ours)
        )  # fmt: skip
        try:
            out, err = await self._wait(proc, row)
        except TimeoutError:
            await _interrupt(proc)
            return None, f"the rehearsal took longer than {self.timeout_s + GRACE_S:g} s"
        except BaseException:
            await _interrupt(proc)
            raise
        if proc.returncode != 0:
            text = err.decode(errors="replace")
            return None, error_tail(text, environ, proc.returncode)
        try:
            return read_report(out.decode(errors="replace")), None
        except RehearsalError as exc:
            return None, str(exc)

    async def _wait(
        self, proc: asyncio.subprocess.Process, row: RehearsalRow
    ) -> tuple[bytes, bytes]:
        """The child's output once it exits, stamping the row meanwhile; TimeoutError
        if it overruns its own timeout by GRACE_S."""
        talk = asyncio.ensure_future(proc.communicate())
        deadline = time.monotonic() + self.timeout_s + GRACE_S
        try:
            while not talk.done():
                await asyncio.wait({talk}, timeout=self.beat_s)
                if talk.done():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                await self._beat(row)
            return talk.result()
        finally:
            if not talk.done():
                talk.cancel()

    async def _beat(self, row: RehearsalRow) -> None:
        try:
            await self.store.beat(row.id, self.runner, self.now())
        except Exception:  # a missed stamp is no reason to stop the run
            log.warning("rehearsal_beat_failed", rehearsal=row.id, exc_info=True)


def _fresh(work: Path) -> None:
    """An empty work directory (a database reset may number a run as an old one)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)


async def _interrupt(proc: asyncio.subprocess.Process) -> None:
    """Stop the command as a person would (Ctrl-C: it stops its namespace and deletes its
    topics), and for good after STOP_S."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), STOP_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
