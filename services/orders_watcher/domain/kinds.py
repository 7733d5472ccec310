"""One rule per incident kind (SPEC §6): what the facts imply at a moment (`incidents`)
beside the moments at which time alone could change that (`deadlines`), and which facts
dated later, read already, change it by themselves when time reaches them (`looks_at`).

Rules are about the order, one of its shipments or one of its returns; `rules.py` asks
each in a fixed order (the order's, then each shipment's, then each return's) and
compares what they say with what was told. Pure.
"""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any

from common.schemas import IncidentKind
from services.orders_watcher.domain.model import ReturnState
from services.orders_watcher.domain.situation import (
    Closing,
    IncidentView,
    Parcel,
    Severity,
    Situation,
    days,
    incident_id,
    iso,
    known,
)

CRITICAL_SUBSTATUSES = frozenset({"lost", "damaged"})
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


class Rule:
    """What every rule answers; the defaults: no deadline of its own, and no fact dated
    later changes it by itself."""

    kind: str

    def looks_at(self, s: Situation, at: datetime, status: str | None, estimate: bool) -> bool:
        """Whether a fact dated `at`, after now (a checkpoint with this status, or a
        shipment's creation: `status` None; `estimate`: it carries a carrier estimate),
        can change this rule's incidents by itself."""
        return False

    def view(
        self,
        s: Situation,
        closing: Closing,
        *,
        shipment_id: str | None = None,
        return_id: str | None = None,
        severity: Severity = "warning",
        since: datetime,
        changed_at: datetime | None = None,
        explanation: str,
        evidence: tuple[str, ...],
        material: tuple[Any, ...],
        facts: dict[str, Any],
    ) -> IncidentView:
        """This kind's incident about the order (or one of its shipments or returns),
        open or closed as `closing` says."""
        is_open, resolution, resolved_at = closing
        scope = shipment_id or return_id or ""
        return IncidentView(
            incident_id=incident_id(s.state.order_id, self.kind, scope),
            kind=self.kind,
            severity=severity,
            open=is_open,
            resolution=resolution,
            resolved_at=resolved_at,
            since=since,
            changed_at=changed_at,
            shipment_id=shipment_id,
            explanation=explanation,
            evidence=evidence,
            material=material,
            facts=facts,
        )


class OrderRule(Rule, abc.ABC):
    """A rule about the order as a whole."""

    @abc.abstractmethod
    def incident(self, s: Situation) -> IncidentView | None:
        """The incident the order's facts imply now, if any."""

    def deadlines(self, s: Situation) -> list[datetime]:
        return []


class ShipmentRule(Rule, abc.ABC):
    """A rule about one shipment of the order."""

    @abc.abstractmethod
    def incident(self, s: Situation, parcel: Parcel) -> IncidentView | None:
        """The incident the parcel's facts imply now, if any."""

    def deadlines(self, s: Situation, parcel: Parcel) -> list[datetime]:
        return []


# --- the order's ---------------------------------------------------------------------


class DispatchLate(OrderRule):
    """No shipment.created by promised_ship_by."""

    kind = IncidentKind.DISPATCH_LATE.value

    def incident(self, s: Situation) -> IncidentView | None:
        order, promised = s.order, s.order.promised_ship_by
        dispatched = known(s.dispatched_any, s.now)
        late = (dispatched is None and s.settled >= promised) or (
            dispatched is not None
            and dispatched > promised
            and (s.cancelled_at is None or s.cancelled_at > promised)
        )
        if not late:
            return None
        return self.view(
            s,
            s.closing(),
            since=promised,
            explanation=(
                f"Order {s.state.order_id} was not dispatched by the promised "
                f"{promised:%Y-%m-%d %H:%M} UTC."
            ),
            evidence=(order.placed_event_id,),
            material=(promised,),
            facts={"promised_ship_by": iso(promised), "dispatched_at": iso(dispatched)},
        )

    def deadlines(self, s: Situation) -> list[datetime]:
        first = s.dispatched_any  # a dispatch dated later, read already, counts too
        if not s.under_way or (first is not None and first <= s.now):
            return []
        if first is None or first > s.order.promised_ship_by:
            return [s.order.promised_ship_by + s.config.allowed_lateness]
        return []


