"""Storms: many incidents with one cause. A carrier's hub that stops, a carrier that
stops everywhere, or the shop's own warehouse that ships late produces hundreds of
incidents within minutes; each would become its own message, and nobody would look
before they went out. Pure: docs/storms.md.

An incident belongs to the scope of its cause (`scope_of`): the carrier's hub where its
parcel was last seen (`hub:<carrier>@<location>`), else its carrier (`carrier:<carrier>`:
an order's delay, a parcel never scanned anywhere), or the shop's dispatch (`dispatch`).
When `rate` incidents of one scope are detected within `window`, the scope has a storm:
it starts at the first of them and lasts while incidents keep coming (`quiet` without
one ends it). A carrier that stops everywhere makes one storm per hub.

A storm's messages flow while it is smaller than `approval_size` (0: never held); from
that size on they wait, held, until an operator approves (optionally with a note the
storm's messages carry, per language), or cancels them. An operator may hold a storm of
any size, and release it again.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

DISPATCH = "dispatch"
# The kinds whose cause is the shop's own warehouse, and those whose cause is a parcel on
# its way (a carrier, a hub). The others (a late refund) have no shared cause here.
DISPATCH_KINDS = frozenset({"dispatch_late"})
CARRIER_KINDS = frozenset(
    {
        "delivery_at_risk",
        "delivery_late",
        "shipment_stalled",
        "delivery_failed",
        "awaiting_pickup",
        "carrier_exception",
        "returned_to_sender",
    }
)
NOTE_MAX = 500  # characters of an operator's note, per language
_SPACES = re.compile(r"\s+")


class State(StrEnum):
    FLOWING = "flowing"  # below the approval size (or released by an operator)
    AWAITING = "awaiting"  # at or above the approval size: held until decided
    APPROVED = "approved"  # an operator let it go (its later messages flow too)
    HELD = "held"  # an operator holds it, whatever its size
    CANCELLED = "cancelled"  # an operator stopped its messages


class Verdict(StrEnum):
    FLOW = "flow"
    HOLD = "hold"
    CANCEL = "cancel"


class Action(StrEnum):
    APPROVE = "approve"
    HOLD = "hold"
    CANCEL = "cancel"
    NOTE = "note"  # change the note only


class StormError(ValueError):
    """An operator's action that cannot be taken (a cancelled storm approved, …)."""


@dataclass(frozen=True)
class StormPolicy:
    rate: int = 50  # incidents of one scope …
    window: timedelta = timedelta(minutes=10)  # … detected within this long make a storm
    approval_size: int = 0  # from this many incidents on, its messages wait (0: never)
    quiet: timedelta = timedelta(minutes=30)  # no new incident this long: it is over

    @classmethod
    def parse(cls, rate: str, approval_size: int, quiet_s: float) -> StormPolicy:
        """`rate`: "<incidents>/<seconds>", e.g. "50/600"."""
        count, sep, seconds = rate.partition("/")
        try:
            n, window = int(count), float(seconds)
        except ValueError:
            n, window = 0, 0.0
        if not sep or n < 2 or window <= 0:
            raise ValueError(
                f"OUTREACH_STORM_RATE must read '<incidents>/<seconds>' with at least 2 "
                f"incidents and a positive window, not {rate!r}"
            )
        if approval_size < 0 or quiet_s <= 0:
            raise ValueError("the approval size must be ≥ 0 and the quiet time positive")
        return cls(n, timedelta(seconds=window), approval_size, timedelta(seconds=quiet_s))


def _clean(value: Any) -> str:
    return _SPACES.sub(" ", str(value or "")).strip()[:120]


def scope_of(kind: str, facts: Mapping[str, Any], order: Mapping[str, Any] | None) -> str | None:
    """The scope of an incident's cause (None: it shares none with others)."""
    if kind in DISPATCH_KINDS:
        return DISPATCH
    if kind not in CARRIER_KINDS:
        return None
    carrier = _clean(facts.get("carrier") or (order or {}).get("carrier")).lower()
    if not carrier:
        return None
    location = _clean(facts.get("location"))
    return f"hub:{carrier}@{location}" if location else f"carrier:{carrier}"


def describe(scope: str) -> str:
    """A scope as an operator reads it."""
    if scope == DISPATCH:
        return "the shop's dispatch"
    if scope.startswith("hub:"):
        carrier, _, location = scope[4:].partition("@")
        return f"{carrier} at {location}"
    return f"{scope.partition(':')[2]} (everywhere)"


def formed_at(times: Sequence[datetime], policy: StormPolicy) -> datetime | None:
    """When incidents at `times` (sorted) first made a storm: the moment the `rate`-th
    of them fell within `window` of the first; None if they never did."""
    for i in range(policy.rate - 1, len(times)):
        if times[i] - times[i - policy.rate + 1] < policy.window:
            return times[i]
    return None


