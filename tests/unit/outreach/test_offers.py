"""Remedy codes: deterministic per decision, unguessable without the secret (what they
are worth: tests/unit/outreach/test_remedies.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.domain.offers import CODE_PATTERN, offer_code

SECRET = "s3cret"
NOW = datetime(2026, 3, 12, 9, 0, tzinfo=UTC)


def test_the_same_decision_always_gets_the_same_code():
    assert offer_code("dec-1", SECRET) == offer_code("dec-1", SECRET)


def test_codes_look_like_sorry_xxxx_xxxx_without_look_alikes():
    code = offer_code("dec-1", SECRET)
    assert CODE_PATTERN.match(code) and code.startswith("SORRY-")
    assert not set(code[6:]) & set("01OI")


@given(st.text(min_size=1), st.text(min_size=1))
def test_different_decisions_get_different_codes(a, b):
    if a != b:
        assert offer_code(a, SECRET) != offer_code(b, SECRET)


def test_the_code_depends_on_the_secret_and_needs_one():
    assert offer_code("dec-1", SECRET) != offer_code("dec-1", "other")
    with pytest.raises(ValueError):
        offer_code("dec-1", "")
