"""Rendering message templates: Jinja2 in a sandbox, strict about undefined variables.

Two environments: HTML (autoescaped) for email bodies, plain (not escaped) for subjects,
text parts and SMS/WhatsApp. Both are `ImmutableSandboxedEnvironment` with
`StrictUndefined`; filters format dates, times, durations and money in the customer's
locale and time zone (Babel, zoneinfo) and touch no I/O. A failure is a `RenderError`
naming what went wrong and where; no partial output ever leaves this module.

Compiled templates are cached by source text, and the locale/time zone of the message
being rendered reach the filters through a context variable, so one compiled template
serves every customer.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from types import BuiltinMethodType, TracebackType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_currency, format_decimal, format_percent
from babel.units import format_unit
from jinja2 import (
    StrictUndefined,
    Template,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
    pass_context,
    pass_eval_context,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from common.schemas import IncidentKind
from services.outreach.domain.sms import Segments, count

CHANNELS = ("email", "sms", "whatsapp")
# A message about an incident has the incident's kind; risk_detector adds its own.
MESSAGE_KINDS = (
    *(kind.value for kind in IncidentKind),
    "post_incident_checkin",
    "merchant_fault_return",
    "serial_returns",
    "churn_risk",
    "incident_corrected",  # a correction of a message an incident's closing contradicts
)


def metric_kind(message_kind: str) -> str:
    """A message kind as a metric label: a request's kind is input, and an unknown one
    is counted as `other` so that no producer can grow a metric's series without end."""
    return message_kind if message_kind in MESSAGE_KINDS else "other"


# Check-ins that may carry a goodwill offer are marketing (SPEC §6): their emails must
# carry an unsubscribe link.
MARKETING_KINDS = frozenset({"serial_returns", "churn_risk"})
SUBJECT_MAX = 78  # RFC 5322's recommended line length; longer subjects get cut in inboxes
SMS_MAX_SEGMENTS = 3
PROVIDER_BODY_MAX = 1600  # Twilio rejects longer bodies (error 21617)

# The template context contract (docs/templates.md): every variable and field the
# pipeline passes. validate_template flags anything else before it reaches a customer.
ITEM_FIELDS = frozenset({"sku", "name", "quantity", "unit_price"})
CONTEXT_FIELDS: dict[str, frozenset[str] | None] = {
    "customer": frozenset({"first_name", "locale", "timezone"}),
    "order": frozenset(
        {
            "order_id",
            "currency",
            "total",
            "items",
            "shipping_method",
            "placed_at",
            "promised_delivery_by",
            "carrier",
            "tracking_number",
            "tracking_url",
            "estimated_delivery_at",
        }
    ),
    "incident": frozenset(
        {
            "kind",
            "severity",
            "explanation",
            "status",
            "substatus",
            "detected_at",
            "delay_days",
        }
    ),
    "offer": frozenset({"code", "kind", "value", "currency", "expires_at"}),
    "links": frozenset({"unsubscribe_url", "support_url", "tracking_url"}),
    "shop": frozenset({"name", "support_email", "support_phone"}),
    "survey": frozenset({"links"}),  # None unless the message asks how we did
    # None unless the message corrects an earlier one (domain/corrections.py): the kind of
    # the incident we wrote about, how it closed (delivered, retracted), when we wrote.
    "correction": frozenset({"kind", "resolution", "told_at"}),
    # The customer's other incidents this message names (domain/consolidation.py): a
    # list of {order_id, kind, summary}, empty when it is about one.
    "also": None,
    # None unless an operator wrote a note for the storm the message's incident belongs
    # to, in the customer's language (domain/storms.py): {note}.
    "storm": frozenset({"note"}),
    "intent": None,
    "message_kind": None,
    "reasons": None,
}

ErrorKind = Literal["syntax", "undefined", "sandbox", "value", "empty"]


