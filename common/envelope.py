"""The CloudEvents 1.0 envelope (structured JSON mode) every topic of the system carries.

Upstream systems publish these on the `commerce.*` topics (SPEC §3); our services emit
them on their own topics with ids derived from the cause, so that a replay or a
redelivery produces the very same event and every consumer can dedupe by `id`.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

CONTENT_TYPE = "application/cloudevents+json"
CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())

_ID_NAMESPACE = uuid.UUID("6f1c2a52-41a3-4c4c-9c1e-6a8e2b7f0d11")


class InvalidEvent(ValueError):
    """Raised when bytes are not a usable event; `reason` is readable by an operator."""

    def __init__(self, reason: str, *, code: str = "invalid_event") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event. Unknown extension attributes are kept (e.g. traceparent)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = Field(pattern=r"^1\.0$")
    id: str = Field(min_length=1, max_length=256)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime
    subject: str | None = None
    datacontenttype: str | None = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> CloudEvent:
        """Parse structured-mode bytes; raises InvalidEvent with a precise reason."""
        if raw is None or raw == b"":
            raise InvalidEvent("empty message value (tombstone or missing payload)", code="empty")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"value is not JSON: {exc}", code="not_json") from exc
        if not isinstance(doc, dict):
            raise InvalidEvent("value is JSON but not an object", code="not_object")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise InvalidEvent(
                f"not a CloudEvents 1.0 envelope: {describe_validation_error(exc)}",
                code="bad_envelope",
            ) from exc


def describe_validation_error(exc: ValidationError, limit: int = 3) -> str:
    """One line naming the offending fields, without echoing their (possibly personal) values."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def derived_id(*parts: object) -> str:
    """A stable id from the parts of a cause: the same cause always gives the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def short_hash(*parts: object, length: int = 12) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:length]


def new_event(
    *,
    type: str,
    source: str,
    subject: str | None,
    data: dict[str, Any],
    time: datetime,
    id: str,
    **extensions: str,
) -> CloudEvent:
    return CloudEvent(
        specversion="1.0",
        id=id,
        source=source,
        type=type,
        time=time,
        subject=subject,
        datacontenttype="application/json",
        data=data,
        **extensions,
    )
