"""Experiments (domain/experiments.py): the arm a customer is in, what it does to a
decision, and the configuration's errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.domain import experiments as trials
from services.outreach.domain.decisions import DeliveryPolicy, RequestFacts, decide
from tests.outreach_requests import EMAIL, SMS, plan
from tests.unit.outreach.test_decisions import NOON_BERLIN


def facts(kind: str = "delivery_late", intent: str = "apology", **kw: object) -> RequestFacts:
    base = RequestFacts(
        request_id="req-1",
        customer_id="c-1",
        intent=intent,
        message_kind=kind,
        severity="warning",
        cause_id="inc-1",
        offer_tier=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def decided(request: RequestFacts, policy: DeliveryPolicy, templates=None):
    return decide(
        request,
        plan=plan(EMAIL, SMS, opt_in=True),
        already_decided=False,
        resolved=False,
        paused=False,
        sent_in_window=0,
        now=NOON_BERLIN,
        policy=policy,
        templates=templates,
    )


def everyone(subject: str, name: str = "exp") -> DeliveryPolicy:
    """Every customer in the control arm (a share just below 1)."""
    return DeliveryPolicy(experiments=trials.parse(f"{name} {subject} 0.9999999"))


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=20))
def test_the_arm_depends_only_on_the_experiment_and_the_customer(customer, name):
    assert trials.bucket(name, customer) == trials.bucket(name, customer)
    assert 0 <= trials.bucket(name, customer) < 1


def test_the_control_share_is_respected_and_experiments_are_independent():
    a = trials.Experiment("a", "all", "", 0.2)
    b = trials.Experiment("b", "all", "", 0.5)
    arms = [(a.arm_of(f"c-{i}"), b.arm_of(f"c-{i}")) for i in range(20_000)]
    in_a = sum(x == "control" for x, _ in arms)
    both = sum(x == "control" and y == "control" for x, y in arms)
    assert 3_700 < in_a < 4_300
    assert 1_800 < both < 2_200  # 0.2 × 0.5: the arms do not follow each other


def test_one_customer_is_in_the_same_arm_for_every_message():
    policy = DeliveryPolicy(holdout_share=0.5)
    for customer in (f"c-{i}" for i in range(50)):
        outcomes = {
            decided(facts(customer_id=customer, request_id=f"r-{n}"), policy).outcome
            for n in range(5)
        }
        assert len(outcomes) == 1


@pytest.mark.parametrize(
    ("subject", "request_facts", "covered"),
    [
        ("all", facts(), True),
        ("rule:delivery_late", facts(), True),
        ("rule:dispatch_late", facts(), False),
        ("intent:apology", facts(), True),
        ("intent:check_in", facts(), False),
        ("remedy:percent", facts(remedy="percent"), True),
        ("remedy:credit", facts(remedy="percent"), False),
        ("remedy:*", facts(remedy="expedited_reship"), True),
        ("remedy:*", facts(), False),
    ],
)
def test_what_an_experiment_covers(subject, request_facts, covered):
    d = decided(request_facts, everyone(subject))
    assert bool(d.arms) is covered
    if covered:
        assert d.arms[0].arm == "control"


def test_the_control_arm_of_a_message_experiment_withholds_it_and_says_which():
    d = decided(facts(), everyone("intent:apology", "apology-effect"))
    assert (d.outcome, d.reason) == ("suppress", "holdout")
    assert "apology-effect" in d.rule and "intent:apology" in d.rule
    assert d.arms[0].as_record()["effect"] == "withheld"


@pytest.mark.parametrize(
    "request_facts",
    [
        facts(kind="carrier_exception", severity="critical"),  # a lost parcel
        facts(kind="returned_to_sender", severity="critical"),
        facts(kind="awaiting_pickup", intent="status_update"),
        facts(kind="delivery_failed", intent="status_update"),
        facts(kind="carrier_exception", intent="status_update"),
    ],
)
def test_critical_and_action_needed_messages_are_never_withheld(request_facts):
    d = decided(request_facts, DeliveryPolicy(holdout_share=1.0))
    assert d.outcome == "send"
    assert [a.effect for a in d.arms] == ["protected"]


def test_a_remedy_experiment_keeps_the_message_and_takes_the_remedy():
    d = decided(
        facts(intent="check_in", offer_tier="standard", remedy="percent"), everyone("remedy:*")
    )
    assert d.outcome == "send"
    assert trials.without_remedy([a.as_record() for a in d.arms])
    assert d.category == "marketing"  # consent as for the offer: the arms stay comparable


def test_a_template_version_experiment_follows_the_channel_the_message_takes():
    policy = everyone("template:delivery_late.email.en@3")
    three = {"email": "delivery_late.email.en@3", "sms": "delivery_late.sms.en@1"}
    assert decided(facts(), policy, three).reason == "holdout"
    assert decided(facts(), policy, {"email": "delivery_late.email.en@4"}).outcome == "send"


def test_an_arm_a_withheld_message_never_reached_is_no_evidence():
    experiments = trials.parse("a intent:apology 0.9999999; b all 0.0000001; c all 0.9999999")
    d = decided(facts(), DeliveryPolicy(experiments=experiments))
    assert d.reason == "holdout" and "experiment a" in d.rule
    # b's treatment did not reach the customer; c's control withholds, as meant.
    assert [(a.experiment, a.effect) for a in d.arms] == [
        ("a", "withheld"), ("b", "not_reached"), ("c", "withheld"),
    ]  # fmt: skip


def test_treatment_arms_are_recorded_without_an_effect():
    policy = DeliveryPolicy(experiments=trials.parse("tiny all 0.0000001"))
    d = decided(facts(), policy)
    assert [(a.experiment, a.arm, a.effect) for a in d.arms] == [("tiny", "treatment", None)]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("one", "want '<name> <subject> <control share>'"),
        ("Bad all 10%", "lower-case"),
        ("x kind:foo 10%", "the subject is"),
        ("x all:foo 10%", "the subject is"),
        ("x template:delivery_late 10%", "delivery_late.email.en@3"),
        ("x remedy:standard 10%", "a remedy is * or one of"),
        ("x all 0", "above 0 and below 1"),
        ("x all 100%", "above 0 and below 1"),
        ("x all ten", "10% or 0.1"),
        ("x all 10%; x intent:apology 5%", "named twice"),
        ("holdout all 10%", "named twice"),
    ],
)
def test_configuration_errors_name_the_entry(text, error):
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace("*", r"\*")):
        trials.parse(text)


def test_entries_by_semicolons_or_lines():
    parsed = trials.parse("a all 10%;\n b intent:apology 0.25\n")
    assert [(e.name, e.subject, e.control_share) for e in parsed] == [
        ("a", "all", 0.1),
        ("b", "intent:apology", 0.25),
    ]