class RenderError(Exception):
    """A template could not be rendered. `reason` is written for the marketer who wrote
    it; `part` is subject/html/text, `line` the template line when known."""

    def __init__(
        self,
        reason: str,
        *,
        part: str = "",
        line: int | None = None,
        kind: ErrorKind = "value",
    ) -> None:
        where = part + (f" line {line}" if line else "")
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.part = part
        self.line = line
        self.kind = kind


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


@dataclass(frozen=True)
class Problem:
    """One finding of `validate_template`: errors block publishing, warnings and notes
    are shown to the marketer."""

    severity: Literal["error", "warning", "info"]
    code: str  # syntax | undefined | unknown_variable | sandbox | render | empty | ...
    message: str
    part: str = ""
    line: int | None = None
    sample: str | None = None


# --- locale, time zone and the filters ----------------------------------------------


@lru_cache(maxsize=256)
def parse_locale(tag: str) -> Locale:
    """`de-AT` → de_AT; an unknown region falls back to its language, then English."""
    clean = (tag or "en").replace("_", "-").strip("-")
    for candidate in (clean, clean.split("-")[0], "en"):
        try:
            return Locale.parse(candidate, sep="-")
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return Locale.parse("en")


@lru_cache(maxsize=256)
def parse_zone(name: str) -> ZoneInfo:
    """An unknown time zone formats in UTC rather than failing the message."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class _Formatting:
    locale: Locale
    zone: ZoneInfo


_FORMATTING: ContextVar[_Formatting] = ContextVar("outreach_template_formatting")


@contextmanager
def _formatting(locale: str, timezone: str) -> Iterator[None]:
    token = _FORMATTING.set(_Formatting(parse_locale(locale), parse_zone(timezone)))
    try:
        yield
    finally:
        _FORMATTING.reset(token)


def _current() -> _Formatting:
    try:
        return _FORMATTING.get()
    except LookupError:  # rendering outside render(): English, UTC
        return _Formatting(parse_locale("en"), parse_zone("UTC"))


def _moment(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise TypeError(f"not a date/time: {value!r}") from None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a date/time, got {_describe(value)}")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _describe(value: Any) -> str:
    return "nothing (None)" if value is None else type(value).__name__


def _amount(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise TypeError(f"not an amount: {value!r}") from None


def f_date(value: Any, format: str = "full") -> str:
    """`{{ order.estimated_delivery_at | date }}` → Thursday, 12 March 2026 (in the
    customer's time zone: 23:30 UTC may be tomorrow in Berlin)."""
    fmt = _current()
    if isinstance(value, date) and not isinstance(value, datetime):
        return format_date(value, format=format, locale=fmt.locale)
    day = _moment(value).astimezone(fmt.zone).date()
    return format_date(day, format=format, locale=fmt.locale)


def f_datetime(value: Any, format: str = "medium") -> str:
    fmt = _current()
    return format_datetime(_moment(value), format=format, tzinfo=fmt.zone, locale=fmt.locale)


def f_time(value: Any, format: str = "short") -> str:
    fmt = _current()
    return format_time(_moment(value), format=format, tzinfo=fmt.zone, locale=fmt.locale)


def f_money(value: Any, currency: Any) -> str:
    """`{{ order.total | money(order.currency) }}` → €89.90 / 89,90 €."""
    if not isinstance(currency, str) or not currency:
        raise TypeError(f"money needs a currency code, got {_describe(currency)}")
    return format_currency(_amount(value), currency, locale=_current().locale)


def f_number(value: Any) -> str:
    return format_decimal(_amount(value), locale=_current().locale)


def f_days(value: Any) -> str:
    """`{{ incident.delay_days | days }}` → 2 days / 2 Tage / 2 jours."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise TypeError(f"days needs a number, got {_describe(value)}")
    return format_unit(_amount(value), "duration-day", length="long", locale=_current().locale)


def f_discount(offer: Any) -> str:
    """`{{ offer | discount }}` → 15% / 15 % / €10.00 / 10,00 €, by the offer's kind."""
    if not isinstance(offer, Mapping):
        raise TypeError(f"discount needs an offer, got {_describe(offer)}")
    value = _amount(offer.get("value"))
    if offer.get("kind") == "percent":
        return format_percent(value / 100, locale=_current().locale)
    return f_money(value, offer.get("currency"))


# `{{ offer | remedy }}`, the short form of a remedy for an SMS, by the customer's language
# (English when the language has none): {d} the discount, {m} the amount, {c} the code.
REMEDY_PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "discount": "{d} off: {c}",
        "free_shipping": "Free shipping on your next order: {c}",
        "expedited_reship": "We're sending a replacement by express.",
        "credit": "{m} credit added to your account.",
    },
    "de": {
        "discount": "{d} Rabatt: {c}",
        "free_shipping": "Versandkostenfrei bei Ihrer nächsten Bestellung: {c}",
        "expedited_reship": "Wir schicken Ihnen Ersatz per Express.",
        "credit": "{m} Guthaben auf Ihrem Kundenkonto.",
    },
    "fr": {
        "discount": "{d} de réduction : {c}",
        "free_shipping": "Livraison offerte sur votre prochaine commande : {c}",
        "expedited_reship": "Nous vous envoyons un remplacement en express.",
        "credit": "{m} de crédit ajoutés à votre compte.",
    },
}


