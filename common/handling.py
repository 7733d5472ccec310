"""One contract for the services' pure handlers: an input (and the time) in, an `Outcome`
out — the state to keep, the records to publish, the inputs to dead-letter, the next
moment time alone could change something. The handler does no I/O; its runner reads
the state before and writes what the outcome says after (orders_watcher's and
risk_detector's runtimes, the benchmarks' bare stages).

Which handler takes an input is a `Dispatch` table from event type to handler: an
event type not in it is the input's fault (a dead letter, `unknown_type`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from common.envelope import InvalidEvent
from common.kafka import Outgoing
from common.records import InputMessage

S = TypeVar("S")
H = TypeVar("H")


@dataclass
class Rejected:
    """An input given up on: the record as it came, why, and the reason code."""

    message: InputMessage
    reason: str
    code: str


@dataclass
class Outcome(Generic[S]):
    """What one handler call decided. `state`: what to keep (None: forget it);
    `deadline`: the next moment time alone could change it (None: none); `duplicate`:
    the input was handled before and changed nothing."""

    state: S | None
    records: list[Outgoing] = field(default_factory=list)
    dead_letters: list[Rejected] = field(default_factory=list)
    duplicate: bool = False
    deadline: datetime | None = None


class Dispatch(Generic[H]):
    """Event type → the handler that takes it."""

    def __init__(self, service: str, table: Mapping[str, H]) -> None:
        self.service = service
        self.table = dict(table)

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self.table)

    def __call__(self, event_type: str, topic: str | None = None) -> H:
        handler = self.table.get(event_type)
        if handler is None:
            where = f" on {topic}" if topic else ""
            raise InvalidEvent(
                f"{self.service} does not handle {event_type!r}{where}", code="unknown_type"
            )
        return handler


__all__ = ["Dispatch", "Outcome", "Rejected"]
