"""The studio's rehearsal runs (rehearser.py) on SQLite and PostgreSQL, with a stand-in
for the command: one at a time in the order asked, the report or a redacted error kept,
a run left behind by a studio that is gone failed, a stopping studio's run interrupted."""

from __future__ import annotations

import asyncio
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from services.outreach.adapters.db import create_engine, create_schema, session_factory
from services.outreach.studio.accounts import Accounts
from services.outreach.studio.rehearsal_view import DONE, FAILED, INTERRUPTED, QUEUED, RUNNING
from services.outreach.studio.rehearsals import RehearsalRow, RehearsalStore
from services.outreach.studio.rehearser import Rehearser

pytestmark = pytest.mark.integration
T = TypeVar("T")

# The stand-in: `python -m replay --templates N ...` with N saying
# what to do (1: a report after a moment, 2: fail naming a secret, 3: run until stopped).
# It hears SIGINT as the real command does, whatever it inherited (a test runner's worker
# ignores it): tests/integration/outreach/test_rehearse_interrupt.py.
FAKE = """
import json, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(f"start {args['--templates']} {time.monotonic()}\\n")
if args["--templates"] == "2":
    print("error: the rehearsal failed: no broker at sasl " + os.environ["KAFKA_SASL_PASSWORD"],
          file=sys.stderr)
    sys.exit(1)
time.sleep(0.5 if args["--templates"] == "1" else 60)
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(f"end {args['--templates']} {time.monotonic()}\\n")
print(json.dumps({"customers_reached": 2, "messages": 3, "notes": [args["--work-dir"]]}))
"""


@pytest.fixture
async def store(database_url):
    engine = create_engine(database_url)
    await create_schema(engine)
    yield RehearsalStore(session_factory(engine))
    await engine.dispose()


@pytest.fixture
def fake_python(tmp_path, monkeypatch) -> Path:
    script = tmp_path / "fake_rehearsal.py"
    script.write_text(FAKE)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "fake.log"))
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-secret-123")
    return python


async def ask(store: RehearsalStore, version_id: int) -> RehearsalRow:
    now = datetime.now(UTC)
    row = RehearsalRow(requested_by="ed", requested_at=now, template_version_id=version_id,
                       template_key="delivery_late/email/en", template_version=2,
                       since=now - timedelta(days=7), until=now)  # fmt: skip
    accounts = Accounts(store.sessions)
    return await store.request(row, lambda r: accounts.entry("ed", "rehearsal_started", "k"))


async def settled(store: RehearsalStore, rehearsal_id: int) -> RehearsalRow:
    async def finished() -> RehearsalRow | None:
        row = await store.get(rehearsal_id)
        return row if row is not None and row.status in (DONE, FAILED) else None

    return await wait_for_async(finished, within_s=30, message=f"rehearsal {rehearsal_id}")


async def test_rehearsals_run_one_at_a_time_and_keep_the_report_or_a_redacted_error(
    store, fake_python, tmp_path
):
    rehearser = Rehearser(store, tmp_path / "runs", python=str(fake_python), poll_s=0.2)
    first, failing, second = [await ask(store, n) for n in (1, 2, 1)]
    await rehearser.start()
    try:
        done = await settled(store, second.id)
    finally:
        await rehearser.stop()
    work = (tmp_path / "runs" / str(second.id)).resolve()
    assert done.report == {"customers_reached": 2, "messages": 3, "notes": [str(work)]}
    assert not (tmp_path / "runs" / str(second.id)).exists()  # a done run's copies removed
    failed = await store.get(failing.id)
    assert failed is not None and failed.status == FAILED and failed.report is None
    assert "no broker" in (failed.error or "") and "sasl-secret-123" not in (failed.error or "")
    assert (await store.get(first.id)).status == DONE  # type: ignore[union-attr]
    log = (tmp_path / "fake.log").read_text().split("\n")
    starts = [line.split()[1] for line in log if line.startswith("start")]
    assert starts == ["1", "2", "1"]  # in the order asked, each after the one before
    ends = [float(line.split()[2]) for line in log if line.startswith("end")]
    begun = [float(line.split()[2]) for line in log if line.startswith("start")]
    assert ends[0] < begun[1]


async def test_a_run_left_behind_is_failed_and_a_stopping_studio_interrupts_its_own(
    store, fake_python, tmp_path
):
    now = datetime.now(UTC)
    here = Rehearser(store, tmp_path / "runs", python=str(fake_python), poll_s=0.2)
    earlier, elsewhere, stale = [await ask(store, 1) for _ in range(3)]
    runs = {earlier.id: f"{here.host}/1/abc", elsewhere.id: "pod-b/1/def", stale.id: "pod-c/1/x"}
    async with store.sessions() as s, s.begin():
        for rehearsal_id, runner in runs.items():
            row = await s.get(RehearsalRow, rehearsal_id)
            row.status, row.runner = RUNNING, runner
            row.beat_at = now - timedelta(minutes=10) if rehearsal_id == stale.id else now
    endless = await ask(store, 3)
    await here.start()
    try:
        assert (await store.get(earlier.id)).error == INTERRUPTED  # type: ignore[union-attr]
        assert (await store.get(stale.id)).status == FAILED  # type: ignore[union-attr]
        # Another replica's run is alive: nothing else starts while it runs.
        await asyncio.sleep(1)
        assert (await store.get(endless.id)).status == QUEUED  # type: ignore[union-attr]
        async with store.sessions() as s, s.begin():
            (await s.get(RehearsalRow, elsewhere.id)).status = DONE  # type: ignore[union-attr]
        here.wake()

        async def running() -> bool:
            return (await store.get(endless.id)).status == RUNNING  # type: ignore[union-attr]

        await wait_for_async(running, within_s=10, message="the queued run to start")
        await wait_for_async(lambda: _started(tmp_path, "3"), within_s=10, message="its child")
    finally:
        await here.stop()
    row = await store.get(endless.id)
    assert row is not None and (row.status, row.error) == (FAILED, INTERRUPTED)
    assert "end 3" not in (tmp_path / "fake.log").read_text()  # interrupted, not finished


async def _started(tmp_path: Path, version: str) -> bool:
    log = tmp_path / "fake.log"
    return log.exists() and f"start {version} " in log.read_text()


async def wait_for_async(check: Callable[[], Awaitable[T]], within_s: float, message: str) -> T:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {message}")
