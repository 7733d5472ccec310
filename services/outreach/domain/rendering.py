"""Rendering message templates: Jinja2 in a sandbox, strict about undefined variables.

Two environments: HTML (autoescaped) for email bodies, plain (not escaped) for subjects,
text parts and SMS/WhatsApp. Both are `ImmutableSandboxedEnvironment` with
`StrictUndefined`; filters format dates, times and money in the customer's locale and
time zone (Babel, zoneinfo). A failure is a `RenderError` naming what went wrong and
where; no partial output ever leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.outreach.domain.sms import Segments, count


class RenderError(Exception):
    def __init__(self, reason: str, *, part: str = "", line: int | None = None) -> None:
        where = f"{part}" + (f" line {line}" if line else "")
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.part = part
        self.line = line


@dataclass(frozen=True)
class TemplateSource:
    message_kind: str
    channel: str  # email | sms | whatsapp
    locale: str
    version: int
    subject: str | None
    html: str | None
    text: str


@dataclass(frozen=True)
class RenderedMessage:
    subject: str | None
    html: str | None
    text: str
    segments: Segments | None = None


def _locale(tag: str) -> Locale:
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _moment(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a date/time, got {type(value).__name__}")
    return value


def _filters(locale_tag: str, tz_name: str) -> dict[str, Any]:
    loc, tz = _locale(locale_tag), _zone(tz_name)

    def date(value: Any, fmt: str = "full") -> str:
        return format_date(_moment(value).astimezone(tz).date(), format=fmt, locale=loc)

    def datetime_(value: Any, fmt: str = "medium") -> str:
        return format_datetime(_moment(value), format=fmt, tzinfo=tz, locale=loc)

    def time_(value: Any, fmt: str = "short") -> str:
        return format_time(_moment(value), format=fmt, tzinfo=tz, locale=loc)

    def money(value: Any, currency: str) -> str:
        try:
            amount = Decimal(str(value))
        except InvalidOperation as exc:
            raise TypeError(f"not an amount: {value!r}") from exc
        return format_currency(amount, currency, locale=loc)

    return {"date": date, "datetime": datetime_, "time": time_, "money": money}


def _environment(html: bool, locale_tag: str, tz_name: str) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined,
        autoescape=html,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(_filters(locale_tag, tz_name))
    return env


def render_part(
    source: str, context: dict[str, Any], *, html: bool, locale: str, timezone: str, part: str
) -> str:
    env = _environment(html, locale, timezone)
    try:
        return env.from_string(source).render(**context).strip()
    except TemplateSyntaxError as exc:
        raise RenderError(f"syntax error: {exc.message}", part=part, line=exc.lineno) from None
    except UndefinedError as exc:
        raise RenderError(f"unknown variable: {exc.message}", part=part) from None
    except SecurityError as exc:
        raise RenderError(f"not allowed in a template: {exc}", part=part) from None
    except Exception as exc:  # any other failure of template code is the template's
        raise RenderError(f"{type(exc).__name__}: {exc}", part=part) from None


def render(
    template: TemplateSource, context: dict[str, Any], *, locale: str, timezone: str
) -> RenderedMessage:
    if template.channel == "email":
        subject = render_part(
            template.subject or "",
            context,
            html=False,
            locale=locale,
            timezone=timezone,
            part="subject",
        )
        if not subject:
            raise RenderError("the subject rendered empty", part="subject")
        html = render_part(
            template.html or "", context, html=True, locale=locale, timezone=timezone, part="html"
        )
        text = render_part(
            template.text, context, html=False, locale=locale, timezone=timezone, part="text"
        )
        return RenderedMessage(" ".join(subject.split()), html, text)
    text = render_part(
        template.text, context, html=False, locale=locale, timezone=timezone, part="text"
    )
    if not text:
        raise RenderError("the message rendered empty", part="text")
    return RenderedMessage(None, None, text, count(text))


def locale_chain(locale: str) -> list[str]:
    """de-AT → de-AT, de, en (the fallback order of SPEC §6)."""
    tag = locale.replace("_", "-")
    chain = [tag]
    base = tag.split("-")[0]
    if base not in chain:
        chain.append(base)
    if "en" not in chain:
        chain.append("en")
    return chain
