"""The CloudEvents 1.0 envelope (structured JSON mode) every topic of the system carries.

Upstream systems publish these on the `commerce.*` topics (SPEC §3); our services emit
them on their own topics with ids derived from the cause, so that a replay or a
redelivery produces the very same event and every consumer can dedupe by `id`.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from pydantic import ValidationError

CONTENT_TYPE = "application/cloudevents+json"
CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())

_ID_NAMESPACE = uuid.UUID("6f1c2a52-41a3-4c4c-9c1e-6a8e2b7f0d11")


class InvalidEvent(ValueError):
    """Raised when bytes are not a usable event; `reason` is readable by an operator."""

    def __init__(self, reason: str, *, code: str = "invalid_event") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


#: An aware date and time (RFC 3339 with an offset), as msgspec reads it (with a
#: standard-library tzinfo): the envelope's `time`, and the input payloads' times.
Instant = Annotated[datetime, msgspec.Meta(tz=True)]


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A CloudEvents 1.0 event. Of the extension attributes, the distributed-tracing ones
    (traceparent, tracestate) are kept; others are ignored.

    A msgspec struct: every record of every service is parsed into one and every output
    written from one, and msgspec does both about ten times faster than a pydantic
    model (docs/performance.md). Attributes without a value are left out when written."""

    specversion: Annotated[str, msgspec.Meta(pattern=r"^1\.0$")]
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    source: Annotated[str, msgspec.Meta(min_length=1)]
    type: Annotated[str, msgspec.Meta(min_length=1)]
    time: Instant
    subject: str | None = None
    datacontenttype: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    traceparent: str | None = None
    tracestate: str | None = None

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> CloudEvent:
        """Parse structured-mode bytes; raises InvalidEvent with a precise reason."""
        if raw is None or raw == b"":
            raise InvalidEvent("empty message value (tombstone or missing payload)", code="empty")
        try:
            return _DECODER.decode(raw)
        except msgspec.ValidationError as exc:
            # msgspec validates while it parses: bytes that are not JSON at all may fail
            # on a field first.
            try:
                msgspec.json.decode(raw)
            except msgspec.DecodeError as not_json:
                raise InvalidEvent(f"value is not JSON: {not_json}", code="not_json") from exc
            reason = str(exc)
            if " - at `$" not in reason and reason.startswith("Expected `object`"):
                raise InvalidEvent("value is JSON but not an object", code="not_object") from exc
            raise InvalidEvent(
                f"not a CloudEvents 1.0 envelope: {_describe_msgspec_error(reason)}",
                code="bad_envelope",
            ) from exc
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"value is not JSON: {exc}", code="not_json") from exc

    def with_fields(self, **fields: Any) -> CloudEvent:
        """A copy with some attributes changed (e.g. the trace context)."""
        return msgspec.structs.replace(self, **fields)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(CloudEvent)


def _describe_msgspec_error(reason: str) -> str:
    """msgspec's "Expected `str`, got `int` - at `$.id`" as "id: Expected `str`, got
    `int`" (the field first, as for pydantic's errors; no value is echoed)."""
    message, _, where = reason.partition(" - at `$")
    field = where.rstrip("`").lstrip(".")
    return f"{field}: {message}" if field else message


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
