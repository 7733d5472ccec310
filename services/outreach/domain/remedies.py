"""Remedies (docs/remedies.md): what an apology — or a check-in — offers the customer,
chosen by a policy the shop's admin edits in the studio, within a spending budget.

A policy is a JSON document:

    {"currency": "EUR",                       # the budget's currency
     "budget": {"period": "month", "cap": "2000.00"},   # no "budget": no cap
     "costs": {"free_shipping": "4.90", "expedited_reship": "12.00"},
     "rates": {"GBP": "1.17"},                # 1 GBP = 1.17 EUR, for orders in GBP
     "typical_order": "60.00",                # what a percent code is priced on without an order
     "valid_days": 30, "prefix": "SORRY",
     "rules": [
       {"kinds": ["carrier_exception"], "severities": ["critical"], "values": ["high"],
        "offer": ["expedited_reship", "credit:15", "amount:10"]},
       {"intents": ["apology"], "offer": ["percent:10"]},
       {"intents": ["check_in"], "tiers": ["high_value"], "offer": ["percent:15"]}]}

A rule matches a message by its kind, intent, severity, the customer's value (`high` |
`standard`, from risk_detector) and offer tier (a check-in's marketing consent: a
check-in gets a remedy only with a tier); a missing list matches anything. The first rule
that matches gives the remedies to try, best first: the first that fits the period's
budget is granted, the others are the fallbacks ("would exceed the budget"), and when
none fits the message goes without one — the reasons said either way.

Remedies: `percent:<n>` and `amount:<n>` discount codes (an amount in the order's
currency), `free_shipping` (a code), `expedited_reship` (a replacement sent by express)
and `credit:<n>` (store credit in the order's currency); the last two are for the
shop's systems to carry out (`outreach.actions`). What one costs the budget: an amount
or credit its value, a percent code that share of the order's total (or of the typical
order), free shipping and a reship what `costs` says; converted by `rates` when the
order is in another currency (an order in a currency without a rate gets no priced
remedy). Pure.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

KINDS = ("percent", "amount", "free_shipping", "expedited_reship", "credit")
VALUED = ("percent", "amount", "credit")
CODED = ("percent", "amount", "free_shipping")  # carried as a discount code
PERIODS = ("day", "week", "month")
CENT = Decimal("0.01")
SELF_PRICED = ("free_shipping", "expedited_reship")  # priced by the policy's costs
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class PolicyError(ValueError):
    """A remedy policy that cannot be used; the message names the place."""


@dataclass(frozen=True)
class Remedy:
    kind: str
    value: Decimal | None = None  # percent points, or an amount in the order's currency

    @classmethod
    def parse(cls, text: str) -> Remedy:
        kind, _, raw = str(text).strip().partition(":")
        if kind not in KINDS:
            raise PolicyError(f"{text!r}: a remedy is one of {', '.join(KINDS)}")
        if kind not in VALUED:
            if raw:
                raise PolicyError(f"{text!r}: {kind} takes no value")
            return cls(kind)
        value = _decimal(raw, text)
        if value <= 0 or (kind == "percent" and value >= 100):
            raise PolicyError(f"{text!r}: the value must be above 0 (and a percent below 100)")
        return cls(kind, value)

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value.normalize():f}"


@dataclass(frozen=True)
class Facts:
    """What a policy matches and prices a message by."""

    message_kind: str
    intent: str
    severity: str
    customer_value: str | None  # high | standard | None (not said)
    offer_tier: str | None
    order_total: Decimal | None
    order_currency: str | None


@dataclass(frozen=True)
class Learn:
    """A rule whose remedies are ranked by what they do (domain/learning.py): by the
    customers who ordered again within `window` of their message, with `exploration`
    the share of messages that try an arm at random."""

    window: timedelta = timedelta(days=30)
    exploration: float = 0.1


@dataclass(frozen=True)
class Rule:
    offer: tuple[Remedy, ...]
    kinds: frozenset[str] | None = None
    intents: frozenset[str] | None = None
    severities: frozenset[str] | None = None
    values: frozenset[str] | None = None
    tiers: frozenset[str] | None = None
    learn: Learn | None = None

    @property
    def key(self) -> str:
        """The rule's identity (what it matches and offers, and its window): a learner's
        figures are its own, whatever its place in the policy."""
        parts = [
            ",".join(map(str, self.offer)),
            *(",".join(sorted(m)) if m is not None else "*" for m in (
                self.kinds, self.intents, self.severities, self.values, self.tiers,
            )),
            str(self.learn.window.days if self.learn else 0),
        ]  # fmt: skip
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]

    def matches(self, f: Facts) -> bool:
        if f.intent == "check_in" and not f.offer_tier:
            return False  # no marketing consent: a check-in carries no remedy
        return all(
            wanted is None or have in wanted
            for wanted, have in (
                (self.kinds, f.message_kind),
                (self.intents, f.intent),
                (self.severities, f.severity),
                (self.values, f.customer_value),
                (self.tiers, f.offer_tier),
            )
        )


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    currency: str = "EUR"
    cap: Decimal | None = None  # per period; None: no budget
    period: str = "month"
    costs: Mapping[str, Decimal] = field(default_factory=dict)
    rates: Mapping[str, Decimal] = field(default_factory=dict)
    typical_order: Decimal = Decimal("50")
    valid_days: int = 30
    prefix: str = "SORRY"

    @property
    def valid_for(self) -> timedelta:
        return timedelta(days=self.valid_days)

    def rule_for(self, f: Facts) -> Rule | None:
        """The first rule that matches a message."""
        return next((r for r in self.rules if r.matches(f)), None)

    def offers(self, f: Facts) -> tuple[Remedy, ...]:
        """The remedies to try for a message, best first (none: no rule matches)."""
        rule = self.rule_for(f)
        return () if rule is None else rule.offer

    def cost(self, remedy: Remedy, f: Facts) -> Decimal | None:
        """What `remedy` costs the budget, in its currency; None when it cannot be priced
        (an order in a currency without a rate)."""
        if remedy.kind in ("free_shipping", "expedited_reship"):
            return self.costs.get(remedy.kind, Decimal(0)).quantize(CENT)
        assert remedy.value is not None
        if remedy.kind == "percent":
            if f.order_total is None:
                return (self.typical_order * remedy.value / 100).quantize(CENT, ROUND_HALF_UP)
            local = f.order_total * remedy.value / 100
        else:
            local = remedy.value
        rate = self.rate(f.order_currency)
        return None if rate is None else (local * rate).quantize(CENT, ROUND_HALF_UP)

    def rate(self, currency: str | None) -> Decimal | None:
        if currency is None or currency == self.currency:
            return Decimal(1)
        return self.rates.get(currency)

    def period_of(self, at: datetime) -> str:
        """The budget period `at` falls in: 2026-12-07, 2026-W49 or 2026-12 (UTC)."""
        if self.period == "day":
            return f"{at:%Y-%m-%d}"
        if self.period == "week":
            year, week, _ = at.isocalendar()
            return f"{year}-W{week:02d}"
        return f"{at:%Y-%m}"


def parse(document: Mapping[str, Any]) -> Policy:
    """A policy document (above) as a Policy; PolicyError names what is wrong."""
    if not isinstance(document, Mapping):
        raise PolicyError("a remedy policy is a JSON object")
    unknown = set(document) - {
        "currency", "budget", "costs", "rates", "typical_order", "valid_days", "prefix", "rules",
    }  # fmt: skip
    if unknown:
        raise PolicyError(f"unknown keys: {', '.join(sorted(unknown))}")
    currency = str(document.get("currency", "EUR"))
    if not _CURRENCY.match(currency):
        raise PolicyError(f"currency {currency!r}: three capital letters, e.g. EUR")
    budget = document.get("budget") or {}
    if not isinstance(budget, Mapping):
        raise PolicyError("budget: an object, {period, cap}")
    period = str(budget.get("period", "month"))
    if period not in PERIODS:
        raise PolicyError(f"budget.period {period!r}: one of {', '.join(PERIODS)}")
    cap = None if budget.get("cap") is None else _decimal(budget["cap"], "budget.cap")
    if cap is not None and cap < 0:
        raise PolicyError("budget.cap: not below 0")
    prefix = str(document.get("prefix", "SORRY"))
    if not re.fullmatch(r"[A-Z]{2,12}", prefix):
        raise PolicyError(f"prefix {prefix!r}: 2-12 capital letters")
    rules = document.get("rules")
    if not isinstance(rules, list):
        raise PolicyError("rules: a list of rules")
    costs = _amounts(document.get("costs") or {}, "costs", ("free_shipping", "expedited_reship"))
    parsed = tuple(_rule(r, n) for n, r in enumerate(rules, 1))
    for n, rule in enumerate(parsed, 1):
        free = [str(r) for r in rule.offer if r.kind in SELF_PRICED and not costs.get(r.kind)]
        if rule.learn is not None and free:
            raise PolicyError(
                f"rules[{n}].learn: {', '.join(free)} cost nothing by this policy; a learner "
                "ranks by uplift per unit of cost: set its cost under costs"
            )
    return Policy(
        rules=parsed,
        currency=currency,
        cap=cap,
        period=period,
        costs=costs,
        rates=_amounts(document.get("rates") or {}, "rates", None),
        typical_order=_decimal(document.get("typical_order", "50"), "typical_order"),
        valid_days=_days(document.get("valid_days", 30)),
        prefix=prefix,
    )


def _rule(raw: Any, n: int) -> Rule:
    where = f"rules[{n}]"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: a rule is an object")
    unknown = set(raw) - {"kinds", "intents", "severities", "values", "tiers", "offer", "learn"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys: {', '.join(sorted(unknown))}")
    offer = raw.get("offer")
    if not isinstance(offer, list) or not offer:
        raise PolicyError(f"{where}.offer: a list of remedies, best first")
    try:
        remedies = tuple(Remedy.parse(r) for r in offer)
    except PolicyError as exc:
        raise PolicyError(f"{where}.offer: {exc}") from None

    def names(key: str) -> frozenset[str] | None:
        value = raw.get(key)
        if value is None or value == "*":
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f'{where}.{key}: a list of names, or "*"')
        return frozenset(value)

    return Rule(
        remedies, names("kinds"), names("intents"), names("severities"), names("values"),
        names("tiers"), _learn(raw.get("learn"), where),
    )  # fmt: skip


def _learn(raw: Any, where: str) -> Learn | None:
    """`"learn": true`, or `{"window_days": 30, "exploration": 0.1}`."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return Learn()
    if not isinstance(raw, Mapping) or set(raw) - {"window_days", "exploration"}:
        raise PolicyError(f"{where}.learn: true, or {{window_days, exploration}}")
    days, share = raw.get("window_days", 30), raw.get("exploration", 0.1)
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 180:
        raise PolicyError(f"{where}.learn.window_days: a whole number of days, 1 to 180")
    if not isinstance(share, int | float) or isinstance(share, bool) or not 0 <= share <= 1:
        raise PolicyError(f"{where}.learn.exploration: a share from 0 to 1")
    return Learn(timedelta(days=days), float(share))


