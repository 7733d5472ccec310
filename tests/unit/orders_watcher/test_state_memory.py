"""An order's state holds nothing the garbage collector tracks (domain/model.py: `_State`):
the watcher keeps thousands of them in memory, and every tracked object among them
lengthens each full collection, a pause every record waits behind."""

from __future__ import annotations

import gc
from typing import Any

import msgspec

from services.orders_watcher.domain.model import OrderState, decode_state, encode_state
from tests.unit.orders_watcher.timeline import Run, placed, return_event, scan, shipped


def _tracked(value: Any, path: str = "state") -> list[str]:
    """Paths of the GC-tracked objects in a state's tree (structs, dicts, tuples, lists)."""
    found = [path] if gc.is_tracked(value) else []
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            found += _tracked(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _tracked(item, f"{path}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found += _tracked(item, f"{path}[{i}]")
    return found


def _rich_state() -> OrderState:
    """An order with every kind of fact: items, two shipments with scans, a return,
    incidents told, events seen."""
    run = Run().feed(
        placed(deliver_by=72),
        shipped(at=10, estimate=60),
        shipped(at=11, shipment_id="s-2", estimate=60),
        scan(at=20, status="in_transit", estimate=100),
        scan(at=40, status="exception", substatus="damaged"),
        scan(at=110, status="delivered"),
        return_event("requested", at=120),
        until=125,
    )
    assert run.state is not None and run.state.emitted and run.state.returns
    return run.state


def _held_state() -> OrderState:
    """A shipment that came before its order: held."""
    run = Run().feed(shipped(at=10, estimate=60))
    assert run.state is not None and run.state.held
    return run.state


def test_states_as_the_rules_leave_them_and_as_read_back_are_untracked() -> None:
    for state in (_rich_state(), _held_state()):
        read_back = decode_state(encode_state(state))
        # A new tuple is tracked until the collector first sees that it holds nothing
        # trackable; what must not happen is anything staying tracked after that.
        gc.collect()
        assert _tracked(state) == []
        assert _tracked(read_back) == []
