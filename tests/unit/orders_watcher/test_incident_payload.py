"""The watcher writes its `outreach.incidents` payloads as plain data; they must be exactly
what the contract model (common.schemas.Incident) accepts and would itself write."""

from __future__ import annotations

import pytest

from common.schemas import Incident
from tests.unit.orders_watcher.test_rules import CASES
from tests.unit.orders_watcher.timeline import Run, placed, return_event, scan, shipped

EXTRA = [
    [
        placed(deliver_by=72),
        shipped(at=10, estimate=60),
        scan(at=20, status="in_transit", estimate=100),
        scan(at=40, status="exception", substatus="damaged"),
        scan(at=110, status="delivered"),
        return_event("requested", at=120),
        return_event("received", at=130),
    ],
]


@pytest.mark.parametrize("events", [c.values[0] for c in CASES] + EXTRA)
def test_every_incident_payload_is_the_contract_models_own(events):
    run = Run().feed(*events, until=400)
    for event in run.emitted:
        model = Incident.model_validate(event.data)
        assert model.model_dump(mode="json") == event.data