def started_at(times: Sequence[datetime], formed: datetime, policy: StormPolicy) -> datetime:
    """The first incident of the storm formed at `formed`: going back from it while the
    incidents are no further apart than `quiet`."""
    i = bisect_right(times, formed) - 1
    while i > 0 and times[i] - times[i - 1] <= policy.quiet:
        i -= 1
    return times[max(i, 0)]


@dataclass(frozen=True)
class Storm:
    """A storm as the store has it."""

    storm_id: str
    scope: str
    started_at: datetime
    last_at: datetime
    size: int
    state: State
    notes: Mapping[str, str] = field(default_factory=dict)
    decided_by: str | None = None
    decided_at: datetime | None = None
    formed_at: datetime | None = None  # when its incidents first came at the rate
    awaiting_since: datetime | None = None  # when it grew to the approval size

    def covers(self, at: datetime, policy: StormPolicy) -> bool:
        """Does an incident detected at `at` belong to it? From its first incident to a
        quiet time after its last moment at the storm's rate (`last_at`)."""
        return self.started_at <= at <= self.last_at + policy.quiet

    def verdict_at(self, now: datetime) -> Verdict | None:
        """What happens to its message about to leave at `now` (event time on a
        replay): None if the storm had not formed yet then; a storm that grew to the
        approval size only later still flows. What an operator decided applies from
        the moment it was decided, live."""
        if self.formed_at is not None and self.formed_at > now:
            return None
        if self.state is State.AWAITING and self.awaiting_since and self.awaiting_since > now:
            return Verdict.FLOW
        return verdict(self.state)


def state_for_size(state: State, size: int, policy: StormPolicy) -> State:
    """A storm grown to `size`: one that flowed waits from the approval size on; what an
    operator decided stands."""
    if state is State.FLOWING and policy.approval_size and size >= policy.approval_size:
        return State.AWAITING
    return state


def verdict(state: State) -> Verdict:
    """What happens to a storm's message about to leave."""
    if state in (State.AWAITING, State.HELD):
        return Verdict.HOLD
    if state is State.CANCELLED:
        return Verdict.CANCEL
    return Verdict.FLOW


_AFTER: dict[Action, dict[State, State]] = {
    Action.APPROVE: {State.FLOWING: State.APPROVED, State.AWAITING: State.APPROVED,
                     State.HELD: State.APPROVED, State.APPROVED: State.APPROVED},
    Action.HOLD: {State.FLOWING: State.HELD, State.AWAITING: State.HELD,
                  State.APPROVED: State.HELD, State.HELD: State.HELD},
    Action.CANCEL: {State.FLOWING: State.CANCELLED, State.AWAITING: State.CANCELLED,
                    State.APPROVED: State.CANCELLED, State.HELD: State.CANCELLED},
    Action.NOTE: {s: s for s in State if s is not State.CANCELLED},
}  # fmt: skip


def after(state: State, action: Action) -> State:
    """The state an operator's action leaves a storm in; a cancelled storm stays so."""
    try:
        return _AFTER[action][state]
    except KeyError:
        raise StormError(f"a {state} storm cannot be given {action!r}") from None


def clean_notes(notes: Mapping[str, str], languages: Iterable[str]) -> dict[str, str]:
    """An operator's note per language (only shipped languages; blank ones dropped)."""
    known = set(languages)
    out: dict[str, str] = {}
    for language, text in notes.items():
        text = _SPACES.sub(" ", text or "").strip()
        if not text:
            continue
        if language not in known:
            raise StormError(f"no templates are shipped in {language!r}")
        if len(text) > NOTE_MAX:
            raise StormError(f"the {language} note is longer than {NOTE_MAX} characters")
        out[language] = text
    return out


def note_for(notes: Mapping[str, str], locale: str) -> str | None:
    """The note in the customer's language; none if the operator did not write one in
    it (a note is never sent in a language the customer did not choose)."""
    return notes.get(locale.split("-")[0].lower())


@dataclass(frozen=True)
class Segment:
    """The storm's held messages that read alike: one language, channel and kind."""

    locale: str
    channel: str
    kind: str
    customers: int
    messages: int


def segments(held: Iterable[tuple[str, str, str, str]]) -> list[Segment]:
    """`held`: (customer, locale, channel, kind) per message; the biggest first."""
    customers: dict[tuple[str, str, str], set[str]] = {}
    messages: dict[tuple[str, str, str], int] = {}
    for customer, locale, channel, kind in held:
        key = (locale, channel, kind)
        customers.setdefault(key, set()).add(customer)
        messages[key] = messages.get(key, 0) + 1
    found = [Segment(*key, len(customers[key]), messages[key]) for key in customers]
    return sorted(found, key=lambda s: (-s.messages, s.locale, s.channel, s.kind))


__all__ = [
    "DISPATCH",
    "Action",
    "Segment",
    "State",
    "Storm",
    "StormError",
    "StormPolicy",
    "Verdict",
    "after",
    "clean_notes",
    "describe",
    "formed_at",
    "note_for",
    "scope_of",
    "segments",
    "started_at",
    "state_for_size",
    "verdict",
]
