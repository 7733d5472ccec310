"""The decision pipeline for one outreach request (SPEC §6 "Delivery").

dedupe → already resolved → superseded → paused → contact plan → consent and opt-outs
→ frequency cap → holdout → channel → quiet hours. Every step is a pure function with a
named outcome; the first step that says no ends the pipeline with a suppression reason.
`recheck` is the last look at the moment of sending (for held and retried messages too).
Rendering and sending follow in the handler, and their failures are recorded there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.outreach.domain import experiments as trials


class Suppression(StrEnum):
    OPTED_OUT = "opted_out"
    NO_CONTACT = "no_contact"
    NO_CONSENT = "no_consent"
    FREQUENCY_CAP = "frequency_cap"
    ALREADY_RESOLVED = "already_resolved"
    DUPLICATE = "duplicate"
    QUIET_HOURS_EXPIRED = "quiet_hours_expired"
    HOLDOUT = "holdout"
    PAUSED = "paused"
    SUPERSEDED = "superseded"
    UNKNOWN_CUSTOMER = "unknown_customer"
    NOT_EXPERIENCED = "not_experienced"
    RESOLVED_BY_AGENT = "resolved_by_agent"
    CONSOLIDATED = "consolidated"  # named in another message (domain/consolidation.py)
    STORM_CANCELLED = "storm_cancelled"  # an operator cancelled its storm (domain/storms.py)


class Category(StrEnum):
    SERVICE = "service"
    MARKETING = "marketing"


@dataclass(frozen=True)
class ChannelOption:
    channel: str  # email | sms | whatsapp
    address: str
    usable: bool
    reason: str  # ok | no_contact | opted_out | no_consent | ...


@dataclass(frozen=True)
class ContactPlan:
    customer_id: str
    known: bool
    first_name: str
    locale: str
    time_zone: str
    quiet_start: time
    quiet_end: time
    marketing_opt_in: bool
    channels: tuple[ChannelOption, ...]


@dataclass(frozen=True)
class DeliveryPolicy:
    cap_messages: int = 3
    cap_window: timedelta = timedelta(days=7)
    holdout_share: float = 0.0  # the experiment `holdout`, covering every message
    experiments: tuple[trials.Experiment, ...] = ()  # domain/experiments.py
    quiet_applies_to: frozenset[str] = frozenset({"sms", "whatsapp"})
    scheduled_expiry: timedelta = timedelta(days=2)
    # How long a message about an incident waits for the customer's other incidents, so
    # that one message names each (domain/consolidation.py); 0: it goes at once.
    gather: timedelta = timedelta(0)


@dataclass(frozen=True)
class RequestFacts:
    """What the pipeline needs to know about a request (a view of OutreachRequest)."""

    request_id: str
    customer_id: str
    intent: str
    message_kind: str
    severity: str
    cause_id: str
    offer_tier: str | None
    # A correction (domain/corrections.py): the channel of the message it corrects, the
    # only one it may go by; not held by the frequency cap or the holdout.
    corrects_on: str | None = None
    cause_type: str = "incident"
    # The kind of remedy the remedy policy would offer it first (docs/remedies.md).
    remedy: str | None = None


@dataclass(frozen=True)
class Decision:
    decision_id: str
    outcome: str  # "send" | "schedule" | "suppress"
    category: Category
    reason: Suppression | None = None
    channel: str | None = None
    address: str | None = None
    send_at: datetime | None = None
    fallbacks: tuple[ChannelOption, ...] = field(default_factory=tuple)
    rule: str = ""
    # The arm of each experiment covering it (domain/experiments.py).
    arms: tuple[trials.Arm, ...] = ()

    def for_decision(self, decision_id: str) -> Decision:
        return replace(self, decision_id=decision_id)


def decision_id_for(request_id: str) -> str:
    return "dec_" + hashlib.sha256(request_id.encode()).hexdigest()[:24]


def category_of(request: RequestFacts) -> Category:
    """Apologies and status updates are service messages; a check-in with an offer is
    marketing (it needs marketing consent)."""
    if request.intent == "check_in" and request.offer_tier:
        return Category.MARKETING
    return Category.SERVICE


def experiment_arms(
    request: RequestFacts, channel: str, templates: Mapping[str, str], policy: DeliveryPolicy
) -> tuple[trials.Arm, ...]:
    """The customer's arms of the experiments covering the request, sent by `channel`
    (`templates`: channel → the template version that would serve it)."""
    facts = trials.Facts(
        message_kind=request.message_kind,
        intent=request.intent,
        severity=request.severity,
        remedy=request.remedy,
        template=templates.get(channel),
    )
    experiments = trials.with_holdout(policy.experiments, policy.holdout_share)
    return trials.assign(experiments, request.customer_id, facts)


def quiet_until(moment: datetime, tz_name: str, start: time, end: time) -> datetime | None:
    """If `moment` falls in the customer's quiet hours, the end of them (as aware UTC);
    else None. DST is zoneinfo's business, never ours."""
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local = moment.astimezone(tz)
    t = local.time()
    quiet = (t >= start or t < end) if start > end else (start <= t < end)
    if not quiet:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    wake = datetime.combine(day, end, tzinfo=tz)
    # A wall time skipped by a DST jump normalises forward through UTC.
    return wake.astimezone(ZoneInfo("UTC"))