def f_remedy(offer: Any) -> str:
    """`{{ offer | remedy }}` → 15% off: SORRY-7KQ2-MX9P / We're sending a replacement by
    express. / €15.00 credit added to your account. (docs/remedies.md)"""
    if not isinstance(offer, Mapping):
        raise TypeError(f"remedy needs an offer, got {_describe(offer)}")
    phrases = REMEDY_PHRASES.get(_current().locale.language, REMEDY_PHRASES["en"])
    kind = str(offer.get("kind"))
    if kind in ("percent", "amount"):
        return phrases["discount"].format(d=f_discount(offer), c=offer.get("code"))
    if kind == "credit":
        return phrases["credit"].format(m=f_money(offer.get("value"), offer.get("currency")))
    if kind not in phrases:
        raise TypeError(f"remedy: unknown kind {kind!r}")
    return phrases[kind].format(c=offer.get("code"))


SAFE_URL = re.compile(r"^(https?://|mailto:|tel:)", re.IGNORECASE)


def f_safe_url(value: Any) -> str:
    """Only http(s), mailto and tel links reach an href: tracking URLs come from carrier
    events, which are untrusted input."""
    text = "" if value is None else str(value).strip()
    return text if SAFE_URL.match(text) else "#"


def _per_message(fn: Callable[..., str]) -> Callable[..., str]:
    """Mark a filter as depending on the message being rendered: Jinja would otherwise
    fold `{{ "2026-03-12" | date }}` at compile time, in whatever locale was current
    then, into a template that is cached and shared by every customer."""

    def filter_(_context: Any, *args: Any, **kwargs: Any) -> str:
        return fn(*args, **kwargs)

    filter_.__doc__ = fn.__doc__
    return pass_context(filter_)


FILTERS: dict[str, Any] = {
    "date": _per_message(f_date),
    "datetime": _per_message(f_datetime),
    "time": _per_message(f_time),
    "money": _per_message(f_money),
    "number": _per_message(f_number),
    "days": _per_message(f_days),
    "discount": _per_message(f_discount),
    "remedy": _per_message(f_remedy),
    "safe_url": f_safe_url,
}


# Bounds on what one template may build while it renders (docs/templates.md, "Limits"):
# a template is code a marketer writes, and one that runs away must fail with a reason
# rather than take a worker's memory or time. The render pool (adapters/render_pool.py)
# adds the hard limits of a process: wall time and address space.
MAX_REPEAT = 100_000  # the largest string/list a template may build with *
MAX_STRING = 100_000  # the longest string a template may build (~, +, joins, formats)
MAX_WIDTH = 1_000  # widths and paddings: format specs, center, ljust, indent, ...
MAX_OUTPUT = 200_000  # the longest rendered part
MAX_LOOP_ITERATIONS = 20_000  # all the loops of one part together
LOOP_GUARD = "__outreach_loop_guard"
_PRINTF_WIDTHS = re.compile(r"%[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")
_SPEC_NUMBERS = re.compile(r"\d+")
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill"})
_LOOP_BUDGET: ContextVar[list[int] | None] = ContextVar("outreach_loop_budget", default=None)


