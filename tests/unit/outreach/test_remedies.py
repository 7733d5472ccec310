"""Remedy policies (domain/remedies.py): what a document may say, which rule a message
meets, what a remedy costs the budget, and the default policy."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.outreach.domain import remedies
from services.outreach.domain.remedies import Facts, PolicyError, Remedy

AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = {
    "currency": "EUR",
    "budget": {"period": "month", "cap": "500"},
    "costs": {"free_shipping": "4.90", "expedited_reship": "12.00"},
    "rates": {"GBP": "1.17"},
    "rules": [
        {"kinds": ["carrier_exception"], "severities": ["critical"], "values": ["high"],
         "offer": ["expedited_reship", "credit:15", "amount:10"]},
        {"intents": ["apology"], "offer": ["percent:10", "free_shipping"]},
        {"intents": ["check_in"], "offer": ["percent:15"]},
    ],
}  # fmt: skip


def facts(**kw: object) -> Facts:
    base = dict(
        message_kind="delivery_late", intent="apology", severity="warning",
        customer_value="standard", offer_tier=None, order_total=Decimal("80.00"),
        order_currency="EUR",
    )  # fmt: skip
    return Facts(**(base | kw))  # type: ignore[arg-type]


def test_the_first_matching_rule_gives_the_remedies_best_first():
    policy = remedies.parse(POLICY)
    lost = facts(message_kind="carrier_exception", severity="critical", customer_value="high")
    assert [str(r) for r in policy.offers(lost)] == ["expedited_reship", "credit:15", "amount:10"]
    assert [str(r) for r in policy.offers(facts())] == ["percent:10", "free_shipping"]
    assert policy.offers(facts(intent="status_update")) == ()


def test_a_check_in_gets_a_remedy_only_with_marketing_consent():
    policy = remedies.parse(POLICY)
    assert policy.offers(facts(intent="check_in")) == ()
    assert [str(r) for r in policy.offers(facts(intent="check_in", offer_tier="standard"))] == [
        "percent:15"
    ]


def test_what_a_remedy_costs_the_budget():
    policy = remedies.parse(POLICY)
    assert policy.cost(Remedy.parse("percent:10"), facts()) == Decimal("8.00")
    assert policy.cost(Remedy.parse("percent:10"), facts(order_total=None)) == Decimal("5.00")
    assert policy.cost(Remedy.parse("amount:10"), facts(order_currency="GBP")) == Decimal("11.70")
    assert policy.cost(Remedy.parse("credit:15"), facts(order_currency="USD")) is None  # no rate
    assert policy.cost(Remedy.parse("expedited_reship"), facts()) == Decimal("12.00")
    assert policy.cost(Remedy.parse("free_shipping"), facts()) == Decimal("4.90")


def test_periods():
    for period, expected in (("day", "2026-12-07"), ("week", "2026-W50"), ("month", "2026-12")):
        policy = remedies.parse({**POLICY, "budget": {"period": period, "cap": "1"}})
        assert policy.period_of(AT) == expected


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"currency": "euro"}, "three capital letters"),
        ({"budget": {"period": "year"}}, "budget.period"),
        ({"budget": {"cap": "lots"}}, "budget.cap: not a number"),
        ({"rules": {}}, "rules: a list"),
        ({"rules": [{"offer": ["cashback:5"]}]}, "rules[1].offer"),
        ({"rules": [{"offer": ["percent:120"]}]}, "below 100"),
        ({"rules": [{"offer": ["free_shipping:3"]}]}, "takes no value"),
        ({"rules": [{"offer": []}]}, "a list of remedies"),
        ({"rules": [{"kinds": "delivery_late", "offer": ["percent:5"]}]}, "rules[1].kinds"),
        ({"rules": [{"kind": ["x"], "offer": ["percent:5"]}]}, "unknown keys: kind"),
        ({"costs": {"coffee": "1"}}, "costs.coffee"),
        ({"rates": {"gbp": "1.1"}}, "rates.gbp"),
        ({"valid_days": 0}, "valid_days"),
        ({"prefix": "sorry"}, "prefix"),
        ({"colour": "red"}, "unknown keys: colour"),
        ({"budget": {"cap": "NaN"}}, "a finite number"),
        ({"budget": {"cap": "Infinity"}}, "a finite number"),
        ({"budget": ["month"]}, "budget: an object"),
        ({"typical_order": "-5"}, "not below 0"),
        ({"valid_days": True}, "valid_days"),
        ({"rules": [{"offer": ["percent:NaN"]}]}, "a finite number"),
    ],
)
def test_a_policy_that_cannot_be_used_says_where(change, error):
    with pytest.raises(PolicyError, match=error.replace("[", r"\[").replace("]", r"\]")):
        remedies.parse({**POLICY, **change})


def test_the_default_policy_keeps_the_goodwill_codes_check_ins_had():
    default = remedies.DEFAULT
    assert default.cap is None
    for tier, severity, expected in (
        ("standard", "warning", "percent:10"),
        ("standard", "critical", "percent:15"),
        ("returns_goodwill", "critical", "percent:10"),
        ("high_value", "info", "percent:15"),
        ("high_value", "critical", "percent:20"),
    ):
        f = facts(intent="check_in", offer_tier=tier, severity=severity)
        assert [str(r) for r in default.offers(f)] == [expected], (tier, severity)
    assert default.offers(facts()) == ()  # an apology carries none until a policy says so


def test_a_preview_shows_the_first_remedy_with_a_stand_in_code():
    policy = remedies.parse(POLICY)
    shown = remedies.preview(policy, facts(), AT, "[code]")
    assert shown is not None
    assert (shown["kind"], shown["value"], shown["code"]) == ("percent", "10", "[code]")
    lost = facts(message_kind="carrier_exception", severity="critical", customer_value="high")
    reship = remedies.preview(policy, lost, AT, "[code]")
    assert reship is not None and reship["code"] is None
