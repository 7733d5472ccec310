"""The ramp after a resume: the held backlog is released from 10 % to the full rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.outreach.domain.guards import GroupShare
from services.outreach.domain.ramp import Paused, Ramp, ReleaseBudget

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_rate_climbs_linearly_from_the_floor_to_full():
    ramp = Ramp(T0, minutes=10, full_per_s=50)
    assert ramp.rate_at(T0) == 5
    assert ramp.rate_at(T0 + timedelta(minutes=5)) == pytest.approx(27.5)
    assert ramp.rate_at(T0 + timedelta(minutes=10)) == 50
    assert ramp.rate_at(T0 + timedelta(hours=1)) == 50
    assert not ramp.done(T0 + timedelta(minutes=9)) and ramp.done(T0 + timedelta(minutes=10))
    assert Ramp(T0, minutes=0, full_per_s=50).rate_at(T0) == 50


def test_budget_grants_what_the_rate_has_earned_and_never_more_than_wanted():
    budget = ReleaseBudget(Ramp(T0, minutes=10, full_per_s=10))  # 1/s at first
    assert budget.take(T0, 100) == 1  # one to start with
    assert budget.take(T0, 100) == 0
    assert budget.take(T0 + timedelta(seconds=5), 100) == 5
    late = T0 + timedelta(minutes=20)  # the full rate, but only what is waiting
    assert budget.take(late, 3) == 3
    assert budget.take(late + timedelta(seconds=1), 100) >= 1


def test_each_worker_releases_its_share_of_the_groups_ramp():
    share = GroupShare(workers=2)
    budget = ReleaseBudget(Ramp(T0, minutes=10, full_per_s=10), share=share)
    assert budget.take(T0, 100) == 1
    # 10 s later the group's ramp allows 1.15/s: this worker 0.575/s
    assert budget.take(T0 + timedelta(seconds=10), 100) == 5
    share.workers = 1  # the other one is gone: this one takes the whole ramp (1.3/s)
    assert budget.take(T0 + timedelta(seconds=20), 100) == 13


def test_the_global_ramp_limits_every_intent_and_an_intent_ramp_only_its_own():
    paused = Paused()
    paused.ramps["check_in"] = ReleaseBudget(Ramp(T0, 10, 10))
    assert paused.ramping("check_in", T0) is not None
    assert paused.ramping("apology", T0) is None
    paused.ramps["all"] = ReleaseBudget(Ramp(T0, 10, 10))
    assert paused.ramping("apology", T0) is paused.ramps["all"]
    assert paused.ramping("apology", T0 + timedelta(minutes=11)) is None


def test_pauses_apply_globally_or_per_intent():
    paused = Paused(intents={"check_in"})
    assert paused.applies("check_in") and not paused.applies("apology")
    paused.all = True
    assert paused.applies("apology")
