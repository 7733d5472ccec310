"""The remedy learner (domain/learning.py): Thompson sampling over the allowed remedies,
uplift per unit of cost against going without, an exploration floor, the same ranking
for the same decision."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

import pytest

from services.outreach.domain import learning, remedies
from services.outreach.domain.learning import NONE, ArmStats
from services.outreach.domain.remedies import PolicyError

ARMS = ["amount:10", "percent:10", "free_shipping"]
COSTS = {"amount:10": Decimal("10"), "percent:10": Decimal("5"), "free_shipping": Decimal("4.9")}
KNOWN = {
    NONE: ArmStats(400, 80),  # 20 %
    "amount:10": ArmStats(400, 100),  # 25 %: +5 points for 10 EUR
    "percent:10": ArmStats(400, 160),  # 40 %: +20 points for 5 EUR
    "free_shipping": ArmStats(400, 88),  # 22 %
}


def firsts(stats, exploration=0.0, n=500, costs=COSTS):
    return Counter(
        learning.rank(ARMS, costs, stats, learning.rng_for(f"d-{i}"), exploration).order[0]
        for i in range(n)
    )


def test_with_evidence_the_best_uplift_per_euro_goes_first():
    assert firsts(KNOWN)["percent:10"] >= 480


def test_without_evidence_every_arm_gets_tried():
    seen = firsts({})
    assert set(seen) == {*ARMS, NONE} and min(seen.values()) > 50


def test_the_exploration_floor_keeps_trying_the_others():
    seen = firsts(KNOWN, exploration=0.2, n=2000)
    others = sum(v for k, v in seen.items() if k != "percent:10")
    assert 220 < others < 420  # about 0.2 × 3/4 of the messages (300)


def test_no_remedy_when_none_pays_for_itself():
    useless = {NONE: ArmStats(400, 120), **{a: ArmStats(400, 80) for a in ARMS}}
    assert firsts(useless)[NONE] >= 480


def test_a_remedy_that_cannot_be_priced_comes_last():
    ranked = learning.rank(ARMS, {**COSTS, "percent:10": None}, KNOWN, random.Random(1), 0.0)
    assert ranked.order[-1] == "percent:10"


def test_the_same_decision_ranks_alike_and_says_why():
    one = learning.rank(ARMS, COSTS, KNOWN, learning.rng_for("dec-7"), 0.1)
    two = learning.rank(ARMS, COSTS, KNOWN, learning.rng_for("dec-7"), 0.1)
    assert one == two
    assert one.why.startswith("learning: percent:10 ranked first, measured uplift +0.199")
    assert "160/400 ordered again; without a remedy 80/400" in one.why


@pytest.mark.parametrize(
    ("learn", "error"),
    [
        ({"window_days": 0}, "window_days"),
        ({"exploration": 1.5}, "exploration"),
        ({"often": True}, "learn: true, or"),
        ("yes", "learn: true, or"),
    ],
)
def test_a_learning_rule_is_checked(learn, error):
    rule = {"intents": ["apology"], "offer": ["percent:10"], "learn": learn}
    with pytest.raises(PolicyError, match=error):
        remedies.parse({"rules": [rule]})


def test_a_learner_needs_every_remedy_to_cost_something():
    rule = {"offer": ["percent:10", "free_shipping"], "learn": True}
    with pytest.raises(PolicyError, match="free_shipping cost nothing"):
        remedies.parse({"rules": [rule]})
    remedies.parse({"costs": {"free_shipping": "4.90"}, "rules": [rule]})


def test_learn_true_takes_the_defaults():
    policy = remedies.parse({"rules": [{"offer": ["percent:10"], "learn": True}]})
    (rule,) = policy.rules
    assert rule.learn is not None and rule.learn.window.days == 30
    assert rule.learn.exploration == 0.1