def _too_large(what: str) -> SecurityError:
    return SecurityError(f"{what} would be too large (at most {MAX_STRING:,} characters)")


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, str | list | tuple) and len(value) > MAX_STRING:
        raise _too_large(what)
    return value


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, str):
        width = len(width)
    if isinstance(width, int) and not isinstance(width, bool) and abs(width) > MAX_WIDTH:
        raise SecurityError(f"{what} {width:,} is too wide (at most {MAX_WIDTH:,})")


def _check_printf(template: str) -> None:
    """`'%1000000000s' % x`: a width or precision beyond MAX_WIDTH, or one taken from
    the arguments (`*`), is refused before anything is formatted."""
    for width, precision in _PRINTF_WIDTHS.findall(template):
        for number in (width, precision):
            if number == "*":
                raise SecurityError("a width taken from the arguments (*) is not allowed")
            if number:
                _check_width(int(number), "a format width")


def _check_format_spec(template: str) -> None:
    """`'{:>1000000000}'.format(x)`: every number in a replacement field's spec (width,
    precision) is bounded; nested fields (`{:{w}}`) are refused."""
    from string import Formatter

    for _literal, field, spec, _conversion in Formatter().parse(template):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise SecurityError("a format spec taken from the arguments is not allowed")
        for number in _SPEC_NUMBERS.findall(spec):
            _check_width(int(number), "a format width")


def _guarded_loop(iterable: Any) -> Iterator[Any]:
    """Every `{% for %}` of a template iterates through this: the loops of one render
    together may take MAX_LOOP_ITERATIONS steps."""
    budget = _LOOP_BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise SecurityError(
                    f"the loops ran more than {MAX_LOOP_ITERATIONS:,} times in one message"
                )
        yield item


