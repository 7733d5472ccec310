"""The private parts of faust-streaming the services rely on (common/faust_private.py)
are where that module says, on the version the lock pins: a faust upgrade that moves one
fails here, naming it, instead of in a worker."""

from __future__ import annotations

import inspect
import re
from contextvars import ContextVar
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import MessageAccumulator
from faust.stores import rocksdb

from common import faust_private

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app() -> faust.App:
    return faust.App("faust-private-probe", broker="kafka://127.0.0.1:9", store="memory://")


def locked_version(package: str) -> str:
    lock = (ROOT / "uv.lock").read_text()
    found = re.search(rf'\[\[package\]\]\nname = "{package}"\nversion = "([^"]+)"', lock)
    assert found, f"{package} is not in uv.lock"
    return found.group(1)


def test_the_parts_were_read_from_the_version_the_lock_pins():
    assert faust.__version__ == faust_private.FAUST_STREAMING == locked_version("faust-streaming")


def test_the_consumer_keeps_committed_offsets_and_unacknowledged_messages(app):
    consumer = app.consumer
    assert isinstance(consumer._committed_offset, dict)
    assert callable(consumer._unacked_messages.add) and callable(consumer._unacked_messages.discard)
    assert hasattr(consumer, "_waiting_for_ack")
    assert faust_private.committed_offset(consumer, ("t", 0)) is None


def test_a_message_left_unacknowledged_is_marked_and_taken_out(app):
    class Message:
        acked = False

    message = Message()
    consumer = app.consumer
    consumer._unacked_messages.add(message)
    faust_private.leave_unacked(consumer, message)
    assert message.acked and message not in consumer._unacked_messages


def test_the_producer_can_be_told_to_send_now():
    assert "_message_accumulator" in inspect.getsource(AIOKafkaProducer.__init__)
    assert callable(MessageAccumulator.flush_for_commit)


def test_the_current_event_is_faust_s_context_variable():
    from faust.streams import _current_event

    assert isinstance(_current_event, ContextVar)

    class Event:
        pass

    event = Event()
    token = faust_private.set_current_event(event)
    try:
        assert _current_event.get()() is event
    finally:
        faust_private.reset_current_event(token)


def test_stores_keep_their_partitions_where_the_tables_read_them(app):
    table = app.Table("probe", default=None)
    assert not faust_private.is_rocksdb(table.data)
    assert faust_private.memory_partitions(table.data) == {}
    assert hasattr(table, "_on_changelog_event")
    assert callable(rocksdb.Store._db_for_partition)
    assert callable(rocksdb.Store._encode_key)
