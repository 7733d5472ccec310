"""The `orders` table's value: an order's state and next deadline in one JSON document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from common.deadlines import DeadlineSchedule
from services.orders_watcher.adapters import order_table
from services.orders_watcher.domain.model import OrderState

STATE = OrderState(order_id="o-1", last_event_at=datetime(2026, 3, 1, tzinfo=UTC))


def test_a_value_is_json_and_gives_back_the_state_and_the_deadline_separately() -> None:
    state_json = STATE.model_dump_json().encode()
    value = order_table.encode(state_json, (1_780_000_000.5, 3))
    assert orjson.loads(value) == {
        "deadline": {"at": 1_780_000_000.5, "p": 3},
        "state": orjson.loads(state_json),
    }
    assert order_table.state_of(value) == state_json
    assert OrderState.model_validate_json(order_table.state_of(value)) == STATE
    assert order_table.deadline_of(value) == (1_780_000_000.5, 3)


def test_an_order_waiting_for_nothing_and_an_older_value_have_no_deadline() -> None:
    state_json = STATE.model_dump_json().encode()
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
    state_json = STATE.model_dump_json().encode()
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
