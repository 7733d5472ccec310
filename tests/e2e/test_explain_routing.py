"""`explain` on a stream service with two replicas: each replica holds the profiles of
its partitions only; asked about a customer the other one holds, it passes the question
to that replica (found through the group's assignment, OUTREACH_ADVERTISED_URL) and
answers what it answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common.envelope import new_event
from common.ops_http import FORWARDED_BY
from tests.conftest import free_port, wait_for
from tests.e2e.stack import Shop, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
CUSTOMERS = [f"c-{i}" for i in range(12)]


def placed(i: int, cid: str) -> Any:
    at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC) + timedelta(minutes=i)
    return new_event(
        type="order.placed", source="/shop/test", subject=f"o-{i}", time=at, id=f"placed-{i}",
        data={
            "order_id": f"o-{i}", "customer_id": cid, "currency": "EUR", "total": "19.90",
            "items": [{"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price": "19.90"}],
            "shipping_method": "standard",
            "promised_ship_by": (at + timedelta(days=1)).isoformat(),
            "promised_delivery_by": (at + timedelta(days=3)).isoformat(),
            "shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin"},
        },
    )  # fmt: skip


def explain(port: int, cid: str, *, no_forwarding: bool = False) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/customers/{cid}/explain")
    if no_forwarding:
        request.add_header(FORWARDED_BY, "the test")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_each_replica_answers_for_every_customer(kafka_bootstrap, topic_prefix, tmp_path):
    stack = Stack(kafka_bootstrap, topic_prefix, tmp_path, extra_env={"OUTREACH_CLOCK": "wall"})
    first = stack.env() and stack.ports["risk_detector"]
    second = stack.ports.setdefault("risk_detector-2", free_port())
    stack.extra_env["OUTREACH_ADVERTISED_URL"] = f"http://127.0.0.1:{first}"
    shop = Shop(kafka_bootstrap, topic_prefix)
    try:
        stack.start("risk_detector")
        stack.launch(
            "risk_detector-2",
            RISK_DETECTOR_HTTP_PORT=str(second),
            OUTREACH_ADVERTISED_URL=f"http://127.0.0.1:{second}",
            OUTREACH_DATA_DIR=str(tmp_path / "second"),  # its own RocksDB
        )
        wait_for(lambda: stack.ready("risk_detector-2"), timeout=120, message="second ready")
        for i, cid in enumerate(CUSTOMERS):
            shop.publish("commerce.orders", f"o-{i}", placed(i, cid))

        def everyone_known_to(port: int) -> bool:
            return all(explain(port, cid) == 200 for cid in CUSTOMERS)

        try:
            wait_for(lambda: everyone_known_to(first), timeout=90, message="all from the first")
        except AssertionError:
            statuses = {
                port: {
                    c: (explain(port, c), explain(port, c, no_forwarding=True)) for c in CUSTOMERS
                }
                for port in (first, second)
            }
            raise AssertionError(f"answers (forwarded, own) per replica: {statuses}") from None
        assert everyone_known_to(second)
        # Each holds only its own: some customers are the other replica's.
        held = {port: {c for c in CUSTOMERS if explain(port, c, no_forwarding=True) == 200}
                for port in (first, second)}  # fmt: skip
        assert held[first] and held[second], held
        assert held[first] | held[second] == set(CUSTOMERS)
        assert explain(first, "c-nobody") == 404
    finally:
        shop.close()
        stack.stop()
