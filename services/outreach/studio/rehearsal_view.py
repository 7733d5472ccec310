"""A draft's rehearsal as the studio asks for it and shows it (docs/studio.md,
"Rehearsals"; docs/rehearsal.md): the period a form asks for, the command the studio
runs, what of a failed run's error output is kept, and the report as the page shows it.
Pure: the table and the runner are rehearsals.py, the handlers rehearsal_pages.py.

The command is the one an operator runs (`outreachctl rehearse`), for one draft: the
studio adds nothing a person could not do from a shell, and the report it keeps is the
command's own JSON. Its error output is kept for whoever asked, who may not be allowed
to read the studio's settings: a secret the studio's environment holds, or the password
in a database URL, is blanked wherever it appears."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

DAYS_DEFAULT, DAYS_MAX = 7, 30
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
UNFINISHED = (QUEUED, RUNNING)
INTERRUPTED = "interrupted by a restart of the studio: rehearse the draft again"
ERROR_TAIL = 2000  # characters of a failed run's error output kept
REDACTED = "[redacted]"
# Environment variables whose values are not for the page: credentials by their names.
SECRET_NAMES = ("PASSWORD", "SECRET", "TOKEN", "KEY", "AUTH", "CREDENTIAL")
SECRET_MIN = 6  # shorter values ("true", "1") are not credentials, and are everywhere
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", re.I)


class RehearsalError(ValueError):
    """A rehearsal that cannot be asked for, or a report that cannot be read."""


# --- asking --------------------------------------------------------------------------------


def read_days(raw: str) -> int:
    """The form's number of days to rehearse (1 to DAYS_MAX; empty is the default)."""
    text = raw.strip()
    if not text:
        return DAYS_DEFAULT
    if not (text.isascii() and text.isdigit() and len(text) < 4):
        raise RehearsalError("the number of days is a whole number")
    days = int(text)
    if not 1 <= days <= DAYS_MAX:
        raise RehearsalError(f"a rehearsal covers 1 to {DAYS_MAX} days")
    return days


def period(days: int, now: datetime) -> tuple[datetime, datetime]:
    """The last `days` days up to `now`: fixed when asked, so that a rehearsal that
    waited in the queue replays the period its requester meant."""
    return now - timedelta(days=days), now


def command(
    python: str, version_id: int, since: datetime, until: datetime, work: Path, timeout_s: float
) -> list[str]:
    """`outreachctl rehearse` for one draft (its template version's id), its report as
    JSON on standard output."""
    return [
        python, "-m", "replay",
        "--from", since.isoformat(), "--until", until.isoformat(),
        "--templates", str(version_id), "--output", "json",
        "--work-dir", str(work), "--timeout", f"{timeout_s:g}",
    ]  # fmt: skip


# --- what a run leaves ---------------------------------------------------------------------


def redact(text: str, environ: Mapping[str, str]) -> str:
    """`text` without the values of the environment's credentials (by their names) and
    without any URL's password."""
    for name, value in environ.items():
        if len(value) >= SECRET_MIN and any(word in name.upper() for word in SECRET_NAMES):
            text = text.replace(value, REDACTED)
    return _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)


def error_tail(stderr: str, environ: Mapping[str, str], exit_code: int | None) -> str:
    """What a failed run said last (from a line's start), redacted; its exit code if it
    said nothing."""
    text = redact(stderr, environ).strip()
    if len(text) > ERROR_TAIL:
        text = text[-ERROR_TAIL:]
        text = "…" + text[text.find("\n") + 1 :] if "\n" in text else "…" + text
    return text or f"the rehearsal exited with code {exit_code} and said nothing"


def read_report(stdout: str) -> dict[str, Any]:
    """The command's JSON report, or RehearsalError."""
    try:
        report = json.loads(stdout)
    except ValueError:
        raise RehearsalError("the rehearsal's report is not JSON") from None
    if not isinstance(report, dict) or "customers_reached" not in report:
        raise RehearsalError("the rehearsal's output is not its report")
    return report


# --- showing the report ----------------------------------------------------------------


@dataclass(frozen=True)
class Against:
    """The rehearsal against what was really sent, customers per intent on each side."""

    intents: list[tuple[str, int, int]]  # intent, rehearsed, live
    only_rehearsed: int
    only_live: int
    only_rehearsed_ids: list[str]
    only_live_ids: list[str]


@dataclass(frozen=True)
class Shown:
    customers_reached: int
    messages: int
    segments: list[dict[str, Any]]
    suppressed: list[tuple[str, int]]
    storms: list[dict[str, Any]]
    live: Against | None
    samples: list[dict[str, Any]] | None  # None: not for this role
    notes: list[str]


def against(live: Mapping[str, Any] | None) -> Against | None:
    if not live:
        return None
    ours, theirs = dict(live.get("rehearsed") or {}), dict(live.get("live") or {})
    return Against(
        [(i, int(ours.get(i, 0)), int(theirs.get(i, 0))) for i in sorted({*ours, *theirs})],
        int(live.get("only_rehearsed", 0)),
        int(live.get("only_live", 0)),
        [str(c) for c in live.get("only_rehearsed_ids") or []],
        [str(c) for c in live.get("only_live_ids") or []],
    )


def ordered_samples(
    samples: Sequence[Mapping[str, Any]], kind: str, locale: str
) -> list[dict[str, Any]]:
    """The samples with the draft's own message kind first — in the draft's language
    first —, the others after them as the report has them."""
    language = locale.split("-")[0].lower()

    def rank(sample: Mapping[str, Any]) -> tuple[bool, bool]:
        own = sample.get("message_kind") == kind
        return (not own, not (own and str(sample.get("locale", "")).lower() == language))

    return [dict(s) for s in sorted(samples, key=rank)]  # sorted is stable


def shown(report: Mapping[str, Any], kind: str, locale: str, *, messages: bool) -> Shown:
    """The report as the page shows it; its samples (what real customers would read)
    only if the role may see messages (`messages`)."""
    suppressed = dict(report.get("suppressed") or {})
    return Shown(
        customers_reached=int(report.get("customers_reached", 0)),
        messages=int(report.get("messages", 0)),
        segments=[dict(s) for s in report.get("segments") or []],
        suppressed=[(str(reason), int(n)) for reason, n in suppressed.items()],
        storms=[dict(s) for s in report.get("storms") or []],
        live=against(report.get("live")),
        samples=ordered_samples(report.get("samples") or [], kind, locale) if messages else None,
        notes=[str(n) for n in report.get("notes") or []],
    )
