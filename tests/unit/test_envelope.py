"""The CloudEvents envelope every topic carries: what it accepts, what it refuses and
why (the dead-letter reason), and what it writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.envelope import CloudEvent, InvalidEvent, new_event

T = datetime(2026, 3, 2, 12, 30, 15, 250000, tzinfo=UTC)


def envelope(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/shop",
        "type": "order.placed",
        "time": "2026-03-02T12:30:15.25Z",
        "subject": "o-1",
        "data": {"order_id": "o-1"},
    }
    doc.update(changes)
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


def test_a_structured_event_is_read_with_its_trace_context_and_other_extensions_ignored():
    event = CloudEvent.from_bytes(envelope(traceparent="00-ab-cd-01", partnerid="x"))
    assert (event.id, event.type, event.subject) == ("evt-1", "order.placed", "o-1")
    assert event.time == T and event.time.utcoffset() == timedelta(0)
    assert event.data == {"order_id": "o-1"}
    assert event.traceparent == "00-ab-cd-01"
    assert not hasattr(event, "partnerid")


@pytest.mark.parametrize(
    ("raw", "code", "says"),
    [
        (None, "empty", "empty"),
        (b"", "empty", "empty"),
        (b"{not json", "not_json", "not JSON"),
        (b'{"specversion": "1.0", "id": 42', "not_json", "not JSON"),  # cut short
        (b"[1, 2]", "not_object", "not an object"),
        (envelope(specversion="0.3"), "bad_envelope", "specversion"),
        (envelope(id=""), "bad_envelope", "id"),
        (envelope(id=42), "bad_envelope", "id"),
        (envelope(type=...), "bad_envelope", "type"),
        (envelope(time="2026-03-02T12:30:15"), "bad_envelope", "time"),  # no offset
        (envelope(time="yesterday"), "bad_envelope", "time"),
        (envelope(data=[1]), "bad_envelope", "data"),
    ],
)
def test_what_is_not_an_event_is_refused_with_a_code_and_the_field(raw, code, says):
    with pytest.raises(InvalidEvent) as caught:
        CloudEvent.from_bytes(raw)
    assert caught.value.code == code
    assert says in caught.value.reason


def test_a_refusal_names_the_field_not_its_value():
    with pytest.raises(InvalidEvent) as caught:
        CloudEvent.from_bytes(envelope(subject=12345678901))
    assert "subject" in caught.value.reason and "12345678901" not in caught.value.reason


def test_an_event_is_written_with_every_attribute_it_has_and_none_it_lacks():
    event = new_event(
        type="incident.opened",
        source="/outreach/orders_watcher",
        subject=None,
        data={"at": T, "n": 1},
        time=T.astimezone(timezone(timedelta(hours=2))),
        id="i-1",
    )
    assert orjson.loads(event.to_bytes()) == {
        "specversion": "1.0",
        "id": "i-1",
        "source": "/outreach/orders_watcher",
        "type": "incident.opened",
        "time": "2026-03-02T14:30:15.250000+02:00",
        "datacontenttype": "application/json",
        "data": {"at": "2026-03-02T12:30:15.250000Z", "n": 1},
    }
    assert event.with_fields(traceparent="00-ab-cd-01").traceparent == "00-ab-cd-01"


@given(
    st.text(min_size=1, max_size=50),
    st.text(min_size=1, max_size=20),
    st.datetimes(timezones=st.just(UTC)),
    st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10), max_size=5),
)
def test_what_is_written_reads_back_the_same(event_id, kind, moment, data):
    event = new_event(type=kind, source="/s", subject="x", data=data, time=moment, id=event_id)
    assert CloudEvent.from_bytes(event.to_bytes()) == event