class _BoundedCodeGenerator(CodeGenerator):
    """Concatenation (`a ~ b`, and Jinja's own joins of template data) is checked for
    size: doubling a string in a loop ends at MAX_STRING, not at the memory's end."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, and no memory or CPU bombs: repetition and exponents,
    concatenation and +, printf and str.format widths, paddings, replace and join are
    bounded (a `SecurityError` naming the limit), and so are loop iterations."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def bounded(self, value: Any) -> Any:
        return _check_size(value, "the joined text")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sized = (str, list, tuple)
        if operator == "*" and (isinstance(left, sized) or isinstance(right, sized)):
            seq, times = (left, right) if isinstance(left, sized) else (right, left)
            if isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                raise SecurityError("the result of * would be too large")
        if operator == "**" and (
            not isinstance(right, int | float) or abs(right) > 64 or abs(left) > 10**6
        ):
            raise SecurityError("the result of ** would be too large")
        if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            if len(left) + len(right) > MAX_STRING:
                raise _too_large("the result of +")
        if operator == "%" and isinstance(left, str):
            _check_printf(left)
        return _check_size(super().call_binop(context, operator, left, right), "the result")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        if value.__name__ == "format":
            _check_format_spec(value.__self__)

        def bounded(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format_map":
                _check_format_spec(value.__self__)
            return str(_check_size(wrapper(*args, **kwargs), "the formatted text"))

        return bounded

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and isinstance(__obj, BuiltinMethodType):
            _check_str_method(owner, __obj.__name__, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "the result")


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if name in _PADDING_METHODS:
        _check_width(args[0] if args else kwargs.get("width"), f"{name}()")
    elif name == "expandtabs" and len(text) * int((args or [8])[0]) > MAX_STRING:
        raise _too_large("expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, args[0], args[1], args[2] if len(args) > 2 else -1)
    elif name == "join" and args:
        parts = list(args[0])
        if sum(len(str(p)) for p in parts) + len(text) * len(parts) > MAX_STRING:
            raise _too_large("join()")


def _check_replace(text: Any, old: Any, new: Any, count: Any) -> None:
    text, old, new = str(text), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * max(0, len(new) - len(old)) > MAX_STRING:
        raise _too_large("replace()")


def _bounded_filters(env: ImmutableSandboxedEnvironment) -> dict[str, Any]:
    """Jinja's filters that can grow text, bounded like the str methods."""
    center, indent, replace = env.filters["center"], env.filters["indent"], env.filters["replace"]
    fmt, join = env.filters["format"], env.filters["join"]

    def f_center(value: Any, width: Any = 80) -> Any:
        _check_width(width, "center")
        return center(value, width)

    def f_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        _check_width(width, "indent")
        return _check_size(indent(value, width, *args, **kwargs), "the indented text")

    def f_format(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_printf(str(value))
        return _check_size(fmt(value, *args, **kwargs), "the formatted text")

    @pass_eval_context
    def f_replace(ctx: Any, value: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_replace(value, old, new, count if count is not None else -1)
        return replace(ctx, value, old, new, count)

    @pass_eval_context
    def f_join(ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        parts = list(value)
        if sum(len(str(p)) for p in parts) + len(d) * len(parts) > MAX_STRING:
            raise _too_large("join")
        return join(ctx, parts, d, attribute)

    return {
        "center": f_center,
        "indent": f_indent,
        "format": f_format,
        "replace": f_replace,
        "join": f_join,
    }


class _Undefined(StrictUndefined):
    """Strict in every use, its repr too: a list holding a missing or forbidden value
    (`[c]|map(attribute='__class__')|list`) is an error, never the text '[Undefined]'."""

    __slots__ = ()
    __repr__ = StrictUndefined._fail_with_undefined_error


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = _Sandbox(
        undefined=_Undefined,
        autoescape=autoescape,
        trim_blocks=False,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.filters.update(_bounded_filters(env))
    env.filters.update(FILTERS)
    env.globals.pop("lipsum", None)  # lipsum(n=10**6) writes paragraphs without end
    env.globals[LOOP_GUARD] = _guarded_loop
    return env


HTML_ENV = _environment(autoescape=True)
TEXT_ENV = _environment(autoescape=False)


def _guard_loops(ast: nodes.Template) -> nodes.Template:
    """Every `{% for x in ITER %}` iterates `LOOP_GUARD(ITER)` instead."""
    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Call(
            nodes.Name(LOOP_GUARD, "load", lineno=loop.lineno),
            [loop.iter],
            [],
            None,
            None,
            lineno=loop.lineno,
        )
    return ast


@lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> Template:
    env = HTML_ENV if html else TEXT_ENV
    ast = _guard_loops(env.parse(source))
    ast.set_environment(env)
    return env.from_string(ast)


# --- rendering ------------------------------------------------------------------------


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line of a runtime error: Jinja rewrites tracebacks so that frames of
    template code carry the template's line numbers under the file name <template>."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_ATTR_MISSING = re.compile(r"^'(.+?)' has no attribute '(.+)'$")


def _undefined_reason(message: str) -> str:
    found = _ATTR_MISSING.match(message)
    if found:
        owner, name = found.groups()
        if owner == "None":
            return f"'{name}' was asked of a value that is empty here (guard it with {{% if %}})"
        return f"unknown variable: '{name}' is not a field of this {owner.split()[0]}"
    undefined = re.match(r"^'(.+?)' is undefined$", message)
    if undefined:
        return f"unknown variable: '{undefined.group(1)}'"
    return f"unknown variable: {message}"


def render_part(
    source: str,
    context: Mapping[str, Any],
    *,
    html: bool,
    locale: str,
    timezone: str,
    part: str,
) -> str:
    """One part (subject, html, text) rendered, or RenderError."""
    template = _compiled(source, html, part)
    budget = _LOOP_BUDGET.set([MAX_LOOP_ITERATIONS])
    try:
        with _formatting(locale, timezone):
            return _bounded_output(template, context)
    except SecurityError as exc:
        raise RenderError(
            f"not allowed in a template: {exc}",
            part=part,
            line=_template_line(exc.__traceback__),
            kind="sandbox",
        ) from None
    except UndefinedError as exc:
        raise RenderError(
            _undefined_reason(exc.message or str(exc)),
            part=part,
            line=_template_line(exc.__traceback__),
            kind="undefined",
        ) from None
    except TemplateSyntaxError as exc:  # e.g. an unknown filter, found at compile time
        raise _syntax_error(exc, part) from None
    except RecursionError:
        raise RenderError(
            "the template calls itself without end (a macro that recurses)",
            part=part,
            kind="sandbox",
        ) from None
    except MemoryError:
        raise RenderError("the template needs too much memory", part=part, kind="sandbox") from None
    except Exception as exc:  # any other failure of template code is the template's
        raise RenderError(
            f"{type(exc).__name__}: {exc}",
            part=part,
            line=_template_line(exc.__traceback__),
            kind="value",
        ) from None
    finally:
        _LOOP_BUDGET.reset(budget)


def _syntax_error(exc: TemplateSyntaxError, part: str) -> RenderError:
    return RenderError(f"syntax error: {exc.message}", part=part, line=exc.lineno, kind="syntax")


def _compiled(source: str, html: bool, part: str) -> Template:
    try:
        return _compile(source, html)
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc, part) from None
    except RecursionError:
        raise RenderError(
            "the template nests too deeply (brackets or blocks within each other)",
            part=part,
            kind="syntax",
        ) from None


def _bounded_output(template: Template, context: Mapping[str, Any]) -> str:
    """The rendered text, read piece by piece and stopped at MAX_OUTPUT."""
    pieces: list[str] = []
    size = 0
    for piece in template.generate(dict(context)):
        size += len(piece)
        if size > MAX_OUTPUT:
            raise SecurityError(f"the message would be longer than {MAX_OUTPUT:,} characters")
        pieces.append(piece)
    return "".join(pieces).strip()


_EMPTY_PARAGRAPH = re.compile(r"<p\b[^>]*>\s*</p>\s*", re.IGNORECASE)
_BLANK_RUNS = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")
_TYPOGRAPHIC_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " "})


def _tidy_html(html: str) -> str:
    """Conditional paragraphs that rendered empty leave no empty <p> behind."""
    return _EMPTY_PARAGRAPH.sub("", html)


def _tidy_text(text: str) -> str:
    lines = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANK_RUNS.sub("\n\n", lines).strip()


def render(
    template: TemplateSource,
    context: Mapping[str, Any],
    *,
    locale: str,
    timezone: str,
) -> RenderedMessage:
    """The message for one customer, or RenderError (never partial output).

    Email: subject (one line), HTML (autoescaped) and text. SMS/WhatsApp: text and its
    segments; Babel's non-breaking spaces become plain spaces there, since GSM-7 has
    none and one would make the whole message UCS-2.
    """
    if template.channel not in CHANNELS:
        raise RenderError(f"unknown channel {template.channel!r}", kind="value")
    kw: dict[str, Any] = {"locale": locale, "timezone": timezone}
    if template.channel == "email":
        subject = render_part(template.subject or "", context, html=False, part="subject", **kw)
        subject = " ".join(subject.split())
        if not subject:
            raise RenderError("the subject rendered empty", part="subject", kind="empty")
        html = _tidy_html(render_part(template.html or "", context, html=True, part="html", **kw))
        text = _tidy_text(render_part(template.text, context, html=False, part="text", **kw))
        if not text:
            raise RenderError("the text part rendered empty", part="text", kind="empty")
        return RenderedMessage(subject, html or None, text)
    text = _tidy_text(render_part(template.text, context, html=False, part="text", **kw))
    text = text.translate(_TYPOGRAPHIC_SPACES)
    if not text:
        raise RenderError("the message rendered empty", part="text", kind="empty")
    return RenderedMessage(None, None, text, count(text))


def locale_chain(locale: str) -> list[str]:
    """de-AT → de-AT, de, en (the fallback order of SPEC §6)."""
    tag = (locale or "en").replace("_", "-")
    chain = [tag]
    base = tag.split("-")[0].lower()
    if base not in chain:
        chain.append(base)
    if "en" not in chain:
        chain.append("en")
    return chain


# --- validation (the studio's checks before publishing) -------------------------------


def _parts(source: TemplateSource) -> list[tuple[str, str, bool]]:
    if source.channel == "email":
        return [
            ("subject", source.subject or "", False),
            ("html", source.html or "", True),
            ("text", source.text, False),
        ]
    return [("text", source.text, False)]


def _loop_names(ast: nodes.Template) -> set[str]:
    """Names a template binds itself ({% for x in ... %}, {% set x = ... %})."""
    names: set[str] = set()
    for node in ast.find_all((nodes.For, nodes.Assign, nodes.AssignBlock)):
        if isinstance(node, nodes.For | nodes.Assign | nodes.AssignBlock):
            target = node.target
            names.update(n.name for n in target.find_all(nodes.Name))
            if isinstance(target, nodes.Name):
                names.add(target.name)
    return names


def _unknown_fields(ast: nodes.Template) -> Iterator[tuple[str, str, int]]:
    """`order.trackng_url`-style typos, found without rendering (the branch that uses
    them may not run for any sample)."""
    own = _loop_names(ast)
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            base, name = node.node, node.attr
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            base, name = node.node, node.arg.value
        else:
            continue
        if not isinstance(base, nodes.Name) or base.name in own:
            continue
        fields = CONTEXT_FIELDS.get(base.name)
        if fields is None:
            continue
        if name not in fields:
            yield base.name, name, node.lineno


def _static_problems(part: str, text: str, html: bool) -> tuple[list[Problem], bool]:
    """Syntax and unknown-variable problems; the bool says whether rendering makes sense."""
    env = HTML_ENV if html else TEXT_ENV
    try:
        ast = env.parse(text)
    except TemplateSyntaxError as exc:
        return [Problem("error", "syntax", f"syntax error: {exc.message}", part, exc.lineno)], False
    except RecursionError:
        message = "the template nests too deeply (brackets or blocks within each other)"
        return [Problem("error", "syntax", message, part)], False
    problems: list[Problem] = [
        Problem("error", "syntax", f"unknown filter '{node.name}'", part, node.lineno)
        for node in ast.find_all(nodes.Filter)
        if node.name not in env.filters
    ]
    if problems:
        return problems, False
    try:
        undeclared = meta.find_undeclared_variables(ast)
    except TemplateSyntaxError as exc:  # e.g. an unknown test (`is frobnicated`)
        return [Problem("error", "syntax", exc.message or str(exc), part, exc.lineno)], False
    for name in sorted(undeclared - set(CONTEXT_FIELDS)):
        line = next(
            (n.lineno for n in ast.find_all(nodes.Name) if n.name == name and n.ctx == "load"),
            None,
        )
        problems.append(
            Problem("error", "unknown_variable", f"unknown variable '{name}'", part, line)
        )
    for base, name, line in _unknown_fields(ast):
        problems.append(
            Problem("error", "unknown_variable", f"'{base}' has no field '{name}'", part, line)
        )
    return problems, True


def validate_template(
    source: TemplateSource,
    sample_contexts: Mapping[str, Mapping[str, Any]],
    *,
    timezone: str | None = None,
    marketing: bool | None = None,
) -> list[Problem]:
    """Everything wrong with a template before it is published: syntax errors with their
    line, unknown variables and fields, sandbox violations and render failures against
    each sample case, a missing unsubscribe link in a marketing email, subjects longer
    than 78 characters and SMS longer than 3 segments (warnings), and the characters
    that force an SMS into UCS-2 (a note). An empty list means ready to publish."""
    problems: list[Problem] = []
    renderable = True
    if source.channel not in CHANNELS:
        return [Problem("error", "channel", f"unknown channel {source.channel!r}")]
    for part, text, html in _parts(source):
        found, ok = _static_problems(part, text, html)
        problems.extend(found)
        renderable = renderable and ok
    is_marketing = source.message_kind in MARKETING_KINDS if marketing is None else marketing
    if source.channel == "email" and "unsubscribe_url" not in (source.html or ""):
        problems.append(
            Problem(
                "error" if is_marketing else "warning",
                "unsubscribe_missing",
                "the email has no unsubscribe link ({{ links.unsubscribe_url }})"
                + (": marketing email must carry one" if is_marketing else ""),
                "html",
            )
        )
    if not renderable:
        return problems
    seen: set[tuple[str, str, int | None]] = set()
    for name, context in sample_contexts.items():
        customer = context.get("customer") or {}
        zone = timezone or str(customer.get("timezone") or "UTC")
        try:
            rendered = render(source, context, locale=source.locale, timezone=zone)
        except RenderError as exc:
            key = (exc.part, exc.reason, exc.line)
            if key not in seen:
                seen.add(key)
                code = {"sandbox": "sandbox", "undefined": "undefined", "empty": "empty"}.get(
                    exc.kind, "render"
                )
                problems.append(Problem("error", code, exc.reason, exc.part, exc.line, name))
            continue
        problems.extend(_rendered_problems(source, rendered, context, name, is_marketing))
    return _dedupe(problems)


def _rendered_problems(
    source: TemplateSource,
    rendered: RenderedMessage,
    context: Mapping[str, Any],
    sample: str,
    is_marketing: bool,
) -> list[Problem]:
    """What a message rendered for one sample case would meet at the inbox or handset."""
    if source.channel == "email":
        return _email_problems(rendered, context, sample, is_marketing)
    return _text_problems(source, rendered, sample)


def _email_problems(
    rendered: RenderedMessage, context: Mapping[str, Any], sample: str, is_marketing: bool
) -> list[Problem]:
    problems: list[Problem] = []
    subject = rendered.subject or ""
    if len(subject) > SUBJECT_MAX:
        problems.append(
            Problem(
                "warning",
                "subject_too_long",
                f"subject is {len(subject)} characters; inboxes cut it after about {SUBJECT_MAX}",
                "subject",
                sample=sample,
            )
        )
    url = str((context.get("links") or {}).get("unsubscribe_url") or "")
    html = rendered.html or ""
    if is_marketing and url and url not in html and html_lib.escape(url) not in html:
        problems.append(
            Problem(
                "error",
                "unsubscribe_missing",
                "the unsubscribe link is not shown for this case",
                "html",
                sample=sample,
            )
        )
    return problems


def _text_problems(source: TemplateSource, rendered: RenderedMessage, sample: str) -> list[Problem]:
    problems: list[Problem] = []
    segments = rendered.segments
    if len(rendered.text) > PROVIDER_BODY_MAX:
        problems.append(
            Problem(
                "error",
                "too_long",
                f"{len(rendered.text)} characters; the provider refuses more than "
                f"{PROVIDER_BODY_MAX}",
                "text",
                sample=sample,
            )
        )
    if segments is None or source.channel != "sms":
        return problems
    if segments.segments > SMS_MAX_SEGMENTS:
        problems.append(
            Problem(
                "warning",
                "sms_segments",
                f"{segments.segments} SMS segments ({segments.encoding}, "
                f"{segments.units} units); keep it to {SMS_MAX_SEGMENTS} or fewer",
                "text",
                sample=sample,
            )
        )
    if segments.non_gsm:
        problems.append(
            Problem(
                "info",
                "ucs2",
                "these characters make the SMS UCS-2 (70 instead of 160 per segment): "
                + " ".join(repr(c) for c in segments.non_gsm),
                "text",
                sample=sample,
            )
        )
    return problems


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """One finding per (severity, code, part, line, message), keeping the first sample."""
    out: list[Problem] = []
    keys: set[tuple[str, str, str, int | None, str]] = set()
    for p in problems:
        key = (p.severity, p.code, p.part, p.line, p.message)
        if key not in keys:
            keys.add(key)
            out.append(p)
    return out
