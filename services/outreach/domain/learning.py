"""Learning which remedy works (docs/remedies.md, "Learning"): for a message whose rule
says `learn`, the remedies it allows are ranked by their measured uplift on retention
per unit of cost, by Thompson sampling — each arm's chance that the customer orders again
within the window is drawn from its Beta posterior (1 + orders again, 1 + not), the
uplift is the draw less the draw of going without a remedy, and the arms are ranked by
uplift per unit of the budget's currency. With the exploration share, an arm chosen
uniformly goes first instead, so every arm keeps being tried (the budget may still refuse
an expensive one). The ranking is the order the grant tries the arms in: the budget
still decides (the best arm that fits). Only an arm granted as the learner's first
choice counts as evidence for it (a fallback the budget forced would be chosen by the
time of the period, not at random).

Deterministic for a decision: the draws come from a generator seeded by the decision id,
so a retry ranks alike. Pure.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

NONE = "none"  # going without a remedy: the baseline every uplift is measured against


@dataclass(frozen=True)
class ArmStats:
    """What one arm did in one context: customers whose window has passed, and how many
    of them ordered again within it."""

    trials: int = 0
    successes: int = 0


@dataclass(frozen=True)
class Ranked:
    order: tuple[str, ...]  # the arms (remedies, and "none"), best first
    explored: bool
    why: str


def rng_for(decision_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(decision_id.encode()).digest()[:8], "big"))


def rank(
    arms: Sequence[str],
    costs: Mapping[str, Decimal | None],
    stats: Mapping[str, ArmStats],
    rnd: random.Random,
    exploration: float,
) -> Ranked:
    """`arms`: the remedies allowed (their policy names, e.g. "percent:10"), best-first
    as the policy lists them; `costs`: each one's cost (None: cannot be priced);
    `stats`: per arm and for `NONE`. Returns every arm and `NONE`, best first."""
    base = stats.get(NONE, ArmStats())
    baseline = rnd.betavariate(1 + base.successes, 1 + base.trials - base.successes)
    scores: dict[str, float] = {NONE: 0.0}
    draws: dict[str, float] = {}
    for arm in arms:
        s = stats.get(arm, ArmStats())
        draws[arm] = rnd.betavariate(1 + s.successes, 1 + s.trials - s.successes)
        cost = costs.get(arm)
        if cost is None:
            scores[arm] = float("-inf")  # cannot be priced: last
            continue
        uplift = draws[arm] - baseline
        scores[arm] = uplift / max(float(cost), 0.01)
    everyone = [*arms, NONE]
    order = sorted(everyone, key=lambda a: (-scores[a], everyone.index(a)))
    explored = rnd.random() < exploration
    if explored:
        pick = rnd.choice(everyone)
        order = [pick, *(a for a in order if a != pick)]
    why = _why(order[0], costs, stats, explored)
    return Ranked(tuple(order), explored, why)


def _why(
    first: str, costs: Mapping[str, Decimal | None], stats: Mapping[str, ArmStats], explored: bool
) -> str:
    """The reason, with each arm's measured rate (the posterior mean), not the draw."""

    def seen(arm: str) -> str:
        s = stats.get(arm, ArmStats())
        return f"{s.successes}/{s.trials} ordered again"

    def mean(arm: str) -> float:
        s = stats.get(arm, ArmStats())
        return (s.successes + 1) / (s.trials + 2)

    if explored:
        return f"learning: {first} tried to learn more ({seen(first)})"
    if first == NONE:
        return f"learning: no remedy pays for itself yet (without one: {seen(NONE)})"
    return (
        f"learning: {first} ranked first, measured uplift {mean(first) - mean(NONE):+.3f} for "
        f"{costs.get(first)} ({seen(first)}; without a remedy {seen(NONE)})"
    )
