"""Experiments (docs/outcomes.md): what a message — or its remedy — does, measured
against customers who did not get it.

An experiment covers messages by its subject: every message (`all`), a rule (the
message kind that made it: `rule:delivery_late`), an intent (`intent:apology`), a
template version (`template:delivery_late.email.en@3`, the version that would serve
the message) or a remedy (`remedy:percent`, the kind of remedy the remedy policy would
offer first, docs/remedies.md; `remedy:*`, any). It
puts a share of the customers in its control arm by a hash of the experiment's name and
the customer id, so a customer is in the same arm on every worker, after every restart
and for every message the experiment covers, and the experiments' arms are independent
of each other.

In the control arm of a message experiment the message is not sent (suppressed with
reason `holdout`); in the control arm of a remedy experiment it is sent without the
remedy. Critical and action-needed messages (the customer has something to do: pick a
parcel up, re-arrange a delivery, answer about a parcel held by the carrier) are never
withheld: their arm is recorded as `protected`, and the outcome report leaves them out.
A correction is in no experiment (it answers a message the customer read).

Every decision records the arm of each experiment that covers it (`Arm.as_record`),
shown in the explain timeline and joined to the customer's outcomes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from services.outreach.domain.remedies import KINDS as REMEDY_KINDS

SubjectKind = Literal["all", "rule", "intent", "template", "remedy"]
SUBJECT_KINDS: tuple[SubjectKind, ...] = ("all", "rule", "intent", "template", "remedy")
CONTROL, TREATMENT = "control", "treatment"
# What the control arm did to the decision.
WITHHELD, WITHOUT_REMEDY, PROTECTED = "withheld", "without_remedy", "protected"
NOT_REACHED = "not_reached"  # another experiment withheld the message
# Messages that ask the customer to act: never withheld, whatever their severity.
ACTION_NEEDED = frozenset({"delivery_failed", "awaiting_pickup", "carrier_exception"})
GLOBAL_HOLDOUT = "holdout"  # the experiment OUTREACH_HOLDOUT_SHARE makes
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_TEMPLATE = re.compile(r"^[a-z0-9_]+\.[a-z]+\.[A-Za-z0-9_-]+@[1-9][0-9]*$")


@dataclass(frozen=True)
class Experiment:
    name: str
    kind: SubjectKind
    value: str  # what of its kind it covers ("" for `all`)
    control_share: float

    @property
    def subject(self) -> str:
        return self.kind if self.kind == "all" else f"{self.kind}:{self.value}"

    @property
    def withholds(self) -> bool:
        """Its control arm gets no message (a remedy experiment's gets no remedy)."""
        return self.kind != "remedy"

    def covers(self, facts: Facts) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "rule":
            return facts.message_kind == self.value
        if self.kind == "intent":
            return facts.intent == self.value
        if self.kind == "template":
            return facts.template == self.value
        return bool(facts.remedy) and self.value in ("*", facts.remedy)

    def arm_of(self, customer_id: str) -> str:
        return CONTROL if bucket(self.name, customer_id) < self.control_share else TREATMENT


@dataclass(frozen=True)
class Facts:
    """What an experiment's subject is matched against, for one decision."""

    message_kind: str
    intent: str
    severity: str
    remedy: str | None  # the kind of remedy the policy would offer first, if any
    template: str | None  # "kind.channel.locale@version" that would serve it, if known

    @property
    def protected(self) -> bool:
        return self.severity == "critical" or self.message_kind in ACTION_NEEDED


@dataclass(frozen=True)
class Arm:
    experiment: str
    subject: str
    arm: str  # control | treatment
    control_share: float
    effect: str | None  # withheld | without_remedy | protected | None (no effect)

    def as_record(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "subject": self.subject,
            "arm": self.arm,
            "control_share": self.control_share,
            "effect": self.effect,
        }


def bucket(experiment: str, customer_id: str) -> float:
    """Where a customer falls in [0, 1) for an experiment: the same everywhere, always."""
    digest = hashlib.sha256(f"experiment\x00{experiment}\x00{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiments: Iterable[Experiment], customer_id: str, facts: Facts) -> tuple[Arm, ...]:
    """The arm of each experiment that covers the decision, with what it does to it."""
    arms = []
    for experiment in experiments:
        if not experiment.covers(facts):
            continue
        arm = experiment.arm_of(customer_id)
        effect = None
        if arm == CONTROL:
            if not experiment.withholds:
                effect = WITHOUT_REMEDY
            else:
                effect = PROTECTED if facts.protected else WITHHELD
        arms.append(Arm(experiment.name, experiment.subject, arm, experiment.control_share, effect))
    return tuple(arms)


def withholding(arms: tuple[Arm, ...]) -> tuple[Arm | None, tuple[Arm, ...]]:
    """The first experiment whose control arm withholds the message, if one does, and
    the arms as they stand then: a control arm that withholds is what its experiment
    meant either way; the others (a treatment, a message without its remedy) did not
    reach the customer (`not_reached`: no evidence for their experiments)."""
    held = next((a for a in arms if a.effect == WITHHELD), None)
    if held is None:
        return None, arms
    return held, tuple(a if a.effect == WITHHELD else replace(a, effect=NOT_REACHED) for a in arms)


def without_remedy(records: Iterable[Mapping[str, Any]] | None) -> bool:
    """Whether a decision's recorded arms (a row's `experiments`) put it in a remedy
    experiment's control arm: the message goes without its remedy."""
    return any(r.get("effect") == WITHOUT_REMEDY for r in records or ())


def with_holdout(experiments: tuple[Experiment, ...], share: float) -> tuple[Experiment, ...]:
    """The experiments, and the one `OUTREACH_HOLDOUT_SHARE` makes (covering every
    message) when its share is above 0."""
    if share <= 0:
        return experiments
    return (Experiment(GLOBAL_HOLDOUT, "all", "", share), *experiments)


def parse(text: str) -> tuple[Experiment, ...]:
    """`OUTREACH_EXPERIMENTS`: entries separated by `;` or new lines, each
    `<name> <subject> <control share>` — `apology-effect intent:apology 10%;
    offers remedy:* 0.5`. Errors name the entry."""
    found: list[Experiment] = []
    for raw in re.split(r"[;\n]", text):
        entry = raw.strip()
        if not entry:
            continue
        found.append(_entry(entry))
    names = [GLOBAL_HOLDOUT, *(e.name for e in found)]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(
            f"experiments named twice (or {GLOBAL_HOLDOUT!r}, OUTREACH_HOLDOUT_SHARE's):"
            f" {', '.join(duplicated)}"
        )
    return tuple(found)


def _entry(entry: str) -> Experiment:
    parts = entry.split()
    if len(parts) != 3:
        raise ValueError(f"experiment {entry!r}: want '<name> <subject> <control share>'")
    name, subject, share_text = parts
    if not _NAME.match(name):
        raise ValueError(f"experiment {entry!r}: a name is lower-case letters, digits, - and _")
    kind, _, value = subject.partition(":")
    if kind not in SUBJECT_KINDS or (kind == "all") != (value == ""):
        raise ValueError(
            f"experiment {entry!r}: the subject is all, rule:<kind>, intent:<intent>, "
            "template:<kind>.<channel>.<locale>@<version> or remedy:<kind>|*"
        )
    if kind == "remedy" and value not in (*REMEDY_KINDS, "*"):
        raise ValueError(f"experiment {entry!r}: a remedy is * or one of {', '.join(REMEDY_KINDS)}")
    if kind == "template" and not _TEMPLATE.match(value):
        raise ValueError(
            f"experiment {entry!r}: a template version is <kind>.<channel>.<locale>@<version>,"
            " e.g. delivery_late.email.en@3"
        )
    return Experiment(name, kind, value, _share(entry, share_text))


def _share(entry: str, text: str) -> float:
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"experiment {entry!r}: the control share is 10% or 0.1") from None
    if not 0 < share < 1:
        raise ValueError(f"experiment {entry!r}: the control share is above 0 and below 1")
    return share
