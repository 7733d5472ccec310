"""Log lines carry ids, never personal data or secrets: sensitive keys are blanked and
addresses or phone numbers inside any value are masked, whatever a caller passes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
import structlog

from common.logs import configure_logging, get_logger, handling, redact


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    configure_logging("test_service", "INFO", "json")
    capsys.readouterr()
    yield capsys
    structlog.reset_defaults()


def logged(capture: pytest.CaptureFixture[str]) -> tuple[list[dict[str, object]], str]:
    text = capture.readouterr().out
    return [orjson.loads(line) for line in text.splitlines() if line.strip()], text


def test_sensitive_keys_and_values_never_reach_the_log(lines: pytest.CaptureFixture[str]) -> None:
    log = get_logger("test")
    log.info(
        "message_sent",
        email="ada@example.com",
        phone="+4915112345678",
        auth_token="s3cr3t",
        note="reply to ada+news@example.co.uk or +447911123456, order o-1",
        customer_id="c-42",
    )
    [line], text = logged(lines)
    assert line["email"] == line["phone"] == line["auth_token"] == "[redacted]"
    assert line["note"] == "reply to [email] or [phone], order o-1"
    assert line["customer_id"] == "c-42" and line["service"] == "test_service"
    for secret in ("ada@example.com", "4915112345678", "s3cr3t", "447911123456"):
        assert secret not in text


def test_a_line_names_the_event_being_handled_and_writes_any_value(
    lines: pytest.CaptureFixture[str],
) -> None:
    log = get_logger("test")
    with handling("evt-1", "order.placed"):
        log.info("handled", at=datetime(2026, 3, 2, tzinfo=UTC), total=Decimal("9.90"))
    [line], _ = logged(lines)
    assert (line["event_id"], line["event_type"]) == ("evt-1", "order.placed")
    assert line["at"] == "2026-03-02T00:00:00+00:00" and line["total"] == "Decimal('9.90')"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("plain text, a + b", "plain text, a + b"),
        ("ada@example.com", "[email]"),
        ("+4915112345678", "[phone]"),
        ("tel +49 151", "tel +49 151"),  # too short for a number
    ],
)
def test_redact_masks_addresses_and_numbers_only(value: str, masked: str) -> None:
    assert redact(value) == masked
