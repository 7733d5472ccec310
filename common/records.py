"""An input record as every handler sees it, whichever consumer read it (faust's, a plain
aiokafka loop, a test): what the Kafka plumbing (common/kafka.py) and the tracing
(common/tracing.py) share, so that neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class InputMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    timestamp_ms: int | None = None


__all__ = ["Headers", "InputMessage"]
