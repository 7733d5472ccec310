"""Outcomes (domain/outcomes.py): facts from events, who was exposed when, what became
of them within each window, and control against treatment."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.outreach.domain import outcomes
from services.outreach.domain.outcomes import BY_NAME, Decided, Exposure, Fact

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def arm(name: str, which: str, effect: str | None = None) -> dict[str, object]:
    return {"experiment": name, "subject": "all", "arm": which, "effect": effect}


def decided(did: str, cid: str, at: datetime, *arms: dict[str, object], kind="delivery_late"):
    return Decided(did, cid, "o-1", at, kind, "apology", "sent", list(arms))


def exposure(arm_name: str = "treatment", order: str | None = "o-1") -> Exposure:
    return Exposure("exp", "all", "c-1", arm_name, T0, order, "delivery_late", "apology")


def fact(kind: str, days: float, **kw: object) -> Fact:
    return Fact(
        f"e-{kind}-{days}", "c-1", kw.pop("order", "o-9"), T0 + timedelta(days=days), kind, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event_type", "data", "kind"),
    [
        ("order.placed", {"customer_id": "c", "total": "9.90", "currency": "EUR"}, "order"),
        ("order.cancelled", {"order_id": "o", "cancelled_by": "merchant"}, "cancellation"),
        ("return.requested", {"customer_id": "c", "order_id": "o", "reason": "damaged"}, "return"),
        ("return.refunded", {"order_id": "o", "amount": "9.90", "currency": "EUR"}, "refund"),
        ("feedback.received", {"customer_id": "c", "kind": "csat", "score": 4}, "csat"),
        ("support.ticket.opened", {"customer_id": "c", "topic": "where_is_my_order"}, "ticket"),
        ("contact.opted_out", {"customer_id": "c", "channel": "email"}, "unsubscribe"),
    ],
)  # fmt: skip
def test_the_events_that_are_outcomes(event_type, data, kind):
    found = outcomes.fact_of(event_type, "e-1", T0, data)
    assert found is not None and found.kind == kind and found.at == T0


def test_other_events_are_not():
    assert outcomes.fact_of("shipment.created", "e", T0, {}) is None
    assert outcomes.fact_of("return.received", "e", T0, {}) is None


def test_a_customer_is_exposed_at_the_first_decision_an_arm_could_act_on():
    rows = [
        decided("d3", "c-1", T0 + timedelta(days=3), arm("exp", "control", "withheld")),
        decided("d1", "c-1", T0, arm("exp", "control", "protected")),  # a lost parcel: sent
        decided("d2", "c-1", T0 + timedelta(days=1), arm("exp", "control", "withheld")),
        decided("d4", "c-2", T0, arm("exp", "treatment"), arm("other", "control", "withheld")),
    ]
    found = outcomes.exposures(rows)
    assert sorted((e.customer_id, e.at) for e in found["exp"]) == [
        ("c-1", T0 + timedelta(days=1)),
        ("c-2", T0),
    ]
    assert [e.arm for e in found["other"]] == ["control"]


def test_only_windows_that_have_passed_count():
    facts = [fact("order", 5), fact("ticket", 1, detail="where_is_my_order")]
    young = outcomes.measure(exposure(), facts, T0 + timedelta(days=40), None)
    assert young["repeat_30"] == 1.0 and young["wismo_30"] == 1.0
    assert "repeat_90" not in young and "spend_90" not in young  # 90 days not over yet
    assert outcomes.measure(exposure(), facts, T0 + timedelta(days=10), None) == {}


def test_the_order_a_decision_was_about_is_not_a_repeat_order_and_spend_is_in_one_currency():
    facts = [
        fact("order", 2, order="o-1", amount=Decimal("50"), currency="EUR"),
        fact("order", 40, amount=Decimal("20"), currency="EUR"),
        fact("order", 41, amount=Decimal("99"), currency="GBP"),
        fact("csat", 3, score=2),
        fact("csat", 4, score=4),
    ]
    got = outcomes.measure(exposure(), facts, T0 + timedelta(days=100), "EUR")
    assert got["repeat_30"] == 0.0 and got["repeat_90"] == 1.0
    assert got["spend_90"] == 20.0
    assert got["csat_90"] == 3.0 and "nps_90" not in got  # no NPS answer: left out


def test_a_known_difference_of_rates():
    control = [1.0] * 200 + [0.0] * 800  # 20 %
    treatment = [1.0] * 300 + [0.0] * 700  # 30 %
    c = outcomes.compare(BY_NAME["repeat_30"], control, treatment)
    assert (c.control, c.treatment) == (0.2, 0.3)
    assert c.difference == pytest.approx(0.1)
    assert c.low < 0.1 < c.high and c.low > 0.06 and c.high < 0.14
    assert c.verdict == "better"
    # The textbook figure for 20 % against 30 % at 95 % and 80 % power: 291 per arm.
    assert c.needed_per_arm == 291


def test_lower_is_better_for_contacts_and_no_difference_says_so():
    less = outcomes.compare(BY_NAME["wismo_30"], [1.0] * 30 + [0.0] * 70, [1.0] * 10 + [0.0] * 90)
    assert less.verdict == "better"
    same = outcomes.compare(BY_NAME["repeat_30"], [1.0, 0.0] * 50, [0.0, 1.0] * 50)
    assert same.verdict == "no difference yet" and same.needed_per_arm is None
    few = outcomes.compare(BY_NAME["repeat_30"], [1.0] * 4, [0.0, 1.0] * 10)
    assert few.verdict == "too few customers" and few.low is None
    assert few.control is None  # four customers' figures would be theirs: not shown
    alike = outcomes.compare(BY_NAME["csat_90"], [5.0] * 6, [4.0] * 6)
    assert alike.verdict == "cannot tell" and alike.low is None


def test_a_minimum_effect_sets_the_customers_needed():
    c = outcomes.compare(BY_NAME["repeat_30"], [1.0, 0.0] * 50, [0.0, 1.0] * 50, min_effect=0.1)
    assert c.needed_per_arm == 385  # 50 % against 60 %: (z95 + z80)² × (0.25 + 0.24) / 0.01


def test_student_t_for_small_samples():
    assert outcomes.t_975(10) == pytest.approx(2.228, abs=0.002)
    assert outcomes.t_975(5) == pytest.approx(2.571, abs=0.005)


def test_fewer_contacts_need_as_many_customers_as_more_orders():
    lower = outcomes.compare(BY_NAME["wismo_30"], [1.0, 0.0] * 50, [0.0, 1.0] * 50, 0.1)
    assert lower.needed_per_arm == 385  # 50 % against 40 %: the spread below, not above


def test_means_compare_with_welch():
    rnd = random.Random(3)
    control = [rnd.gauss(3.0, 1.0) for _ in range(400)]
    treatment = [rnd.gauss(3.5, 1.0) for _ in range(400)]
    c = outcomes.compare(BY_NAME["csat_90"], control, treatment)
    assert c.low < 0.5 < c.high and c.verdict == "better"


def test_the_interval_covers_the_true_difference_about_95_times_in_100():
    rnd = random.Random(11)
    covered = 0
    for _ in range(400):
        control = [float(rnd.random() < 0.2) for _ in range(300)]
        treatment = [float(rnd.random() < 0.3) for _ in range(300)]
        c = outcomes.compare(BY_NAME["repeat_30"], control, treatment)
        covered += c.low <= 0.1 <= c.high
    assert 0.92 <= covered / 400 <= 0.98


def test_the_report_slices_an_experiment_by_rule_when_it_covers_several():
    exposures = {
        "exp": [
            Exposure("exp", "all", f"c-{i}", ("control", "treatment")[i % 2], T0, None, kind, "ok")
            for i, kind in enumerate(["delivery_late"] * 2 + ["dispatch_late"] * 2)
        ]
    }  # fmt: skip
    groups = outcomes.report(exposures, {}, T0 + timedelta(days=100))
    assert [g.slice for g in groups] == ["", "rule:delivery_late", "rule:dispatch_late"]