class DeliveryAtRisk(OrderRule):
    """The carrier's estimate is more than the margin past the promise, before it breaks.

    Whether it exists is judged on the estimates that have settled only: a scan dated
    before now may still arrive within the allowed lateness and replace one, and arrival
    order must not decide the incident (a newer estimate read already does not count
    before it settles either). What it (and delivery_late) says is the newest estimate
    known, while that one still lies past the promise."""

    kind = IncidentKind.DELIVERY_AT_RISK.value

    def incident(self, s: Situation) -> IncidentView | None:
        (settled, settled_event), (estimate, estimate_event) = s.estimates
        promise, after = s.order.promised_delivery_by, s.at_risk_after
        if settled is None or settled <= after:
            return None
        told, told_event = estimate, estimate_event
        if told is None or told <= after:
            told, told_event = settled, settled_event
        if settled_event[1] >= promise:
            return None  # the slip became known only once the promise had broken
        said = max(told_event[1], s.order.placed_at)
        return self.view(
            s,
            s.closing(),
            since=said,
            changed_at=said,
            explanation=(
                f"The carrier now expects order {s.state.order_id} on "
                f"{told:%Y-%m-%d}, after the promised {promise:%Y-%m-%d}."
            ),
            evidence=(told_event[0],),
            material=(told,),
            facts={
                "promised_delivery_by": iso(promise),
                "estimated_delivery_at": iso(told),
                "delay_days": days(told - promise),
            },
        )

    def deadlines(self, s: Situation) -> list[datetime]:
        """While an estimate known by now lies past the promise and its margin, each
        estimate's settling (its moment plus the allowed lateness) may change which
        one the incident tells."""
        if not s.slipped_ever:
            return []  # no estimate, known now or later, lies past the margin
        late, after = s.config.allowed_lateness, s.at_risk_after
        settling: list[datetime] = []
        slipped = False
        for shipment in s.state.shipments.values():
            for cp in s.parcel(shipment).seen:
                if cp.estimated_delivery_at is not None:
                    settling.append(cp.at + late)
                    slipped = slipped or cp.estimated_delivery_at > after
            created, estimate = shipment.created_at, shipment.initial_estimate
            if created is not None and estimate is not None and created <= s.now:
                settling.append(created + late)
                slipped = slipped or estimate > after
        return settling if slipped else []

    def looks_at(self, s: Situation, at: datetime, status: str | None, estimate: bool) -> bool:
        return estimate and s.slipped_ever


class DeliveryLate(OrderRule):
    """Not delivered at promised_delivery_by."""

    kind = IncidentKind.DELIVERY_LATE.value

    def incident(self, s: Situation) -> IncidentView | None:
        promise, delivered = s.order.promised_delivery_by, s.delivered
        was_late = (delivered is None and s.settled >= promise) or (
            delivered is not None and delivered > promise
        )
        if not was_late or (s.cancelled_at is not None and s.cancelled_at <= promise):
            return None
        _, (estimate, estimate_event) = s.estimates
        return self.view(
            s,
            s.closing(),
            since=promise,
            changed_at=max(promise, estimate_event[1]) if estimate else promise,
            explanation=(
                f"Order {s.state.order_id} was not delivered by the promised "
                f"{promise:%Y-%m-%d %H:%M} UTC."
            ),
            evidence=(s.order.placed_event_id,) + ((estimate_event[0],) if estimate else ()),
            material=(estimate,),
            facts={
                "promised_delivery_by": iso(promise),
                "estimated_delivery_at": iso(estimate),
                "delay_days": days(estimate - promise) if estimate else None,
            },
        )

    def deadlines(self, s: Situation) -> list[datetime]:
        promise = s.order.promised_delivery_by
        if (
            s.under_way
            and s.delivered is None
            and (s.delivered_any is None or s.delivered_any > promise)
        ):
            return [promise + s.config.allowed_lateness]
        return []

    def looks_at(self, s: Situation, at: datetime, status: str | None, estimate: bool) -> bool:
        return estimate and at > s.order.promised_delivery_by


# --- each shipment's -----------------------------------------------------------------


