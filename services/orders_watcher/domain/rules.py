"""Incident rules (SPEC §6), as a pure function of an order's facts and the time.

`evaluate(state, now)` recomputes every incident the facts imply — open or already
resolved — from the history sorted by event time. `conclude` compares that with
what was already emitted and yields only the changes (opened, updated on a material
change, resolved), and the order's next deadline. Because incidents are derived from
sorted facts, any arrival order of the same events ends in the same incidents, and a
duplicate changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from common.schemas import IncidentKind
from services.orders_watcher.domain.model import (
    Checkpoint,
    EmittedIncident,
    OrderState,
    ShipmentState,
)

# Every kind but the refund's is about getting the parcel to the customer.
DELIVERY_KINDS = frozenset(IncidentKind) - {IncidentKind.REFUND_LATE}
RETRACTABLE = frozenset(IncidentKind)
# Kinds judged on settled facts: told (opened, updated) once the allowed lateness has
# passed after their moment, since a late event within it may still show otherwise.
SETTLED_KINDS = frozenset(
    {
        IncidentKind.DISPATCH_LATE,
        IncidentKind.DELIVERY_AT_RISK,
        IncidentKind.DELIVERY_LATE,
        IncidentKind.SHIPMENT_STALLED,
        IncidentKind.REFUND_LATE,
    }
)
CRITICAL_SUBSTATUSES = frozenset({"lost", "damaged"})
# Tracking statuses that raise an incident at once: status -> (kind, severity).
STATUS_RULES: dict[str, tuple[str, Literal["info", "warning", "critical"]]] = {
    "attempt_failed": ("delivery_failed", "warning"),
    "available_for_pickup": ("awaiting_pickup", "info"),
    "returned_to_sender": ("returned_to_sender", "warning"),
}
# Tracking statuses that raise or update an incident at their moment.
RAISING_STATUSES = frozenset(STATUS_RULES) | {"exception"}
KNOWN_SUBSTATUSES = frozenset(
    {
        "lost",
        "damaged",
        "address_issue",
        "customs_hold",
        "weather_delay",
        "carrier_delay",
        "refused",
        "other",
    }
)


@dataclass(frozen=True)
class DetectionConfig:
    """Every threshold of the watcher; defaults are SPEC §6's."""

    at_risk_margin: timedelta = timedelta(hours=12)
    stall_after: timedelta = timedelta(hours=72)
    stall_after_fast: timedelta = timedelta(hours=48)
    fast_methods: frozenset[str] = frozenset({"express", "next_day"})
    refund_within: timedelta = timedelta(days=5)
    checkin_after: timedelta = timedelta(hours=24)
    orphan_hold: timedelta = timedelta(hours=1)
    # How late an event may arrive and still count as on time: absence rules (nothing
    # happened by a deadline) wait this long past the deadline before they fire, so a
    # scan that was merely delayed in transit does not raise a false alarm.
    allowed_lateness: timedelta = timedelta(minutes=5)
    retention: timedelta = timedelta(days=90)


