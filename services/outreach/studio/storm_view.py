"""The storm view in plain functions (domain/storms.py): the list of storms, what an
operator's form asks, a storm's held messages by segment with one sample each, and the
customers it touches with their orders. The handlers are storm_pages.py.

A sample is the message a segment's customer will get once the storm is released, built
as the worker builds it: the carrier consolidation.plan chooses among that customer's
held messages, naming the others (`also`), with the storm's note in the customer's
language (runtime.py, `_carry` and `MessageComposer._context`). What the worker decides
again on release cannot be foreseen here (a channel, if the customer's contact plan
changed meanwhile; a survey link), so it is left out. A first name is personal data:
shown to roles allowed it, a placeholder for the others. The unsubscribe link and an
offer's code are never the real ones here: the link would unsubscribe the customer,
the code is a discount anyone could use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from common import schemas
from services.outreach.adapters.ledger import Delivery
from services.outreach.adapters.storms import StormMember
from services.outreach.domain import consolidation, remedies
from services.outreach.domain import experiments as trials
from services.outreach.domain.context import build_context
from services.outreach.domain.states import Status
from services.outreach.domain.storms import (
    Action,
    Segment,
    State,
    Storm,
    StormError,
    after,
    clean_notes,
    describe,
    note_for,
    segments,
)
from services.outreach.handlers import remedy_facts
from services.outreach.runtime import Links, pending

MASKED_NAME = "[first name]"  # in a sample, for roles without personal data
OFFER_CODE = "[offer code]"
REASON_MAX = 500
# What the studio's audit calls each decision (its target is the storm's id).
AUDITED = {
    Action.APPROVE: "storm_approved",
    Action.HOLD: "storm_held",
    Action.CANCEL: "storm_cancelled",
    Action.NOTE: "storm_note",
}
T = TypeVar("T")


# --- the list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    storm_id: str
    scope: str  # as an operator reads it
    state: str
    size: int
    started_at: datetime
    last_at: datetime
    held: int  # its messages waiting in the ledger
    decided_by: str | None
    decided_at: datetime | None


def listing(storms: Iterable[Storm], held: Mapping[str, int]) -> list[Listed]:
    """The storms as the list shows them: those awaiting an operator first (their
    messages wait for nobody else), then the latest."""
    rows = [
        Listed(
            s.storm_id,
            describe(s.scope),
            s.state.value,
            s.size,
            s.started_at,
            s.last_at,
            held.get(s.storm_id, 0),
            s.decided_by,
            s.decided_at,
        )
        for s in storms
    ]
    return sorted(rows, key=lambda r: (r.state != State.AWAITING, -r.last_at.timestamp()))


# --- an operator's form -------------------------------------------------------------------


@dataclass(frozen=True)
class Asked:
    action: Action
    notes: dict[str, str] | None  # None: the storm keeps its note
    reason: str


def shipped_languages(locales: Iterable[str]) -> tuple[str, ...]:
    """The languages templates are shipped in (a note may be written in each), English
    first: the language of every customer without a note of their own."""
    found = {tag.split("-")[0].lower() for tag in locales}
    return tuple(sorted(found, key=lambda lang: (lang != "en", lang)))


def typed_notes(form: Mapping[str, Any], languages: Sequence[str]) -> dict[str, str]:
    """The note fields as typed (`note_<language>`), kept in the form after a refusal."""
    return {lang: str(form.get(f"note_{lang}", "")) for lang in languages}


def read_form(form: Mapping[str, Any], languages: Sequence[str]) -> Asked:
    """What an operator asks: the action; with an approval or a note only, the note per
    language (what the fields hold replaces the storm's note, blank ones dropped); a
    reason, which a cancel needs (it stops messages customers were meant to get, and
    whoever reads the log later wants to know why). StormError says what is wrong."""
    try:
        action = Action(str(form.get("action", "")))
    except ValueError:
        raise StormError(
            "choose to approve, hold or cancel the storm, or to save its note"
        ) from None
    reason = " ".join(str(form.get("reason", "")).split())
    if len(reason) > REASON_MAX:
        raise StormError(f"the reason is longer than {REASON_MAX} characters")
    if action is Action.CANCEL and not reason:
        raise StormError("say why the storm's messages are cancelled: the reason is kept")
    notes = None
    if action in (Action.APPROVE, Action.NOTE):
        notes = clean_notes(typed_notes(form, languages), languages)
    return Asked(action, notes, reason)


def possible(state: State) -> frozenset[str]:
    """The actions a storm in `state` may still be given (the forms the page shows)."""
    found = set()
    for action in Action:
        try:
            after(state, action)
        except StormError:
            continue
        found.add(action.value)
    return frozenset(found)


# --- the storm's messages -------------------------------------------------------------


def is_held(row: Delivery) -> bool:
    """Held with its storm: scheduled with no time (lifecycle.storm_hold)."""
    return row.status == Status.SCHEDULED and row.send_at is None


def message_counts(rows: Iterable[Delivery]) -> dict[str, int]:
    """The storm's messages by what became of them: held, or their status."""
    counts: dict[str, int] = {}
    for row in rows:
        label = "held" if is_held(row) else row.status
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda c: (c[0] != "held", c[0])))


def _key(row: Delivery) -> tuple[str, str, str, str]:
    return (row.customer_id, row.locale or "en", row.channel or "none", row.cause_kind)


