"""What every incident rule looks at: the vocabulary of detection (its thresholds, an
incident as the facts imply it) and one order's facts at a moment, with what they imply
derived once for all the rules (`Situation`, and `Parcel` per shipment). Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from services.orders_watcher.domain.model import (
    Checkpoint,
    OrderFacts,
    OrderState,
    ShipmentState,
)

Severity = Literal["info", "warning", "critical"]
#: A carrier estimate as the rules weigh it: (the estimate, (its event's id, when it
#: was said)); (None, ("", moment)) when none was said by that moment.
Estimate = tuple[datetime | None, tuple[str, datetime]]
#: Whether an incident is still open; if not, why and since when.
Closing = tuple[bool, str | None, datetime | None]


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
    severity: Severity
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


def incident_id(order_id: str, kind: str, scope: str = "") -> str:
    raw = f"{order_id}\x1f{kind}\x1f{scope}"
    return "inc_" + hashlib.sha256(raw.encode()).hexdigest()[:24]


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def days(delta: timedelta) -> int:
    """Whole days, rounded up, never below 0."""
    return max(0, -(-int(delta.total_seconds()) // 86400))


def known(moment: datetime | None, now: datetime) -> datetime | None:
    """A fact's moment if it has happened by `now`. Facts dated later (read while an
    event clock waits for a lagging partition) take effect when time reaches them: an
    order delivered tomorrow is not delivered yet, late or not."""
    return moment if moment is not None and moment <= now else None


class Situation:
    """One order at `now`, with what the rules share derived once (this runs for every
    record: plain attributes, the costlier parts computed when first asked).
    `delivered`: when the order was delivered, if by `now`; `delivered_any`: also if a
    delivery scan dated later was read already. Only for an order whose placement is
    known (`order`)."""

    __slots__ = (
        "_estimates",
        "_parcels",
        "_slipped_ever",
        "at_risk_after",
        "cancelled_at",
        "config",
        "delivered",
        "delivered_any",
        "dispatched_any",
        "horizon",
        "now",
        "order",
        "settled",
        "stall_threshold",
        "state",
    )  # fmt: skip

    def __init__(
        self,
        state: OrderState,
        order: OrderFacts,
        now: datetime,
        config: DetectionConfig,
        delivered_any: datetime | None,
    ) -> None:
        self.state, self.order, self.now, self.config = state, order, now, config
        self.delivered_any = delivered_any
        self.delivered = known(delivered_any, now)
        cancelled = self.cancelled_at = state.cancelled_at
        #: Delay rules stop at cancellation: nothing after it is a delay.
        self.horizon = now if cancelled is None or now <= cancelled else cancelled
        #: Absence is only certain once late events have had their chance to arrive:
        #: facts dated before this moment are all known (a cancellation ends it earlier).
        settled = now - config.allowed_lateness
        self.settled = cancelled if cancelled is not None and cancelled < settled else settled
        #: An estimate past this puts the promised delivery at risk.
        self.at_risk_after = order.promised_delivery_by + config.at_risk_margin
        fast = order.shipping_method in config.fast_methods
        self.stall_threshold = config.stall_after_fast if fast else config.stall_after
        #: The first shipment's creation, if dated later too.
        self.dispatched_any = state.dispatched_at()
        self._estimates: tuple[Estimate, Estimate] | None = None
        self._slipped_ever: bool | None = None
        self._parcels: dict[str, Parcel] = {}

    @classmethod
    def of(
        cls, state: OrderState, now: datetime, config: DetectionConfig, delivered_any: Any
    ) -> Situation | None:
        return None if state.order is None else cls(state, state.order, now, config, delivered_any)

    @property
    def under_way(self) -> bool:
        """Not cancelled (whenever the cancellation is dated)."""
        return self.cancelled_at is None

    def closing(self) -> Closing:
        """Whether an incident about the order's delivery is still open; if not, why and
        since when."""
        cancelled = self.cancelled_at
        if cancelled is not None and cancelled <= self.now:
            return False, "cancelled", cancelled
        if self.delivered is not None:
            return False, "delivered", self.delivered
        return True, None, None

    @property
    def estimates(self) -> tuple[Estimate, Estimate]:
        """The carrier's latest estimate said by `settled`, and by `horizon`."""
        if self._estimates is None:
            self._estimates = latest_estimates(self.state, self.settled, self.horizon)
        return self._estimates

    @property
    def any_open(self) -> bool:
        """Whether an incident told about the order is open (asked anew each time: the
        incidents told change as a conclusion goes)."""
        return any(e.status == "open" for e in self.state.emitted.values())

    @property
    def slipped_ever(self) -> bool:
        """Whether an estimate said (by now or later) lies past the promise and margin."""
        if self._slipped_ever is None:
            after = self.at_risk_after
            self._slipped_ever = any(
                (sh.initial_estimate is not None and sh.initial_estimate > after)
                or any(
                    cp.estimated_delivery_at is not None and cp.estimated_delivery_at > after
                    for cp in sh.checkpoints
                )
                for sh in self.state.shipments.values()
            )
        return self._slipped_ever

    def parcel(self, shipment: ShipmentState) -> Parcel:
        """The shipment at this moment (derived once per situation)."""
        found = self._parcels.get(shipment.shipment_id)
        if found is None:
            found = self._parcels[shipment.shipment_id] = Parcel.of(shipment, self.now)
        return found


@dataclass
class Parcel:
    """One shipment of the order at the situation's moment: its checkpoints split into
    those that have happened (`seen`) and those dated later, read already (`later`;
    checkpoints are kept in event order, so the later ones are at the end)."""

    shipment: ShipmentState
    seen: tuple[Checkpoint, ...]
    later: tuple[Checkpoint, ...]
    delivered: datetime | None  # its first delivery scan, if by now
    by_status: dict[str, list[Checkpoint]]  # those seen, per status, in event order

    @classmethod
    def of(cls, shipment: ShipmentState, now: datetime) -> Parcel:
        points = shipment.checkpoints
        split = len(points)
        while split and points[split - 1].at > now:  # the later ones are few, at the end
            split -= 1
        seen = points[:split]
        by_status: dict[str, list[Checkpoint]] = {}
        delivered = None
        for cp in seen:
            by_status.setdefault(cp.status, []).append(cp)
            if delivered is None and cp.status == "delivered":
                delivered = cp.at
        return cls(shipment, seen, points[split:], delivered, by_status)

    @property
    def sid(self) -> str:
        return self.shipment.shipment_id

    @property
    def name(self) -> str:
        """How a customer knows the parcel: its tracking number."""
        return self.shipment.tracking_number or self.shipment.shipment_id

    def facts(self) -> dict[str, Any]:
        shipment = self.shipment
        return {
            "shipment_id": shipment.shipment_id,
            "carrier": shipment.carrier,
            "tracking_number": shipment.tracking_number,
            "tracking_url": shipment.tracking_url,
        }

    def closing(self, s: Situation) -> Closing:
        """Whether an incident about this parcel is still open; if not, why and since when."""
        cancelled = s.cancelled_at is not None and s.cancelled_at <= s.now
        if cancelled:
            return False, "cancelled", s.cancelled_at
        if self.delivered is not None:
            return False, "delivered", self.delivered
        return True, None, None


def latest_estimates(
    state: OrderState, settled: datetime, horizon: datetime
) -> tuple[Estimate, Estimate]:
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
