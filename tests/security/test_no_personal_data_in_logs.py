"""Secrets and personal data never reach logs, errors or dead letters: not through an
exception's text or traceback, not through a database error's SQL parameters, not
through a dead letter's reason, not through the settings' repr."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
import structlog

from common.clock import FixedClock
from common.envelope import new_event
from common.kafka import DeadLetters, InputMessage, MessageProcessor, RecordingProducer
from common.logs import configure_logging, get_logger
from services.outreach.config import Settings as OutreachSettings
from services.preferences.config import Settings as PreferencesSettings

ADA = "ada.lovelace@example.com"
PHONE = "+4915112345678"


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    configure_logging("test_service", "INFO", "json")
    capsys.readouterr()
    yield capsys
    structlog.reset_defaults()


def test_an_exceptions_text_and_traceback_are_redacted(lines):
    log = get_logger("test")
    try:
        raise ValueError(f"could not reach {ADA} or {PHONE}")
    except ValueError:
        log.exception("send_failed")
    text = lines.readouterr().out
    [line] = [orjson.loads(x) for x in text.splitlines() if x.strip()]
    assert "ValueError" in line["exception"]
    assert ADA not in text and "4915112345678" not in text


def test_a_library_logging_an_exception_through_stdlib_is_redacted(lines):
    import logging

    try:
        raise RuntimeError(f"row for {ADA}")
    except RuntimeError:
        logging.getLogger("some.library").exception("failed")
    text = lines.readouterr().out
    assert "RuntimeError" in text and ADA not in text


def test_database_errors_carry_no_sql_parameters(tmp_path):
    from sqlalchemy import text as sql

    from services.outreach.adapters.db import create_engine

    async def attempt() -> str:
        engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
        try:
            async with engine.connect() as conn:
                await conn.execute(sql("SELECT * FROM nowhere WHERE email = :e"), {"e": ADA})
        except Exception as exc:
            return str(exc)
        finally:
            await engine.dispose()
        return ""

    message = asyncio.run(attempt())
    assert "nowhere" in message and ADA not in message


def test_a_dead_letter_reason_echoes_no_value_of_the_failure():
    producer = RecordingProducer()

    async def broken(_msg, _event):
        raise KeyError(f"no row for {ADA} ({PHONE})")

    processor = MessageProcessor(
        "test", broken, DeadLetters(producer, "deadletter.test", "test"), FixedClock(
            datetime(2026, 3, 2, tzinfo=UTC)
        ), retries=0, backoff_s=0
    )  # fmt: skip
    event = new_event(
        type="customer.upserted",
        source="/t",
        subject="c-1",
        time=datetime(2026, 3, 2, tzinfo=UTC),
        data={"customer_id": "c-1"},
        id="evt-1",
    )
    message = InputMessage("commerce.customers", 0, 7, b"c-1", event.to_bytes())
    assert asyncio.run(processor.process(message)) == "dead_lettered"
    [(_topic, _key, _value, headers)] = producer.records
    reason = dict(headers)["dlq.reason"].decode()
    assert "KeyError" in reason and ADA not in reason and "4915112345678" not in reason


@pytest.mark.parametrize("settings_class", [OutreachSettings, PreferencesSettings])
def test_the_settings_repr_shows_no_database_password(settings_class):
    settings = settings_class(database_url="postgresql://outreach:hunter2@db:5432/outreach")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert settings.database_url.endswith("@db:5432/outreach")  # the value itself is intact
