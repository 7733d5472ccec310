"""The input contract (SPEC §3) as `parse_input` enforces it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from common.envelope import InvalidEvent, new_event
from common.schemas import OrderPlaced, ReturnRefunded, parse_input

T = datetime(2026, 3, 2, 12, tzinfo=UTC)


def placed(**changes: Any) -> dict[str, Any]:
    data = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "currency": "EUR",
        "total": "59.90",
        "items": [{"sku": "s-1", "name": "Mug", "quantity": 2, "unit_price": "29.95"}],
        "shipping_method": "standard",
        "promised_ship_by": "2026-03-03T12:00:00Z",
        "promised_delivery_by": "2026-03-06T12:00:00Z",
        "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
    }
    data.update(changes)
    return data


def event(type_: str, data: dict[str, Any]) -> Any:
    return new_event(type=type_, source="/shop", subject="o-1", data=data, time=T, id="e-1")


def test_amounts_are_exact_decimals_from_strings():
    payload = parse_input(event("order.placed", placed()), "commerce.orders")
    assert isinstance(payload, OrderPlaced)
    assert payload.total == Decimal("59.90")
    assert payload.items[0].unit_price == Decimal("29.95")


@pytest.mark.parametrize(
    ("type_", "data", "field"),
    [
        ("order.placed", placed(total=59.9), "total"),
        (
            "order.placed",
            placed(items=[{"sku": "s", "name": "Mug", "quantity": 1, "unit_price": 9.99}]),
            "items[0].unit_price",
        ),
        (
            "return.refunded",
            {"return_id": "r-1", "order_id": "o-1", "amount": 9.99, "currency": "EUR"},
            "amount",
        ),
    ],
)
def test_an_amount_sent_as_a_json_number_is_refused_with_its_field(type_, data, field):
    with pytest.raises(InvalidEvent) as caught:
        parse_input(event(type_, data))
    assert caught.value.code == "bad_data"
    assert f"{field}: amounts must be decimal strings" in str(caught.value)


def test_other_numbers_are_not_taken_for_amounts():
    payload = parse_input(event("order.placed", placed()))
    assert payload.items[0].quantity == 2
    refunded = parse_input(
        event(
            "return.refunded",
            {"return_id": "r-1", "order_id": "o-1", "amount": "9.99", "currency": "EUR"},
        )
    )
    assert isinstance(refunded, ReturnRefunded)


def test_missing_and_misplaced_inputs_are_refused_with_a_reason():
    data = placed()
    del data["customer_id"]
    with pytest.raises(InvalidEvent, match="customer_id: required, missing"):
        parse_input(event("order.placed", data))
    with pytest.raises(InvalidEvent, match="does not belong on topic") as caught:
        parse_input(event("order.placed", placed()), "commerce.shipments")
    assert caught.value.code == "wrong_topic"
    with pytest.raises(InvalidEvent, match="unknown event type") as caught:
        parse_input(event("order.teleported", placed()))
    assert caught.value.code == "unknown_type"


@pytest.mark.parametrize(
    ("type_", "data", "says"),
    [
        ("order.placed", placed(total="1.23456"), "total: amounts have at most 18 digits"),
        ("order.placed", placed(total="ten euros"), "total: not a decimal amount"),
        ("order.placed", placed(customer_id=42), "customer_id: Expected `str`, got `int`"),
        ("order.placed", placed(items=[]), "items: Expected `array` of length >= 1"),
        ("order.placed", placed(promised_ship_by="2026-03-03T12:00:00"), "promised_ship_by"),
        ("order.placed", placed(shipping_method="teleport"), "shipping_method"),
        (
            "feedback.received",
            {"customer_id": "c-1", "kind": "nps", "score": 11},
            "score: nps score must be 0-10",
        ),
        (
            "feedback.received",
            {"customer_id": "c-1", "kind": "csat", "score": 0},
            "score: csat score must be 1-5",
        ),
    ],
)
def test_bad_data_is_refused_naming_the_field(type_, data, says):
    with pytest.raises(InvalidEvent) as caught:
        parse_input(event(type_, data))
    assert caught.value.code == "bad_data"
    assert says in caught.value.reason


def test_fields_added_by_a_producer_are_ignored_and_times_keep_their_offset():
    payload = parse_input(
        event(
            "order.placed",
            placed(loyalty_tier="gold", promised_ship_by="2026-03-03T14:00:00+02:00"),
        )
    )
    assert isinstance(payload, OrderPlaced) and not hasattr(payload, "loyalty_tier")
    assert payload.promised_ship_by == datetime(2026, 3, 3, 12, tzinfo=UTC)
    assert payload.promised_ship_by.utcoffset().total_seconds() == 7200