class StatusRule(ShipmentRule):
    """A tracking status that raises an incident at once: the latest checkpoint with it
    decides what the incident says."""

    def __init__(
        self, status: str, kind: IncidentKind, severity: Severity, explanation: str
    ) -> None:
        """`explanation`: a format of `parcel` and `where` (" (location)" or "")."""
        self.status, self.kind, self.severity = status, kind.value, severity
        self.explanation = explanation

    def incident(self, s: Situation, parcel: Parcel) -> IncidentView | None:
        hits = parcel.by_status.get(self.status)
        if not hits:
            return None
        last = hits[-1]
        where = f" ({last.location})" if last.location else ""
        return self.view(
            s,
            parcel.closing(s),
            severity=self.severity,
            since=hits[0].at,
            changed_at=last.at,
            shipment_id=parcel.sid,
            explanation=self.explanation.format(parcel=parcel.name, where=where),
            evidence=tuple(cp.event_id for cp in hits),
            material=tuple(cp.at for cp in hits),
            facts={
                **parcel.facts(),
                "status": self.status,
                "location": last.location,
                "checkpoint_at": iso(last.at),
                "attempts": len(hits),
            },
        )

    def looks_at(self, s: Situation, at: datetime, status: str | None, estimate: bool) -> bool:
        return status == self.status


class CarrierException(ShipmentRule):
    """The carrier reported a problem; critical if a parcel is lost or damaged."""

    kind = IncidentKind.CARRIER_EXCEPTION.value

    def incident(self, s: Situation, parcel: Parcel) -> IncidentView | None:
        exceptions = parcel.by_status.get("exception")
        if not exceptions:
            return None
        last = exceptions[-1]
        substatus = last.substatus if last.substatus in KNOWN_SUBSTATUSES else "other"
        critical = any(cp.substatus in CRITICAL_SUBSTATUSES for cp in exceptions)
        carrier = parcel.shipment.carrier or "The carrier"
        return self.view(
            s,
            parcel.closing(s),
            severity="critical" if critical else "warning",
            since=exceptions[0].at,
            changed_at=last.at,
            shipment_id=parcel.sid,
            explanation=(
                f"{carrier} reported a problem with parcel {parcel.name}: "
                f"{substatus.replace('_', ' ')}."
            ),
            evidence=tuple(cp.event_id for cp in exceptions),
            material=tuple((cp.at, cp.substatus) for cp in exceptions),
            facts={
                **parcel.facts(),
                "status": "exception",
                "substatus": substatus,
                "raw_substatus": last.substatus,
                "location": last.location,
                "checkpoint_at": iso(last.at),
            },
        )

    def looks_at(self, s: Situation, at: datetime, status: str | None, estimate: bool) -> bool:
        return status == "exception"


class ShipmentStalled(ShipmentRule):
    """No tracking update for the threshold (shorter for fast methods) while not delivered."""

    kind = IncidentKind.SHIPMENT_STALLED.value

    def incident(self, s: Situation, parcel: Parcel) -> IncidentView | None:
        shipment, threshold = parcel.shipment, s.stall_threshold
        if shipment.created_at is None or (s.cancelled_at is not None and s.cancelled_at <= s.now):
            return None
        scans = sorted([shipment.created_at] + [cp.at for cp in parcel.seen])
        end = parcel.delivered or s.settled
        stalls = [
            before
            for before, after in zip(scans, [*scans[1:], end], strict=True)
            if after - before >= threshold and before < end
        ]
        if not stalls or "returned_to_sender" in parcel.by_status:
            return None
        return self.view(
            s,
            parcel.closing(s),
            since=stalls[0] + threshold,
            changed_at=stalls[-1] + threshold,
            shipment_id=parcel.sid,
            explanation=(
                f"Parcel {parcel.name} has had no tracking update "
                f"for {int(threshold.total_seconds() // 3600)} h "
                f"(last at {stalls[-1]:%Y-%m-%d %H:%M} UTC)."
            ),
            evidence=tuple(cp.event_id for cp in parcel.seen[-1:]),
            material=tuple(stalls),
            facts={
                **parcel.facts(),
                "last_update_at": iso(scans[-1]),
                "stalled_since": iso(stalls[-1]),
                # Where it was last seen: a hub that stopped holds all its parcels there.
                "location": parcel.seen[-1].location if parcel.seen else None,
            },
        )

    def deadlines(self, s: Situation, parcel: Parcel) -> list[datetime]:
        """Absence of a scan for the threshold. From the last scan that has happened,
        along the scans dated later (read already): the first gap of the threshold that
        has not passed yet is the next look."""
        created = parcel.shipment.created_at
        if not s.under_way or s.delivered is not None or created is None:
            return []
        if parcel.delivered is not None:
            return []
        threshold, late = s.stall_threshold, s.config.allowed_lateness
        last_scan = parcel.seen[-1].at if parcel.seen else None
        point: datetime | None = created if last_scan is None or created > last_scan else last_scan
        for cp in parcel.later:
            assert point is not None
            if point + threshold + late > s.now and cp.at - point >= threshold:
                break
            point = None if cp.status == "delivered" else cp.at
            if point is None:
                return []
        if point is not None:
            return [point + threshold + late]
        return []


