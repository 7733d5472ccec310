"""Goodwill offers: deterministic codes per decision, values by tier and severity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.domain.offers import (
    CODE_PATTERN,
    OfferPolicy,
    OfferRule,
    make_offer,
    offer_code,
)

SECRET = "s3cret"
NOW = datetime(2026, 3, 12, 9, 0, tzinfo=UTC)


def test_the_same_decision_always_gets_the_same_code():
    assert offer_code("dec-1", SECRET) == offer_code("dec-1", SECRET)
    first = make_offer("dec-1", "standard", "warning", NOW, SECRET)
    again = make_offer("dec-1", "standard", "warning", NOW, SECRET)
    assert first == again and first is not None


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


@pytest.mark.parametrize(
    ("tier", "severity", "value"),
    [
        ("standard", "warning", "10"),
        ("standard", "critical", "15"),
        ("high_value", "warning", "15"),
        ("high_value", "critical", "20"),
        ("returns_goodwill", "critical", "10"),
        ("unknown_tier", "critical", "15"),  # unknown tiers are treated as standard
    ],
)
def test_default_value_by_tier_and_severity(tier, severity, value):
    offer = make_offer("d", tier, severity, NOW, SECRET)
    assert offer is not None and offer.kind == "percent" and offer.value == value
    assert offer.expires_at == NOW + timedelta(days=30)
    assert offer.as_context()["code"] == offer.code


def test_no_tier_no_offer():
    assert make_offer("d", None, "critical", NOW, SECRET) is None


def test_a_configured_table_with_amounts():
    policy = OfferPolicy.from_mapping(
        {"standard": {"*": "5%"}, "high_value": {"critical": "20 EUR", "*": "10"}},
        valid_days=14,
        prefix="THANKS",
    )
    assert policy.rule("high_value", "critical") == OfferRule("amount", Decimal("20"), "EUR")
    fixed = make_offer("d", "high_value", "critical", NOW, SECRET, policy)
    assert fixed is not None and (fixed.kind, fixed.value, fixed.currency) == (
        "amount",
        "20.00",
        "EUR",
    )
    assert fixed.code.startswith("THANKS-") and fixed.expires_at == NOW + timedelta(days=14)
    in_order_currency = make_offer("d", "high_value", "info", NOW, SECRET, policy, currency="CHF")
    assert in_order_currency is not None and in_order_currency.currency == "CHF"
    assert make_offer("d", "high_value", "info", NOW, SECRET, policy) is None  # no currency
    percent = make_offer("d", "standard", "info", NOW, SECRET, policy)
    assert percent is not None and percent.value == "5"


@pytest.mark.parametrize("table", [{"high_value": {"*": "5%"}}, {"standard": {"*": "lots"}}])
def test_a_bad_table_fails_at_start_up(table):
    with pytest.raises(ValueError):
        OfferPolicy.from_mapping(table)
