"""orders_watcher's handlers: one per input, and one for the passing of time.

Each takes the order's state and returns what to emit; the entrypoint loads and stores
state and sends. Nothing here touches Kafka, the table or the clock directly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from common import handling, schemas
from common.envelope import CloudEvent, InvalidEvent, derived_id, new_event
from common.kafka import InputMessage, Outgoing
from common.logs import get_logger
from common.metrics import INCIDENTS, child
from common.topics import Topics
from services.orders_watcher.domain import facts, rules
from services.orders_watcher.domain.model import HeldEvent, OrderState

SOURCE = "/outreach/orders_watcher"
log = get_logger(__name__)


class Outcome(handling.Outcome[OrderState]):
    """What one handler call decided about an order (common/handling.py). A class of its
    own, not the generic alias: calling an alias costs a microsecond a record."""


HANDLED_TYPES = frozenset(facts.FACTS)


class OrdersWatcher:
    def __init__(self, config: rules.DetectionConfig, topics: Topics) -> None:
        self.config = config
        self.topics = topics
        self.facts = handling.Dispatch("orders_watcher", facts.FACTS)

    def order_id_of(self, msg: InputMessage, event: CloudEvent) -> str:
        order_id = event.data.get("order_id") if isinstance(event.data, dict) else None
        if not isinstance(order_id, str) or not order_id:
            raise InvalidEvent(f"{event.type} has no order_id", code="bad_data")
        return order_id

    def handle_event(
        self,
        state: OrderState | None,
        msg: InputMessage,
        event: CloudEvent,
        now: datetime,
        arrived: datetime | None = None,
    ) -> Outcome:
        """The record judged at `now`. `arrived`: when it was read, on the service's clock
        (default `now`): a shipment or return waits for its order `orphan_hold` from then
        — on the wall clock a backlog record is judged at its partition's (earlier) time,
        but its order, on another topic, can only come after it was read."""
        apply = self.facts(event.type, msg.topic)
        payload = schemas.parse_input(event, self.topics.unprefixed(msg.topic))
        order_id = self.order_id_of(msg, event)
        state = state or OrderState(order_id=order_id)
        if state.seen(event.id):
            return Outcome(state=state, duplicate=True, deadline=self._deadline(state, now))
        if isinstance(payload, schemas.OrderPlaced) and state.order is not None:
            if state.order.customer_id != payload.customer_id:
                raise InvalidEvent(
                    f"order {order_id} placed again for another customer", code="conflict"
                )
        apply(state, payload, event.id, event.time)
        if state.order is None and facts.needs_order(event.type):
            state.held += (
                HeldEvent(
                    event_id=event.id,
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    key=msg.key.decode(errors="replace") if msg.key else None,
                    value=(msg.value or b"").decode("latin-1"),
                    release_at=max(arrived or now, event.time) + self.config.orphan_hold,
                ),
            )
        if isinstance(payload, schemas.OrderPlaced):
            state.held = ()
        return self._conclude(state, now)

    def handle_tick(self, state: OrderState, now: datetime) -> Outcome:
        """Time passed: release held orphans, fire deadlines, expire finished orders."""
        outcome = Outcome(state=state)
        if state.order is None:
            expired = [h for h in state.held if h.release_at <= now]
            if expired:
                outcome.dead_letters = [
                    handling.Rejected(
                        _original(h),
                        f"no order.placed for order {state.order_id} within "
                        f"{self.config.orphan_hold}; event held and released",
                        "orphan_expired",
                    )
                    for h in expired
                ]
                state.held = tuple(h for h in state.held if h.release_at > now)
            if not state.held:
                outcome.state = None
                return outcome
        delivered_any = state.delivered_at()  # once, for the expiry and the conclusion
        expiry = rules.expires_at(state, self.config, delivered_any)
        if expiry is not None and expiry <= now:
            outcome.state = None
            return outcome
        concluded = self._conclude(state, now, delivered_any)
        concluded.dead_letters = outcome.dead_letters
        return concluded

    def _conclude(
        self, state: OrderState, now: datetime, delivered_any: Any = rules.DERIVE
    ) -> Outcome:
        now = state.judged_at = state.judging_at(now)
        changes, deadline = rules.conclude(state, now, self.config, delivered_any)
        records = [self._record(state, t) for t in changes]
        return Outcome(state=state, records=records, deadline=deadline)

    def _deadline(self, state: OrderState, now: datetime) -> datetime | None:
        return rules.next_deadline(state, now, self.config)

    def _record(self, state: OrderState, transition: rules.Transition) -> Outgoing:
        view = transition.incident
        order = state.order
        assert order is not None
        status = "resolved" if transition.change == "resolved" else "open"
        moment = view.moment(transition.change)
        # The `outreach.incidents` payload (schemas.Incident) written directly: the
        # watcher's own values need no validation, and the model's construction and dump
        # cost more than the rules (tests/unit/orders_watcher hold the two to the same
        # bytes).
        incident = {
            "incident_id": view.incident_id,
            "revision": transition.revision,
            "kind": view.kind,
            "severity": view.severity,
            "customer_id": order.customer_id,
            "order_id": state.order_id,
            "shipment_id": view.shipment_id,
            "status": status,
            "detected_at": view.since or moment,
            "explanation": view.explanation,
            "evidence": list(view.evidence),
            "facts": view.facts,
            "order": _order_summary(state, view),
            "resolution": view.resolution if status == "resolved" else None,
        }
        child(INCIDENTS, view.kind, transition.change).inc()
        log.info(
            "incident",
            change=transition.change,
            kind=view.kind,
            incident_id=view.incident_id,
            revision=transition.revision,
            order_id=state.order_id,
            judged_at=state.judged_at.isoformat() if state.judged_at else None,
        )
        event = new_event(
            type=f"incident.{transition.change}",
            source=SOURCE,
            subject=view.incident_id,
            id=derived_id("incident", view.incident_id, transition.revision, transition.change),
            time=moment,
            data=msgspec.to_builtins(incident),
        )
        return Outgoing(topic=self.topics.incidents, key=order.customer_id, event=event)


def _order_summary(state: OrderState, view: rules.IncidentView) -> dict[str, Any]:
    """The order as an incident carries it: its parcel (the incident's, else the first)."""
    order = state.order
    assert order is not None
    shipment = state.shipments.get(view.shipment_id or "") if view.shipment_id else None
    if shipment is None and state.shipments:
        shipment = sorted(state.shipments.values(), key=lambda s: s.shipment_id)[0]
    estimate = view.facts.get("estimated_delivery_at")
    return {
        "order_id": state.order_id,
        "currency": order.currency,
        "total": order.total,
        "items": [msgspec.structs.asdict(item) for item in order.items],
        "shipping_method": order.shipping_method,
        "placed_at": order.placed_at,
        "promised_delivery_by": order.promised_delivery_by,
        "carrier": shipment.carrier if shipment else None,
        "tracking_number": shipment.tracking_number if shipment else None,
        "tracking_url": shipment.tracking_url if shipment else None,
        "estimated_delivery_at": datetime.fromisoformat(estimate) if estimate else None,
    }


def _original(held: HeldEvent) -> InputMessage:
    """The input record a held event came in, as it was."""
    return InputMessage(
        topic=held.topic,
        partition=held.partition,
        offset=held.offset,
        key=held.key.encode() if held.key else None,
        value=held.value.encode("latin-1"),
    )