PAUSED_RULE = "paused: sending is paused; held until resumed"


def decide(
    request: RequestFacts,
    *,
    plan: ContactPlan | None,
    already_decided: bool,
    resolved: bool,
    paused: bool,
    sent_in_window: int,
    now: datetime,
    policy: DeliveryPolicy,
    superseded: bool = False,
    experienced: bool = True,
    templates: Mapping[str, str] | None = None,
) -> Decision:
    """`experienced`: for a check-in after an incident, whether the customer lived through
    it (a message about it was sent, or its promise was broken). `templates`: for each
    channel, the template version that would serve the message (for experiments on one)."""
    did = decision_id_for(request.request_id)
    category = category_of(request)

    def suppress(reason: Suppression, rule: str) -> Decision:
        return Decision(did, "suppress", category, reason=reason, rule=rule)

    if already_decided:
        return suppress(Suppression.DUPLICATE, "dedupe: a decision exists for this request")
    if resolved:
        return suppress(
            Suppression.ALREADY_RESOLVED,
            "already resolved: the incident closed before we reached out",
        )
    if superseded:
        return suppress(
            Suppression.SUPERSEDED, "superseded: a newer revision of this message came first"
        )
    if not experienced:
        return suppress(
            Suppression.NOT_EXPERIENCED,
            "check-in: the incident passed unnoticed (no promise broken, no message sent"
            " about it): nothing to ask about",
        )
    if paused:
        return Decision(did, "schedule", category, rule=PAUSED_RULE)
    reach = reachable(category, plan)
    if isinstance(reach, Decision):
        return reach.for_decision(did)
    assert plan is not None
    if request.corrects_on is not None:
        return _correction(did, category, reach, request.corrects_on, plan, now, policy)
    if request.severity != "critical" and sent_in_window >= policy.cap_messages:
        return suppress(
            Suppression.FREQUENCY_CAP,
            f"frequency cap: {sent_in_window} messages in {policy.cap_window.days} days",
        )
    return _tried(did, category, request, reach, plan, now, policy, templates or {})


def _tried(
    did: str,
    category: Category,
    request: RequestFacts,
    reach: list[ChannelOption],
    plan: ContactPlan,
    now: datetime,
    policy: DeliveryPolicy,
    templates: Mapping[str, str],
) -> Decision:
    """The experiments' step (domain/experiments.py), then the route: withheld in the
    control arm of one, else sent by the first usable channel; the arms recorded."""
    held, arms = trials.withholding(experiment_arms(request, reach[0].channel, templates, policy))
    if held is not None:
        rule = f"holdout: control arm of experiment {held.experiment} ({held.subject}, "
        rule += f"{held.control_share:.0%} of customers)"
        return Decision(did, "suppress", category, Suppression.HOLDOUT, rule=rule, arms=arms)
    gather = policy.gather if request.cause_type == "incident" else timedelta(0)
    routed = _route(
        did, category, reach[0], tuple(reach[1:]), plan, now, policy, "first usable", gather
    )
    return replace(routed, arms=arms)


def _correction(
    did: str,
    category: Category,
    reach: list[ChannelOption],
    channel: str,
    plan: ContactPlan,
    now: datetime,
    policy: DeliveryPolicy,
) -> Decision:
    """A correction goes by the corrected message's channel or not at all (no fallback:
    it answers what the customer read there)."""
    kept = [c for c in reach if c.channel == channel]
    if not kept:
        return Decision(
            did,
            "suppress",
            category,
            reason=Suppression.NO_CONTACT,
            rule=f"correction: {channel}, which carried the corrected message, is not usable now",
        )
    return _route(did, category, kept[0], (), plan, now, policy, "channel of the corrected message")


