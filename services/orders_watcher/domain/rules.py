"""Incident rules (SPEC §6), as a pure function of an order's facts and the time.

`evaluate(state, now)` recomputes every incident the facts imply — open or already
resolved — from the history sorted by event time, asking each kind's rule
(`domain/kinds.py`). `conclude` compares that with what was already emitted and yields
only the changes (opened, updated on a material change, resolved), and the order's next
deadline. Because incidents are derived from sorted facts, any arrival order of the same
events ends in the same incidents, and a duplicate changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from common.schemas import IncidentKind
from services.orders_watcher.domain.kinds import (
    ORDER_RULES,
    REFUND_LATE,
    SHIPMENT_RULES,
    TIMED_SHIPMENT_RULES,
    looks_at,
)
from services.orders_watcher.domain.model import EmittedIncident, OrderState
from services.orders_watcher.domain.situation import (
    DetectionConfig,
    IncidentView,
    Situation,
    incident_id,
    iso,
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


@dataclass(frozen=True)
class Transition:
    """One change to announce: opened, updated, resolved, or checkin_due."""

    change: Literal["opened", "updated", "resolved", "checkin_due"]
    incident: IncidentView
    revision: int


def evaluate(state: OrderState, now: datetime, config: DetectionConfig) -> list[IncidentView]:
    situation = Situation.of(state, now, config, state.delivered_at())
    return [] if situation is None else _evaluate(situation)


def _evaluate(s: Situation) -> list[IncidentView]:
    """Every incident the facts imply, in a fixed order: the order's, then each
    shipment's and each return's (by id)."""
    found = [rule.incident(s) for rule in ORDER_RULES]
    shipments = s.state.shipments
    for sid in sorted(shipments) if len(shipments) > 1 else shipments:
        parcel = s.parcel(shipments[sid])
        found += [rule.incident(s, parcel) for rule in SHIPMENT_RULES]
    returns = s.state.returns
    for rid in sorted(returns) if len(returns) > 1 else returns:
        found.append(REFUND_LATE.incident(s, returns[rid]))
    return [view for view in found if view is not None]


DERIVE: Any = object()  # "derive it from the state" (None is a value: not delivered)


def conclude(
    state: OrderState, now: datetime, config: DetectionConfig, delivered_any: Any = DERIVE
) -> tuple[list[Transition], datetime | None]:
    """The changes since what was last emitted (updating `state.emitted` accordingly),
    and then `next_deadline`, with when the order was delivered derived once for both
    (`delivered_any`: `state.delivered_at()`, if the caller has it)."""
    if delivered_any is DERIVE:
        delivered_any = state.delivered_at()
    situation = Situation.of(state, now, config, delivered_any)
    if situation is None:
        return [], _next_deadline(state, now, config, None)
    changes = _transitions(situation)
    return changes, _next_deadline(state, now, config, situation)


def _transitions(s: Situation) -> list[Transition]:
    state, now = s.state, s.now
    out: list[Transition] = []
    views = _evaluate(s)
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
    checkin = _checkin(s)
    if checkin is not None:
        out.append(checkin)
        state.checkin_emitted = True
    return out


def _record(view: IncidentView, revision: int, status: str) -> EmittedIncident:
    return EmittedIncident(
        kind=view.kind, revision=revision, status=status, fingerprint=view.fingerprint
    )


def _checkin(s: Situation) -> Transition | None:
    state, delivered, config = s.state, s.delivered, s.config
    if state.checkin_emitted or state.cancelled_at is not None:
        return None
    if delivered is None or s.now < delivered + config.checkin_after:
        return None
    if not _had_delivery_incident(state):
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
            "delivered_at": iso(delivered),
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
    situation = Situation.of(state, now, config, state.delivered_at())
    return _next_deadline(state, now, config, situation)


def _next_deadline(
    state: OrderState, now: datetime, config: DetectionConfig, s: Situation | None
) -> datetime | None:
    """Each rule's own deadlines (`domain/kinds.py`), the held events' release, the
    check-in, the cancellation (it closes what is open), the state's expiry, and the
    facts dated after `now` (read while the watermark lags behind another partition):
    they take effect when time reaches them, and each that can change an incident by
    itself gets a look at its moment; the rest are seen by the next look anyway. Of a
    shipment's later checkpoints (in event order) only the first that needs a look can
    come first."""
    candidates: list[datetime] = [h.release_at for h in state.held]
    if s is None:
        return min((c for c in candidates if c > now), default=None)
    for rule in ORDER_RULES:
        candidates += rule.deadlines(s)
    for shipment in state.shipments.values():
        parcel = s.parcel(shipment)
        for shipment_rule in TIMED_SHIPMENT_RULES:
            candidates += shipment_rule.deadlines(s, parcel)
        if parcel.later:
            later = next(
                (
                    cp.at
                    for cp in parcel.later
                    if looks_at(s, cp.at, cp.status, cp.estimated_delivery_at is not None)
                ),
                None,
            )
            if later is not None:
                candidates.append(later)
        created = shipment.created_at
        if created is not None and created > now and shipment.initial_estimate is not None:
            if looks_at(s, created, None, True):
                candidates.append(created)
    for ret in state.returns.values():
        candidates += REFUND_LATE.deadlines(s, ret)
    if s.under_way and s.delivered_any is not None and not state.checkin_emitted:
        if _had_delivery_incident(state):
            candidates.append(s.delivered_any + config.checkin_after)
    if state.cancelled_at is not None:
        candidates.append(state.cancelled_at)
    expiry = _expires_at(state, config, s.delivered_any)
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


__all__ = [
    "DELIVERY_KINDS",
    "DERIVE",
    "RETRACTABLE",
    "SETTLED_KINDS",
    "DetectionConfig",
    "IncidentView",
    "Transition",
    "conclude",
    "evaluate",
    "expires_at",
    "incident_id",
    "next_deadline",
]
