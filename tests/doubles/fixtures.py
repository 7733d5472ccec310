"""pytest fixtures for the provider doubles (imported by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.doubles.sendgrid import SendGridDouble
from tests.doubles.twilio import TwilioDouble


@pytest.fixture
def twilio_double() -> Iterator[TwilioDouble]:
    with TwilioDouble() as double:
        yield double  # type: ignore[misc]


@pytest.fixture
def sendgrid_double() -> Iterator[SendGridDouble]:
    with SendGridDouble() as double:
        yield double  # type: ignore[misc]