def reachable(category: Category, plan: ContactPlan | None) -> list[ChannelOption] | Decision:
    """The channels this customer may be written to now, in their order; or, when there
    is none, the suppression that says why (its decision id is filled in by the caller)."""

    def suppress(reason: Suppression, rule: str) -> Decision:
        return Decision("", "suppress", category, reason=reason, rule=rule)

    if plan is None or not plan.known:
        return suppress(Suppression.NO_CONTACT, "contact plan: customer unknown to preferences")
    if category is Category.MARKETING and not plan.marketing_opt_in:
        return suppress(Suppression.NO_CONSENT, "consent: marketing needs marketing_opt_in")
    usable = [c for c in plan.channels if c.usable]
    if usable:
        return usable
    reasons = {c.reason for c in plan.channels}
    if "opted_out" in reasons:
        return suppress(Suppression.OPTED_OUT, "consent: every reachable channel opted out")
    if "no_consent" in reasons:
        return suppress(Suppression.NO_CONSENT, "consent: no channel with consent")
    return suppress(Suppression.NO_CONTACT, "contact plan: no usable contact point")


def _route(
    did: str,
    category: Category,
    first: ChannelOption,
    rest: tuple[ChannelOption, ...],
    plan: ContactPlan,
    now: datetime,
    policy: DeliveryPolicy,
    why: str,
    gather: timedelta = timedelta(0),
) -> Decision:
    """Send by `first` now, or, in the customer's quiet hours for that channel, at their
    end (SMS and WhatsApp; email is not held); with `gather`, after waiting that long for
    the customer's other messages (the last look does not gather again)."""
    if first.channel in policy.quiet_applies_to:
        wake = quiet_until(now, plan.time_zone, plan.quiet_start, plan.quiet_end)
        if wake is not None:
            return Decision(
                did,
                "schedule",
                category,
                channel=first.channel,
                address=first.address,
                send_at=wake,
                fallbacks=rest,
                rule=f"quiet hours: {first.channel} held until "
                f"{plan.quiet_end:%H:%M} {plan.time_zone}",
            )
    if gather > timedelta(0):
        return Decision(
            did,
            "schedule",
            category,
            channel=first.channel,
            address=first.address,
            send_at=now + gather,
            fallbacks=rest,
            rule=f"gathering: {first.channel} waits {gather.total_seconds():g} s for the "
            "customer's other messages (one message names each)",
        )
    return Decision(
        did,
        "send",
        category,
        channel=first.channel,
        address=first.address,
        fallbacks=rest,
        rule=f"channel: {first.channel} is the {why}",
    )


def recheck(
    request: RequestFacts,
    *,
    channel: str | None,
    plan: ContactPlan | None,
    resolved: bool,
    superseded: bool,
    paused: bool,
    now: datetime,
    policy: DeliveryPolicy,
) -> Decision:
    """The last look before a decided message leaves (SPEC §6: at sending time everything
    is checked again), for a message sent at once as for one held by quiet hours, a pause
    or a retry: the incident may be resolved, a newer revision may supersede it, sending
    may be paused, and the customer's plan as of `now` may have lost the channel (an
    opt-out, withdrawn consent, an erased contact point). It stays on `channel` while that
    is usable, else takes the first usable one; quiet hours are judged for the channel it
    would go by, now. The frequency cap and the holdout were settled when it was decided
    and are not asked again."""
    did = decision_id_for(request.request_id)
    category = category_of(request)
    if resolved:
        return Decision(
            did,
            "suppress",
            category,
            reason=Suppression.ALREADY_RESOLVED,
            rule="already resolved: the incident closed before the message left",
        )
    if superseded:
        return Decision(
            did,
            "suppress",
            category,
            reason=Suppression.SUPERSEDED,
            rule="superseded: a newer revision of this message replaces it",
        )
    if paused:
        return Decision(did, "schedule", category, rule=PAUSED_RULE)
    reach = reachable(category, plan)
    if isinstance(reach, Decision):
        return reach.for_decision(did)
    assert plan is not None
    if request.corrects_on is not None:
        return _correction(did, category, reach, request.corrects_on, plan, now, policy)
    kept = [c for c in reach if c.channel == channel]
    if kept:
        rest = tuple(c for c in reach if c.channel != channel)
        return _route(did, category, kept[0], rest, plan, now, policy, "one decided, still usable")
    return _route(did, category, reach[0], tuple(reach[1:]), plan, now, policy, "first usable now")


def revision_of(context: dict[str, object]) -> int:
    """Which revision of its cause a request speaks of: an incident's revision grows with
    every material change (a new estimate, a new status); other causes have one."""
    incident = context.get("incident")
    revision = incident.get("revision") if isinstance(incident, dict) else None
    return revision if isinstance(revision, int) and revision > 0 else 1