@dataclass(frozen=True)
class IncidentView:
    """An incident as the facts imply it at `now`."""

    incident_id: str
    kind: str
    severity: Literal["info", "warning", "critical"]
    open: bool
    explanation: str
    evidence: tuple[str, ...]
    material: tuple[Any, ...]
    since: datetime | None = None
    changed_at: datetime | None = None
    shipment_id: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    resolution: str | None = None
    resolved_at: datetime | None = None

    def moment(self, change: str) -> datetime:
        """When the facts say the change happened: the event time of an incident's
        transition, independent of when the watcher noticed (replays are identical)."""
        assert self.since is not None
        if change == "resolved" and self.resolved_at is not None:
            return self.resolved_at
        if change == "updated" and self.changed_at is not None:
            return self.changed_at
        return self.since

    @property
    def fingerprint(self) -> str:
        """What the incident says that matters, hashed: times by their ISO text, so that
        the same fact read from an event or from a stored state (another tzinfo class for
        the same offset) hashes the same."""
        return hashlib.sha256(repr(_canonical(self.material)).encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return tuple(_canonical(v) for v in value)
    return value


@dataclass(frozen=True)
class Transition:
    """One change to announce: opened, updated, resolved, or checkin_due."""

    change: Literal["opened", "updated", "resolved", "checkin_due"]
    incident: IncidentView
    revision: int


def incident_id(order_id: str, kind: str, scope: str = "") -> str:
    raw = f"{order_id}\x1f{kind}\x1f{scope}"
    return "inc_" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _stall_threshold(state: OrderState, config: DetectionConfig) -> timedelta:
    method = state.order.shipping_method if state.order else "standard"
    return config.stall_after_fast if method in config.fast_methods else config.stall_after


def evaluate(state: OrderState, now: datetime, config: DetectionConfig) -> list[IncidentView]:
    return _evaluate(state, now, config, _known(state.delivered_at(), now))


def _known(moment: datetime | None, now: datetime) -> datetime | None:
    """A fact's moment if it has happened by `now`. Facts dated later (read while an
    event clock waits for a lagging partition) take effect when time reaches them: an
    order delivered tomorrow is not delivered yet, late or not."""
    return moment if moment is not None and moment <= now else None


def _evaluate(
    state: OrderState, now: datetime, config: DetectionConfig, delivered_at: datetime | None
) -> list[IncidentView]:
    order = state.order
    if order is None:
        return []
    views: list[IncidentView] = []
    cancelled_at = state.cancelled_at
    # Delay rules stop at cancellation: nothing after it is a delay, and open ones close.
    horizon = now if cancelled_at is None or now <= cancelled_at else cancelled_at
    # Absence is only certain once late events have had their chance to arrive.
    settled = now - config.allowed_lateness
    if cancelled_at is not None and cancelled_at < settled:
        settled = cancelled_at

    def closing() -> tuple[bool, str | None, datetime | None]:
        """Whether a delivery incident is still open; if not, why and since when."""
        if cancelled_at is not None and cancelled_at <= now:
            return False, "cancelled", cancelled_at
        if delivered_at is not None and delivered_at <= now:
            return False, "delivered", delivered_at
        return True, None, None

    # dispatch_late: no shipment.created by promised_ship_by.
    dispatched = _known(state.dispatched_at(), now)
    late_dispatch = (dispatched is None and settled >= order.promised_ship_by) or (
        dispatched is not None
        and dispatched > order.promised_ship_by
        and (cancelled_at is None or cancelled_at > order.promised_ship_by)
    )
    if late_dispatch:
        is_open, resolution, resolved_at = closing()
        views.append(
            IncidentView(
                incident_id=incident_id(state.order_id, "dispatch_late"),
                kind="dispatch_late",
                severity="warning",
                open=is_open,
                resolution=resolution,
                resolved_at=resolved_at,
                since=order.promised_ship_by,
                explanation=(
                    f"Order {state.order_id} was not dispatched by the promised "
                    f"{order.promised_ship_by:%Y-%m-%d %H:%M} UTC."
                ),
                evidence=(order.placed_event_id,),
                material=(order.promised_ship_by,),
                facts={
                    "promised_ship_by": _iso(order.promised_ship_by),
                    "dispatched_at": _iso(dispatched),
                },
            )
        )

    # delivery_at_risk: the carrier's estimate is > margin past the promise, before it breaks.
    # Whether it exists is judged on the estimates that have settled only: a scan dated
    # before now may still arrive within the allowed lateness and replace one, and
    # arrival order must not decide the incident (a newer estimate read already does not
    # count before it settles either). What it (and delivery_late) says is the newest
    # estimate known, while that one still lies past the promise.
    (settled_estimate, settled_event), (estimate, estimate_event) = _latest_estimates(
        state, settled, horizon
    )
    promise = order.promised_delivery_by
    if settled_estimate is not None and settled_estimate > promise + config.at_risk_margin:
        told, told_event = estimate, estimate_event
        if told is None or told <= promise + config.at_risk_margin:
            told, told_event = settled_estimate, settled_event
        if settled_event[1] < promise:  # the slip was known while the promise still stood
            is_open, resolution, resolved_at = closing()
            views.append(
                IncidentView(
                    incident_id=incident_id(state.order_id, "delivery_at_risk"),
                    kind="delivery_at_risk",
                    severity="warning",
                    open=is_open,
                    resolution=resolution,
                    resolved_at=resolved_at,
                    since=max(told_event[1], order.placed_at),
                    changed_at=max(told_event[1], order.placed_at),
                    explanation=(
                        f"The carrier now expects order {state.order_id} on "
                        f"{told:%Y-%m-%d}, after the promised {promise:%Y-%m-%d}."
                    ),
                    evidence=(told_event[0],),
                    material=(told,),
                    facts={
                        "promised_delivery_by": _iso(promise),
                        "estimated_delivery_at": _iso(told),
                        "delay_days": _days(told - promise),
                    },
                )
            )

    # delivery_late: not delivered at promised_delivery_by.
    was_late = (delivered_at is None and settled >= promise) or (
        delivered_at is not None and delivered_at > promise
    )
    if was_late and not (cancelled_at is not None and cancelled_at <= promise):
        is_open, resolution, resolved_at = closing()
        views.append(
            IncidentView(
                incident_id=incident_id(state.order_id, "delivery_late"),
                kind="delivery_late",
                severity="warning",
                open=is_open,
                resolution=resolution,
                resolved_at=resolved_at,
                since=promise,
                changed_at=max(promise, estimate_event[1]) if estimate else promise,
                explanation=(
                    f"Order {state.order_id} was not delivered by the promised "
                    f"{promise:%Y-%m-%d %H:%M} UTC."
                ),
                evidence=(order.placed_event_id,) + ((estimate_event[0],) if estimate else ()),
                material=(estimate,),
                facts={
                    "promised_delivery_by": _iso(promise),
                    "estimated_delivery_at": _iso(estimate),
                    "delay_days": _days(estimate - promise) if estimate else None,
                },
            )
        )

    for shipment in sorted(state.shipments.values(), key=lambda s: s.shipment_id):
        views.extend(_shipment_incidents(state, shipment, settled, now, config))

    for ret in sorted(state.returns.values(), key=lambda r: r.return_id):
        if _known(ret.received_at, now) is None:
            continue
        assert ret.received_at is not None
        due = ret.received_at + config.refund_within
        refunded = _known(ret.refunded_at, now)
        settled_refund = now - config.allowed_lateness
        late = refunded > due if refunded is not None else settled_refund >= due
        if late:
            views.append(
                IncidentView(
                    incident_id=incident_id(state.order_id, "refund_late", ret.return_id),
                    kind="refund_late",
                    severity="warning",
                    open=refunded is None or refunded > now,
                    resolution=None if refunded is None or refunded > now else "refunded",
                    resolved_at=refunded if refunded is not None and refunded <= now else None,
                    since=due,
                    explanation=(
                        f"Return {ret.return_id} was received on {ret.received_at:%Y-%m-%d} "
                        f"and not refunded within {config.refund_within.days} days."
                    ),
                    evidence=tuple(e for e in (ret.received_event_id,) if e),
                    material=(ret.received_at,),
                    facts={"return_id": ret.return_id, "received_at": _iso(ret.received_at)},
                )
            )
    return views


def _shipment_incidents(
    state: OrderState,
    shipment: ShipmentState,
    horizon: datetime,
    now: datetime,
    config: DetectionConfig,
) -> list[IncidentView]:
    views: list[IncidentView] = []
    checkpoints: Sequence[Checkpoint] = shipment.checkpoints  # in event order
    if checkpoints and checkpoints[-1].at > now:
        checkpoints = [cp for cp in checkpoints if cp.at <= now]
    delivered = _known(shipment.delivered_at(), now)
    cancelled = state.cancelled_at is not None and state.cancelled_at <= now
    open_unless = "cancelled" if cancelled else ("delivered" if delivered else None)
    closed_at = state.cancelled_at if cancelled else delivered
    sid = shipment.shipment_id
    base_facts = {
        "shipment_id": sid,
        "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,
    }

    by_status: dict[str, list[Checkpoint]] = {}
    for cp in checkpoints:
        hits = by_status.get(cp.status)
        if hits is None:
            by_status[cp.status] = [cp]
        else:
            hits.append(cp)

    # Status incidents raised "at once": the latest checkpoint of each kind decides.
    for status, (kind, severity) in STATUS_RULES.items():
        hits = by_status.get(status)
        if not hits:
            continue
        last = hits[-1]
        views.append(
            IncidentView(
                incident_id=incident_id(state.order_id, kind, sid),
                kind=kind,
                severity=severity,
                open=open_unless is None,
                resolution=open_unless,
                resolved_at=closed_at,
                since=hits[0].at,
                changed_at=last.at,
                shipment_id=sid,
                explanation=_status_explanation(kind, shipment, last.location),
                evidence=tuple(cp.event_id for cp in hits),
                material=tuple(cp.at for cp in hits),
                facts={
                    **base_facts,
                    "status": status,
                    "location": last.location,
                    "checkpoint_at": _iso(last.at),
                    "attempts": len(hits),
                },
            )
        )

    exceptions = by_status.get("exception")
    if exceptions:
        last = exceptions[-1]
        substatus = last.substatus if last.substatus in KNOWN_SUBSTATUSES else "other"
        critical = any(cp.substatus in CRITICAL_SUBSTATUSES for cp in exceptions)
        views.append(
            IncidentView(
                incident_id=incident_id(state.order_id, "carrier_exception", sid),
                kind="carrier_exception",
                severity="critical" if critical else "warning",
                open=open_unless is None,
                resolution=open_unless,
                resolved_at=closed_at,
                since=exceptions[0].at,
                changed_at=last.at,
                shipment_id=sid,
                explanation=(
                    f"{shipment.carrier or 'The carrier'} reported a problem with parcel "
                    f"{shipment.tracking_number or sid}: {substatus.replace('_', ' ')}."
                ),
                evidence=tuple(cp.event_id for cp in exceptions),
                material=tuple((cp.at, cp.substatus) for cp in exceptions),
                facts={
                    **base_facts,
                    "status": "exception",
                    "substatus": substatus,
                    "raw_substatus": last.substatus,
                    "checkpoint_at": _iso(last.at),
                },
            )
        )

    # shipment_stalled: no tracking update for the threshold while not delivered.
    if shipment.created_at is not None and not cancelled:
        threshold = _stall_threshold(state, config)
        scans = [shipment.created_at] + [cp.at for cp in checkpoints]
        scans.sort()
        end = delivered or horizon
        stalls: list[datetime] = []
        for before, after in zip(scans, [*scans[1:], end], strict=True):
            if after - before >= threshold and before < end:
                stalls.append(before)
        terminal = "returned_to_sender" in by_status
        if stalls and not terminal:
            last_scan = scans[-1]
            views.append(
                IncidentView(
                    incident_id=incident_id(state.order_id, "shipment_stalled", sid),
                    kind="shipment_stalled",
                    severity="warning",
                    open=open_unless is None,
                    resolution=open_unless,
                    resolved_at=closed_at,
                    since=stalls[0] + threshold,
                    changed_at=stalls[-1] + threshold,
                    shipment_id=sid,
                    explanation=(
                        f"Parcel {shipment.tracking_number or sid} has had no tracking update "
                        f"for {int(threshold.total_seconds() // 3600)} h "
                        f"(last at {stalls[-1]:%Y-%m-%d %H:%M} UTC)."
                    ),
                    evidence=tuple(cp.event_id for cp in checkpoints[-1:]),
                    material=tuple(stalls),
                    facts={
                        **base_facts,
                        "last_update_at": _iso(last_scan),
                        "stalled_since": _iso(stalls[-1]),
                    },
                )
            )
    return views


def _status_explanation(kind: str, shipment: ShipmentState, location: str | None) -> str:
    parcel = shipment.tracking_number or shipment.shipment_id
    where = f" ({location})" if location else ""
    if kind == "delivery_failed":
        return f"The carrier could not deliver parcel {parcel}{where}."
    if kind == "awaiting_pickup":
        return f"Parcel {parcel} is waiting at a pickup point{where}."
    return f"Parcel {parcel} is being returned to the sender{where}."


def _latest_estimates(
    state: OrderState, settled: datetime, horizon: datetime
) -> tuple[
    tuple[datetime | None, tuple[str, datetime]], tuple[datetime | None, tuple[str, datetime]]
]:
    """The latest carrier estimate known by `settled` and by `horizon` (settled <= horizon),
    each with (event id, when it was said): one pass for both."""
    early: tuple[datetime, datetime, str] | None = None  # (said_at, estimate, event id)
    best: tuple[datetime, datetime, str] | None = None
    for shipment in state.shipments.values():
        if shipment.initial_estimate is not None and shipment.created_at is not None:
            said = shipment.created_at
            if said <= horizon:
                candidate = (said, shipment.initial_estimate, shipment.created_event_id or "")
                if best is None or said >= best[0]:
                    best = candidate
                if said <= settled and (early is None or said >= early[0]):
                    early = candidate
        for cp in shipment.checkpoints:
            if cp.estimated_delivery_at is None or cp.at > horizon:
                continue
            if best is None or (cp.at, cp.event_id) >= (best[0], best[2]):
                best = (cp.at, cp.estimated_delivery_at, cp.event_id)
            if cp.at <= settled and (early is None or (cp.at, cp.event_id) >= (early[0], early[2])):
                early = (cp.at, cp.estimated_delivery_at, cp.event_id)
    return (
        (None, ("", settled)) if early is None else (early[1], (early[2], early[0])),
        (None, ("", horizon)) if best is None else (best[1], (best[2], best[0])),
    )


def _days(delta: timedelta) -> int:
    return max(0, -(-int(delta.total_seconds()) // 86400))


DERIVE: Any = object()  # "derive it from the state" (None is a value: not delivered)


def conclude(
    state: OrderState, now: datetime, config: DetectionConfig, delivered_any: Any = DERIVE
) -> tuple[list[Transition], datetime | None]:
    """The changes since what was last emitted (updating `state.emitted` accordingly),
    and then `next_deadline`, with when the order was delivered derived once for both
    (`delivered_any`: `state.delivered_at()`, if the caller has it)."""
    if delivered_any is DERIVE:
        delivered_any = state.delivered_at()
    delivered = _known(delivered_any, now)
    changes = _transitions(state, now, config, delivered)
    return changes, _next_deadline(state, now, config, delivered, delivered_any)


def _transitions(
    state: OrderState, now: datetime, config: DetectionConfig, delivered: datetime | None
) -> list[Transition]:
    out: list[Transition] = []
    views = _evaluate(state, now, config, delivered)
    for view in views:
        prior = state.emitted.get(view.incident_id)
        if prior is None:
            out.append(Transition("opened", view, 1))
            state.emitted[view.incident_id] = _record(view, 1, "open")
            if not view.open:
                out.append(Transition("resolved", view, 2))
                state.emitted[view.incident_id] = _record(view, 2, "resolved")
            continue
        if prior.status == "open" and not view.open:
            out.append(Transition("resolved", view, prior.revision + 1))
            state.emitted[view.incident_id] = _record(view, prior.revision + 1, "resolved")
        elif prior.status == "open" and view.fingerprint != prior.fingerprint:
            out.append(Transition("updated", view, prior.revision + 1))
            state.emitted[view.incident_id] = _record(view, prior.revision + 1, "open")
    implied = {v.incident_id for v in views}
    retracted = [
        iid
        for iid, prior in state.emitted.items()
        if prior.status == "open" and iid not in implied and prior.kind in RETRACTABLE
    ]
    for iid in sorted(retracted):
        prior = state.emitted[iid]
        # A late fact (e.g. a shipment dated before the promise) shows the incident
        # never happened: close it rather than leave it open forever.
        view = IncidentView(
            incident_id=iid,
            kind=prior.kind,
            severity="info",
            open=False,
            explanation="Later information shows this did not happen after all.",
            evidence=(),
            material=(),
            since=now,
            resolution="retracted",
            resolved_at=now,
        )
        out.append(Transition("resolved", view, prior.revision + 1))
        state.emitted[iid] = _record(view, prior.revision + 1, "resolved")
    checkin = _checkin(state, now, config, delivered)
    if checkin is not None:
        out.append(checkin)
        state.checkin_emitted = True
    return out


def _record(view: IncidentView, revision: int, status: str) -> EmittedIncident:
    return EmittedIncident(
        kind=view.kind, revision=revision, status=status, fingerprint=view.fingerprint
    )


def _checkin(
    state: OrderState, now: datetime, config: DetectionConfig, delivered: datetime | None
) -> Transition | None:
    if state.checkin_emitted or state.cancelled_at is not None or state.order is None:
        return None
    due = delivered + config.checkin_after if delivered else None
    if delivered is None or due is None or now < due or not _had_delivery_incident(state):
        return None
    view = IncidentView(
        incident_id=incident_id(state.order_id, "post_incident_checkin"),
        kind="post_incident_checkin",
        severity="info",
        open=True,
        since=delivered + config.checkin_after,
        explanation=(
            f"Order {state.order_id} arrived on {delivered:%Y-%m-%d} after an incident; "
            "time to ask whether everything arrived well."
        ),
        evidence=(),
        material=(delivered,),
        facts={
            "delivered_at": _iso(delivered),
            "incidents": sorted({e.kind for e in state.emitted.values()}),
            # Whether the customer experienced the incident (outreach asks): a promise
            # broken, or a message about one of these incidents that was sent.
            "promise_broken": _promise_broken(state, delivered),
            "incident_ids": sorted(
                iid for iid, e in state.emitted.items() if e.kind in DELIVERY_KINDS
            ),
        },
    )
    return Transition("checkin_due", view, 1)


def _promise_broken(state: OrderState, delivered: datetime) -> bool:
    """Whether the order came after its promised delivery, or left after its promised
    dispatch (the first shipment created after it)."""
    assert state.order is not None
    if delivered > state.order.promised_delivery_by:
        return True
    created = [s.created_at for s in state.shipments.values() if s.created_at is not None]
    return bool(created) and min(created) > state.order.promised_ship_by


def _had_delivery_incident(state: OrderState) -> bool:
    return any(e.kind in DELIVERY_KINDS for e in state.emitted.values())


def next_deadline(state: OrderState, now: datetime, config: DetectionConfig) -> datetime | None:
    """The next moment at which time alone (no event) could change this order's incidents.

    The watcher keeps these in an index ordered by time, so a tick touches only orders
    whose moment has come, never all open orders.
    """
    delivered_any = state.delivered_at()
    return _next_deadline(state, now, config, _known(delivered_any, now), delivered_any)


def _next_deadline(
    state: OrderState,
    now: datetime,
    config: DetectionConfig,
    delivered: datetime | None,
    delivered_any: datetime | None,
) -> datetime | None:
    """`delivered`: when the order was delivered, if by `now`; `delivered_any`: also if
    a delivery scan dated later was read already.

    Facts dated after `now` (read while the watermark lags behind another partition)
    take effect when time reaches them: each that can change an incident by itself gets
    a look at its moment; the rest are seen by the next look anyway. Checkpoints are in
    event order, so of a shipment's later ones only the first that needs a look can come
    first. What needs one: a status that raises or updates an incident at once, a
    delivery while an incident is open (it closes it), a new carrier estimate while
    delivery_at_risk is possible (an estimate past the promise and its margin) or the
    promise has passed (delivery_late reports it), a cancellation, a refund after its
    due date. A scan that only says the parcel moves needs none: the stall deadline is
    reckoned along the scans read already, to the first gap of the threshold. A settling
    estimate matters only to delivery_at_risk: looked at only while a known estimate lies
    past the promise and its margin."""
    late = config.allowed_lateness
    candidates: list[datetime] = [h.release_at for h in state.held]
    order = state.order
    if order is None:
        return min((c for c in candidates if c > now), default=None)
    promise = order.promised_delivery_by
    at_risk_after = promise + config.at_risk_margin
    any_open = any(e.status == "open" for e in state.emitted.values())
    slipped_ever = any(  # an estimate said (by now or later) past the promise and margin
        (sh.initial_estimate is not None and sh.initial_estimate > at_risk_after)
        or any(
            cp.estimated_delivery_at is not None and cp.estimated_delivery_at > at_risk_after
            for cp in sh.checkpoints
        )
        for sh in state.shipments.values()
    )
    waiting = order if state.cancelled_at is None else None  # an order still under way
    if waiting is not None:
        if delivered is None and (delivered_any is None or delivered_any > promise):
            candidates.append(promise + late)
        if delivered_any is not None and not state.checkin_emitted:
            if _had_delivery_incident(state):
                candidates.append(delivered_any + config.checkin_after)
    if state.cancelled_at is not None:
        candidates.append(state.cancelled_at)
    dispatched = False
    threshold = _stall_threshold(state, config)
    stall_watch = waiting is not None and delivered is None
    settling: list[datetime] = []
    slipped = False  # an estimate known by now lies past the promise and its margin
    for shipment in state.shipments.values():
        checkpoints = shipment.checkpoints  # in event order: those after now at the end
        split = len(checkpoints)
        while split and checkpoints[split - 1].at > now:
            split -= 1
        last_scan: datetime | None = None
        for cp in checkpoints[:split]:
            estimate = cp.estimated_delivery_at
            if estimate is not None:
                settling.append(cp.at + late)
                slipped = slipped or estimate > at_risk_after
            last_scan = cp.at
        later = checkpoints[split:]
        for cp in later:
            at, estimate, status = cp.at, cp.estimated_delivery_at, cp.status
            if (
                status in RAISING_STATUSES
                or (status == "delivered" and any_open)
                or (estimate is not None and (slipped_ever or at > promise))
            ):
                candidates.append(at)
                break
        created = shipment.created_at
        if created is None:
            continue
        dispatched = dispatched or created <= now
        estimate = shipment.initial_estimate
        if estimate is not None:
            if created > now:
                if slipped_ever or created > promise:
                    candidates.append(created)
            else:
                settling.append(created + late)
                slipped = slipped or estimate > at_risk_after
        if stall_watch and _known(shipment.delivered_at(), now) is None:
            # shipment_stalled: absence of a scan for the threshold. From the last scan
            # that has happened, along the scans dated later (read already): the first
            # gap of the threshold that has not passed yet is the next look.
            point: datetime | None = (
                created if last_scan is None or created > last_scan else last_scan
            )
            for cp in later:
                assert point is not None
                if point + threshold + late > now and cp.at - point >= threshold:
                    break
                point = None if cp.status == "delivered" else cp.at
                if point is None:
                    break
            if point is not None:
                candidates.append(point + threshold + late)
    if waiting is not None and not dispatched:
        first = state.dispatched_at()  # a dispatch dated later, read already
        if first is None or first > order.promised_ship_by:
            candidates.append(order.promised_ship_by + late)
    for ret in state.returns.values():
        if ret.received_at is None:
            continue
        due = ret.received_at + config.refund_within
        refunded = ret.refunded_at
        if refunded is None or refunded > due:
            if _known(refunded, now) is None:
                candidates.append(due + late)
            if refunded is not None:
                candidates.append(refunded)
    if slipped:
        candidates += settling
    expiry = _expires_at(state, config, delivered_any)
    if expiry is not None:
        candidates.append(expiry)
    return min((c for c in candidates if c > now), default=None)


def _finished_at(state: OrderState, delivered: datetime | None) -> datetime | None:
    """When nothing more is expected for this order (delivered/cancelled, returns settled)."""
    if state.order is None:
        return None
    end = state.cancelled_at or delivered
    if end is None:
        return None
    if any(r.refunded_at is None for r in state.returns.values()):
        return None
    if any(e.status == "open" for e in state.emitted.values()):
        return None
    return max([end] + [r.refunded_at for r in state.returns.values() if r.refunded_at])


def expires_at(
    state: OrderState, config: DetectionConfig, delivered_any: Any = DERIVE
) -> datetime | None:
    """When the order's state may be dropped (`delivered_any` as for `conclude`)."""
    if delivered_any is DERIVE:
        delivered_any = state.delivered_at()
    return _expires_at(state, config, delivered_any)


def _expires_at(
    state: OrderState, config: DetectionConfig, delivered: datetime | None
) -> datetime | None:
    done = _finished_at(state, delivered)
    return done + config.retention if done is not None else None