def _decimal(raw: Any, where: str) -> Decimal:
    """A finite number, not below 0 (JSON numbers or strings)."""
    if isinstance(raw, bool) or raw is None:
        raise PolicyError(f"{where}: not a number: {raw!r}")
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise PolicyError(f"{where}: not a number: {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise PolicyError(f"{where}: a finite number, not below 0: {raw!r}")
    return value


def _amounts(raw: Any, where: str, keys: Sequence[str] | None) -> dict[str, Decimal]:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: an object")
    found = {}
    for key, value in raw.items():
        if keys is not None and key not in keys:
            raise PolicyError(f"{where}.{key}: one of {', '.join(keys)}")
        if keys is None and not _CURRENCY.match(str(key)):
            raise PolicyError(f"{where}.{key}: a currency, three capital letters")
        amount = _decimal(value, f"{where}.{key}")
        if amount < 0:
            raise PolicyError(f"{where}.{key}: not below 0")
        found[str(key)] = amount
    return found


def _days(raw: Any) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 365:
        raise PolicyError("valid_days: a whole number of days, 1 to 365")
    return raw


# --- choosing within the budget ----------------------------------------------------------


@dataclass(frozen=True)
class Priced:
    remedy: Remedy
    cost: Decimal | None  # None: cannot be priced


def priced(policy: Policy, f: Facts) -> list[Priced]:
    return [Priced(r, policy.cost(r, f)) for r in policy.offers(f)]


def refusal(p: Priced, policy: Policy, spent: Decimal | None = None) -> str:
    """Why a remedy was not granted, for the decision's reasons."""
    if p.cost is None:
        return f"{p.remedy}: no rate for the order's currency"
    left = "" if spent is None or policy.cap is None else f" ({spent} of {policy.cap} spent)"
    return f"{p.remedy}: {p.cost} {policy.currency} would exceed the budget{left}"


# The policy outreach uses until an admin publishes one: the goodwill codes check-ins
# carried before remedy policies (by offer tier and severity), and no budget.
DEFAULT_DOCUMENT: dict[str, Any] = {
    "currency": "EUR",
    "valid_days": 30,
    "prefix": "SORRY",
    "rules": [
        {"intents": ["check_in"], "tiers": ["high_value"], "severities": ["critical"],
         "offer": ["percent:20"]},
        {"intents": ["check_in"], "tiers": ["high_value"], "offer": ["percent:15"]},
        {"intents": ["check_in"], "tiers": ["returns_goodwill"], "offer": ["percent:10"]},
        {"intents": ["check_in"], "severities": ["critical"], "offer": ["percent:15"]},
        {"intents": ["check_in"], "offer": ["percent:10"]},
    ],
}  # fmt: skip
DEFAULT = parse(DEFAULT_DOCUMENT)


def preview(policy: Policy, f: Facts, at: datetime, code: str) -> dict[str, Any] | None:
    """The template context's `offer` the first remedy the policy offers would make,
    with a stand-in `code` and no budget asked (the studio's samples)."""
    offers = policy.offers(f)
    if not offers:
        return None
    remedy = offers[0]
    value = None if remedy.value is None else format(remedy.value.normalize(), "f")
    money = remedy.kind in ("amount", "credit")
    if money and remedy.value is not None:
        value = str(remedy.value.quantize(CENT))
    return {
        "kind": remedy.kind,
        "value": value,
        "currency": (f.order_currency or policy.currency) if money else None,
        "code": code if remedy.kind in CODED else None,
        "expires_at": at + policy.valid_for,
    }
