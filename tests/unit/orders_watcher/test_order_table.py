"""The `orders` table's value: an order's state and next deadline in one JSON document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from common.deadlines import DeadlineSchedule
from services.orders_watcher.adapters import order_table
from services.orders_watcher.domain.model import OrderState, decode_state, encode_state

STATE = OrderState(order_id="o-1", last_event_at=datetime(2026, 3, 1, tzinfo=UTC))


def test_a_value_is_json_and_gives_back_the_state_and_the_deadline_separately() -> None:
    state_json = encode_state(STATE)
    value = order_table.encode(state_json, (1_780_000_000.5, 3))
    assert orjson.loads(value) == {
        "deadline": {"at": 1_780_000_000.5, "p": 3},
        "state": orjson.loads(state_json),
    }
    assert order_table.state_of(value) == state_json
    assert decode_state(order_table.state_of(value)) == STATE
    assert order_table.deadline_of(value) == (1_780_000_000.5, 3)


def test_an_order_waiting_for_nothing_and_an_older_value_have_no_deadline() -> None:
    state_json = encode_state(STATE)
    waiting_for_nothing = order_table.encode(state_json, None)
    assert orjson.loads(waiting_for_nothing)["deadline"] is None
    assert order_table.deadline_of(waiting_for_nothing) is None
    assert order_table.state_of(waiting_for_nothing) == state_json
    # Written before the deadline moved into this table: the state alone.
    assert order_table.deadline_of(state_json) is None
    assert order_table.state_of(state_json) == state_json


class Table(dict[str, Any]):
    name = "orders"

    def on_recover(self, callback: Any) -> None:
        self.recover = callback


def test_the_deadline_index_is_rebuilt_from_the_order_values() -> None:
    state_json = encode_state(STATE)
    table = Table(
        a=order_table.encode(state_json, (50.0, 1)),
        b=order_table.encode(state_json, None),
        c=state_json,
        d=order_table.encode(state_json, (10.0, 0)),
    )
    schedule = DeadlineSchedule(object(), table, "ticks", entry=order_table.deadline_of)
    schedule.rebuild()
    assert schedule.ready and len(schedule.index) == 2
    assert schedule.due(0, 100.0) == ["d"]
    assert schedule.due(1, 100.0) == ["a"]


# A state as the pydantic models before msgspec wrote it (every field, nulls included,
# UTC as Z, another offset kept).
WRITTEN_BEFORE = (
    b'{"order_id":"o-1","order":{"customer_id":"c-1","placed_at":"2026-03-02T08:00:00Z",'
    b'"placed_event_id":"e-1","currency":"EUR","total":"59.90","items":[{"sku":"sku-1",'
    b'"name":"Mug","quantity":1,"unit_price":"29.95"}],"shipping_method":"standard",'
    b'"promised_ship_by":"2026-03-03T08:00:00Z","promised_delivery_by":"2026-03-05T08:00:00Z"},'
    b'"cancelled_at":null,"cancelled_by":null,"cancelled_event_id":null,"shipments":{"s-1":'
    b'{"shipment_id":"s-1","created_at":"2026-03-02T18:00:00Z","created_event_id":"e-2",'
    b'"carrier":"DHL","tracking_number":null,"tracking_url":null,"items":{"sku-1":1},'
    b'"initial_estimate":null,"checkpoints":[{"at":"2026-03-03T09:30:00+02:00",'
    b'"status":"in_transit","substatus":null,"location":null,'
    b'"estimated_delivery_at":"2026-03-06T08:00:00Z","event_id":"e-3"}]}},"returns":{},'
    b'"seen_event_ids":["e-1","e-2","e-3"],"emitted":{"inc_1":{"kind":"delivery_late",'
    b'"revision":1,"status":"open","fingerprint":"abcd"}},"checkin_emitted":false,"held":[],'
    b'"last_event_at":"2026-03-02T08:00:00Z","judged_at":"2026-03-03T14:00:00Z"}'
)


def test_states_stored_before_load_and_are_written_back_the_same() -> None:
    state = decode_state(WRITTEN_BEFORE)
    assert state.order is not None and state.order.placed_at == datetime(2026, 3, 2, 8, tzinfo=UTC)
    checkpoint = state.shipments["s-1"].checkpoints[0]
    assert checkpoint.at == datetime(2026, 3, 3, 7, 30, tzinfo=UTC)
    assert checkpoint.at.utcoffset() is not None and checkpoint.at.utcoffset().seconds == 7200
    assert state.emitted["inc_1"].revision == 1
    assert encode_state(state) == WRITTEN_BEFORE


def test_unknown_fields_of_a_stored_state_are_ignored() -> None:
    raw = orjson.loads(encode_state(STATE))
    raw["a_field_from_a_newer_version"] = {"x": 1}
    assert decode_state(orjson.dumps(raw)) == STATE
