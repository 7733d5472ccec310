"""The studio's rehearsals in pure functions: the days a form asks for, the command it
runs, what of a failed run's output is kept (no secret), the report as a role sees it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.outreach.studio.rehearsal_view import (
    DAYS_DEFAULT,
    ERROR_TAIL,
    REDACTED,
    RehearsalError,
    command,
    error_tail,
    ordered_samples,
    period,
    read_days,
    read_report,
    redact,
    shown,
)

NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def sample(kind: str, locale: str, text: str = "Hi") -> dict[str, object]:
    return {
        "message_kind": kind,
        "locale": locale,
        "channel": "email",
        "subject": "S",
        "text": text,
    }


REPORT = {
    "since": "2026-03-02 12:00:00+00:00",
    "until": "2026-03-09 12:00:00+00:00",
    "customers_reached": 3,
    "messages": 4,
    "segments": [{"intent": "apology", "channel": "email", "locale": "en", "customers": 3,
                  "messages": 4}],
    "suppressed": {"frequency_cap": 2, "consent": 1},
    "storms": [],
    "samples": [sample("awaiting_pickup", "en"), sample("delivery_late", "de"),
                sample("delivery_late", "en", "Sorry, Ann")],
    "live": {"rehearsed": {"apology": 3}, "live": {"apology": 1, "checkin": 1},
             "only_rehearsed": 2, "only_live": 1, "only_rehearsed_ids": ["c-ann", "c-cai"],
             "only_live_ids": ["c-dee"]},
    "notes": ["templates: 40 versions"],
}  # fmt: skip


def test_the_days_asked_for_are_1_to_30_and_7_when_not_said():
    assert read_days("") == DAYS_DEFAULT == 7
    assert read_days(" 30 ") == 30 and read_days("1") == 1
    for wrong in ("0", "31", "-1", "7.5", "seven", "١٢", "9" * 40):
        with pytest.raises(RehearsalError):
            read_days(wrong)


def test_the_period_is_fixed_when_asked_and_the_command_rehearses_that_draft_alone():
    since, until = period(7, NOW)
    assert (since, until) == (NOW - timedelta(days=7), NOW)
    args = command("/py", 42, since, until, Path("/data/rehearsals/5"), 1800)
    assert args[:3] == ["/py", "-m", "replay"]
    options = dict(zip(args[3::2], args[4::2], strict=True))
    assert options == {
        "--from": "2026-03-02T12:00:00+00:00",
        "--until": "2026-03-09T12:00:00+00:00",
        "--templates": "42",
        "--output": "json",
        "--work-dir": "/data/rehearsals/5",
        "--timeout": "1800",
    }


def test_what_a_failed_run_said_is_kept_without_the_environments_secrets():
    environ = {
        "KAFKA_SASL_PASSWORD": "hunter2-sasl",
        "OUTREACH_UNSUBSCRIBE_SECRET": "s3cr3t-unsub",
        "SENDGRID_API_KEY": "SG.abcdef",
        "OUTREACH_STUDIO_SECURE_COOKIES": "true",  # not a credential, and too common
        "OUTREACH_DATABASE_URL": "postgresql://outreach:pg-pass@db:5432/outreach",
    }
    said = (
        "error: the rehearsal failed: could not connect to "
        "postgresql://outreach:pg-pass@db:5432/outreach (sasl hunter2-sasl, SG.abcdef)\n"
        "secure cookies: true"
    )
    kept = redact(said, environ)
    for secret in ("pg-pass", "hunter2-sasl", "SG.abcdef"):
        assert secret not in kept
    assert f"postgresql://outreach:{REDACTED}@db:5432/outreach" in kept
    assert "secure cookies: true" in kept


def test_a_long_error_keeps_its_last_lines_and_a_silent_one_its_exit_code():
    lines = "\n".join(f"line {i} " + "x" * 50 for i in range(200))
    tail = error_tail(lines, {}, 1)
    assert len(tail) <= ERROR_TAIL + 1 and tail.startswith("…line ")
    assert tail.endswith("line 199 " + "x" * 50)
    assert error_tail("  \n", {}, 1) == "the rehearsal exited with code 1 and said nothing"


def test_a_report_is_the_commands_json_document():
    assert read_report(json.dumps(REPORT))["customers_reached"] == 3
    for wrong in ("", "Traceback …", "[1, 2]", '{"notes": []}'):
        with pytest.raises(RehearsalError):
            read_report(wrong)


def test_the_drafts_own_kind_comes_first_in_its_language_first():
    samples = [sample("awaiting_pickup", "en"), sample("delivery_late", "de"),
               sample("churn_risk", "en"), sample("delivery_late", "en")]  # fmt: skip
    order = [(s["message_kind"], s["locale"]) for s in ordered_samples(samples, "delivery_late",
                                                                        "en-GB")]  # fmt: skip
    assert order == [("delivery_late", "en"), ("delivery_late", "de"),
                     ("awaiting_pickup", "en"), ("churn_risk", "en")]  # fmt: skip


def test_a_role_that_does_not_see_messages_gets_the_totals_and_no_sample():
    viewer = shown(REPORT, "delivery_late", "en", messages=False)
    editor = shown(REPORT, "delivery_late", "en", messages=True)
    assert viewer.samples is None
    assert "Sorry, Ann" not in repr(viewer)
    assert (viewer.customers_reached, viewer.messages) == (3, 4)
    assert viewer.suppressed == [("frequency_cap", 2), ("consent", 1)]
    assert viewer.live is not None
    assert viewer.live.intents == [("apology", 3, 1), ("checkin", 0, 1)]
    assert (viewer.live.only_rehearsed, viewer.live.only_live_ids) == (2, ["c-dee"])
    assert editor.samples is not None and editor.samples[0]["text"] == "Sorry, Ann"
    assert shown({"customers_reached": 0}, "delivery_late", "en", messages=True).live is None