@dataclass(frozen=True)
class SampleCase:
    """A segment's sample: the message one of its customers will get."""

    segment: Segment
    customer_id: str
    carrier: Delivery  # the message that leaves
    merged: tuple[Delivery, ...]  # the customer's others it names
    orders: tuple[str, ...]  # the carrier's order, then those it names
    context: dict[str, Any]  # the template context the worker would build
    named: bool  # it shows the customer's real first name


@dataclass(frozen=True)
class Sample:
    case: SampleCase
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    error: str | None = None  # why there is no sample
    template: str | None = None  # kind/channel/locale vN that rendered it


def carrier_of(row: Delivery, theirs: Sequence[Delivery]) -> tuple[Delivery, list[Delivery]]:
    """The message `row` leaves in once its customer's held messages (`theirs`) are
    released together: the carrier consolidation.plan chooses, with the others it names
    (`row` itself with none if it goes alone)."""
    by_id = {r.decision_id: r for r in theirs}
    for merge in consolidation.plan(pending(r) for r in theirs):
        members = [merge.carrier.decision_id, *(p.decision_id for p in merge.merged)]
        if row.decision_id in members:
            return by_id[merge.carrier.decision_id], [by_id[p.decision_id] for p in merge.merged]
    return row, []


def sample_context(
    carrier: Delivery,
    merged: Sequence[Delivery],
    *,
    note: str | None,
    personal: bool,
    links: Links,
    remedy_policy: remedies.Policy = remedies.DEFAULT,
) -> dict[str, Any]:
    """The carrier's template context as the worker builds it when it carries `merged`
    (runtime.py: `_carry`, `MessageComposer._context`), with the first name masked for
    roles without personal data and no real unsubscribe link or offer code (the remedy
    the policy would offer first, whatever the budget)."""
    context = dict(carrier.request.get("context") or {})
    if merged:
        before = [i for r in (carrier, *merged) for i in consolidation.carried(r.request)]
        context["also"] = consolidation.also_items([pending(r) for r in merged], before)
    name = str(carrier.request.get("first_name") or "")
    offer = None
    if not trials.without_remedy(carrier.experiments):
        request = schemas.OutreachRequest.model_validate(carrier.request)
        facts = remedy_facts(request, request.offer_tier)
        offer = remedies.preview(remedy_policy, facts, carrier.decided_at, OFFER_CODE)
    return build_context(
        {**carrier.request, "context": context},
        first_name=name if personal or not name else MASKED_NAME,
        locale=carrier.locale or "en",
        timezone=carrier.time_zone or "UTC",
        offer=offer,
        unsubscribe_url=f"{links.public_base_url}/unsubscribe?token=sample",
        support_url=links.support_url,
        shop=links.shop(),
        survey=None,
        storm_note=note,
    )


def sample_cases(
    held: Sequence[Delivery],
    notes: Mapping[str, str],
    *,
    personal: bool,
    links: Links,
    remedy_policy: remedies.Policy = remedies.DEFAULT,
) -> list[SampleCase]:
    """Per segment of the held messages (domain/storms.py `segments`: one language,
    channel and kind), the message of its customer with the most held messages — the
    sample that shows the most of what consolidation does."""
    theirs: dict[str, list[Delivery]] = {}
    for row in held:
        theirs.setdefault(row.customer_id, []).append(row)
    found = []
    for segment in segments(_key(r) for r in held):
        rows = [r for r in held if _key(r)[1:] == (segment.locale, segment.channel, segment.kind)]
        row = min(rows, key=lambda r: (-len(theirs[r.customer_id]), r.customer_id, r.decided_at))
        carrier, merged = carrier_of(row, theirs[row.customer_id])
        context = sample_context(
            carrier,
            merged,
            note=note_for(notes, carrier.locale or "en"),
            personal=personal,
            links=links,
            remedy_policy=remedy_policy,
        )
        orders = (carrier.order_id, *(item.get("order_id") for item in context["also"]))
        named = personal and bool(carrier.request.get("first_name"))
        found.append(SampleCase(segment, row.customer_id, carrier, tuple(merged),
                                tuple(str(o) for o in orders if o), context, named))  # fmt: skip
    return found


# --- the customers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Affected:
    customer_id: str
    orders: tuple[str, ...]  # their orders with an incident in the storm
    kinds: tuple[str, ...]  # those incidents' kinds
    first_at: datetime  # their first incident in it
    held: int  # their messages held with it


def affected(members: Iterable[StormMember], held: Iterable[Delivery]) -> list[Affected]:
    """The customers of the storm's incidents, each with their orders in it and how many
    of their messages it holds; by customer id (a stable order to page through)."""
    held_of: dict[str, int] = {}
    for row in held:
        held_of[row.customer_id] = held_of.get(row.customer_id, 0) + 1
    theirs: dict[str, list[StormMember]] = {}
    for member in members:
        theirs.setdefault(member.customer_id, []).append(member)
    return [
        Affected(
            customer,
            tuple(dict.fromkeys(m.order_id for m in found if m.order_id)),
            tuple(dict.fromkeys(m.kind for m in found)),
            min(m.at for m in found),
            held_of.get(customer, 0),
        )
        for customer, found in sorted(theirs.items())
    ]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    number: int  # from 1
    pages: int
    total: int


def page_of(items: Sequence[T], wanted: str, size: int) -> Page[T]:
    """Page `wanted` (a query parameter: anything but a page number is the first, a
    number past the last is the last) of `items`, `size` a page."""
    pages = max(1, -(-len(items) // size))
    number = int(wanted) if wanted.isascii() and wanted.isdigit() and len(wanted) < 10 else 1
    number = min(max(number, 1), pages)
    start = (number - 1) * size
    return Page(list(items[start : start + size]), number, pages, len(items))
