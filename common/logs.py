"""JSON logs for every service, with personal data and secrets kept out.

Log lines carry ids (event, incident, request, decision, customer; trace and span
when tracing is on, so a log line leads to its trace) — never names,
addresses, phone numbers, email addresses, message bodies or credentials. The
redaction processor is the safety net for a careless `log.info(..., email=...)`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import orjson
import structlog
from opentelemetry import trace

SENSITIVE_KEYS = frozenset(
    {
        "email",
        "phone",
        "address",
        "to",
        "from_",
        "first_name",
        "last_name",
        "name",
        "body",
        "html",
        "text",
        "subject",
        "password",
        "token",
        "auth_token",
        "api_key",
        "authorization",
        "secret",
    }
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"\+\d{8,15}")
# SQLAlchemy appends a statement's bound values to its errors ("[parameters: (...)]");
# the engines hide them, and this is the net for any other driver's text.
_SQL_PARAMETERS = re.compile(r"\[parameters: .*?\](?=\n|$|\s*\(Background)", re.DOTALL)


def mask_address(address: str) -> str:
    """An address as operators may see it: enough to tell two apart, not to write to
    (a***@example.com, +49***78)."""
    if "@" in address:
        name, _, domain = address.partition("@")
        return f"{name[:1]}***@{domain}"
    return f"{address[:3]}***{address[-2:]}"


def redact(value: str) -> str:
    # An e-mail address has an @ and a phone number (E.164) a +: most values have
    # neither, and are returned without running the patterns.
    if "@" in value:
        value = _EMAIL.sub("[email]", value)
    if "+" in value:
        value = _PHONE.sub("[phone]", value)
    if "[parameters:" in value:
        value = _SQL_PARAMETERS.sub("[parameters: redacted]", value)
    return value


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(event_dict[key], str) and key != "event":
            event_dict[key] = redact(event_dict[key])
    if isinstance(event_dict.get("event"), str):
        event_dict["event"] = redact(event_dict["event"])
    return event_dict


_handling: ContextVar[tuple[str, str] | None] = ContextVar("outreach_handling", default=None)


class handling:
    """Names the event being handled in every log line written meanwhile (a plain
    ContextVar: structlog's bound_contextvars costs ~15 µs per event, this ~1)."""

    __slots__ = ("_ids", "_token")

    def __init__(self, event_id: str, event_type: str) -> None:
        self._ids = (event_id, event_type)

    def __enter__(self) -> None:
        self._token = _handling.set(self._ids)

    def __exit__(self, *_exc: object) -> None:
        _handling.reset(self._token)


def _event_and_trace_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """event_id/event_type of the event being handled; trace_id and span_id of the
    current span (only inside one: tracing is on)."""
    ids = _handling.get()
    if ids is not None:
        event_dict.setdefault("event_id", ids[0])
        event_dict.setdefault("event_type", ids[1])
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


class _Stdout:
    """Whatever `sys.stdout` (or `sys.stderr`) is when a line is written, not when
    logging was set up: a harness that swaps and closes stdout (pytest's capture) must
    not break later logs."""

    def __init__(self, name: str = "stdout") -> None:
        self.name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self.name).write(text))

    def flush(self) -> None:
        getattr(sys, self.name).flush()


def _json_line(event_dict: Any, **_: Any) -> str:
    # orjson, several times faster than json.dumps; what it cannot encode is written as
    # its repr rather than lost.
    return orjson.dumps(event_dict, default=repr).decode()


def configure_logging(
    service: str, level: str = "INFO", fmt: str = "json", *, stream: str = "stdout"
) -> None:
    """Logs as one JSON document a line (or for people: `fmt` console) on `stream`
    (stdout; a command whose stdout is its result logs on stderr)."""
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _event_and_trace_processor,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Redaction comes after the exception is formatted: its text and traceback are a
    # value like any other (an address in an error message, a row's values in SQL).
    last = [structlog.processors.format_exc_info, _redact_processor, renderer]
    structlog.configure(
        processors=[*shared, *last],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_Stdout(stream)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries (faust, aiokafka, grpc) log through stdlib logging: render them as JSON too.
    handler = logging.StreamHandler(_Stdout(stream))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelName(level.upper()), logging.INFO))
    for noisy in ("aiokafka", "kafka", "faust", "mode", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