# --- each return's -------------------------------------------------------------------


class RefundLate(Rule):
    """A received return not refunded within refund_within."""

    kind = IncidentKind.REFUND_LATE.value

    def incident(self, s: Situation, ret: ReturnState) -> IncidentView | None:
        received = known(ret.received_at, s.now)
        if received is None:
            return None
        due = received + s.config.refund_within
        refunded = known(ret.refunded_at, s.now)
        settled = s.now - s.config.allowed_lateness  # a cancellation does not end refunds
        if not (refunded > due if refunded is not None else settled >= due):
            return None
        closing = (False, "refunded", refunded) if refunded is not None else (True, None, None)
        return self.view(
            s,
            closing,
            return_id=ret.return_id,
            since=due,
            explanation=(
                f"Return {ret.return_id} was received on {received:%Y-%m-%d} "
                f"and not refunded within {s.config.refund_within.days} days."
            ),
            evidence=tuple(e for e in (ret.received_event_id,) if e),
            material=(received,),
            facts={"return_id": ret.return_id, "received_at": iso(received)},
        )

    def deadlines(self, s: Situation, ret: ReturnState) -> list[datetime]:
        if ret.received_at is None:
            return []
        due = ret.received_at + s.config.refund_within
        refunded = ret.refunded_at
        if refunded is not None and refunded <= due:
            return []
        found = [due + s.config.allowed_lateness] if known(refunded, s.now) is None else []
        if refunded is not None:
            found.append(refunded)  # a refund dated later, read already
        return found


# In the order their incidents are told (and were, before rules were objects).
ORDER_RULES: tuple[OrderRule, ...] = (
    DispatchLate(),
    DeliveryAtRisk(),
    DeliveryLate(),
)
STATUS_RULES = (
    StatusRule(
        "attempt_failed",
        IncidentKind.DELIVERY_FAILED,
        "warning",
        "The carrier could not deliver parcel {parcel}{where}.",
    ),
    StatusRule(
        "available_for_pickup",
        IncidentKind.AWAITING_PICKUP,
        "info",
        "Parcel {parcel} is waiting at a pickup point{where}.",
    ),
    StatusRule(
        "returned_to_sender",
        IncidentKind.RETURNED_TO_SENDER,
        "warning",
        "Parcel {parcel} is being returned to the sender{where}.",
    ),
)
SHIPMENT_RULES: tuple[ShipmentRule, ...] = (
    *STATUS_RULES,
    CarrierException(),
    ShipmentStalled(),
)
#: The shipment rules with deadlines of their own (time alone changes them).
TIMED_SHIPMENT_RULES = tuple(
    r for r in SHIPMENT_RULES if type(r).deadlines is not ShipmentRule.deadlines
)
REFUND_LATE = RefundLate()
LOOKING: tuple[Rule, ...] = (*ORDER_RULES, *SHIPMENT_RULES)


def looks_at(s: Situation, at: datetime, status: str | None, estimate: bool) -> bool:
    """Whether a fact dated later, read already (a checkpoint with `status`, or a
    shipment's creation: `status` None; `estimate`: it carries a carrier estimate),
    changes some incident by itself when time reaches it: a status that raises or
    updates one at once, a delivery while one is open (it closes it), an estimate that
    may move delivery_at_risk or delivery_late."""
    if status == "delivered" and s.any_open:
        return True
    return any(rule.looks_at(s, at, status, estimate) for rule in LOOKING)


__all__ = [
    "CRITICAL_SUBSTATUSES",
    "KNOWN_SUBSTATUSES",
    "LOOKING",
    "ORDER_RULES",
    "REFUND_LATE",
    "SHIPMENT_RULES",
    "STATUS_RULES",
    "TIMED_SHIPMENT_RULES",
    "looks_at",
]
