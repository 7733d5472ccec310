"""The delivery state machine: which states a decision's message passes through, which
moves are allowed, and what a provider's report may change. Pure: the ledger enforces it
on every write, the handlers ask it before they try.

    decided ─┬─> suppressed                                  (a rule said no)
             ├─> scheduled ─┬─> decided                      (08:00, a resume, a retry)
             │              ├─> suppressed | failed          (the last look said no; expired)
             ├─> sending ─┬─> sent ──> delivered | failed    (provider reports)
             │            ├─> in_doubt ─┬─> sent             (found at the provider)
             │            │             ├─> decided          (certainly absent: send again)
             │            │             └─> failed           (nobody can tell: for a person)
             │            ├─> scheduled                      (not taken: 429, breaker, refused)
             │            ├─> decided                        (permanent error: next channel)
             │            └─> failed                         (permanent error, none left)
             └─> failed                                      (no template renders)

States only move forward: a delivered message never becomes failed again, whatever a
late or replayed report says, and nothing leaves `suppressed`, `delivered` or `failed`.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    DECIDED = "decided"  # chosen to be sent now; nobody has called the provider yet
    SCHEDULED = "scheduled"  # waits for a moment (quiet hours, a retry) or a resume
    SENDING = "sending"  # claimed: one worker is calling the provider
    IN_DOUBT = "in_doubt"  # the provider may or may not have it: ask, never resend blindly
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPPRESSED = "suppressed"


S = Status
MOVES: dict[Status, frozenset[Status]] = {
    S.DECIDED: frozenset({S.SENDING, S.SCHEDULED, S.SUPPRESSED, S.FAILED}),
    S.SCHEDULED: frozenset({S.DECIDED, S.SCHEDULED, S.SUPPRESSED, S.FAILED}),
    S.SENDING: frozenset({S.SENT, S.IN_DOUBT, S.SCHEDULED, S.DECIDED, S.FAILED, S.DELIVERED}),
    S.IN_DOUBT: frozenset({S.IN_DOUBT, S.SENT, S.DECIDED, S.FAILED, S.DELIVERED}),
    S.SENT: frozenset({S.DELIVERED, S.FAILED}),
    S.DELIVERED: frozenset(),
    S.FAILED: frozenset(),
    S.SUPPRESSED: frozenset(),
}
FINAL = frozenset({S.DELIVERED, S.FAILED, S.SUPPRESSED})
# Held by one worker for a short while: a row found here after its lease was left by a
# process that died (or stalled), and the sweeper takes it over.
LEASED = frozenset({S.DECIDED, S.SENDING, S.IN_DOUBT})
# What `outreach.messages` tells the world (SPEC §4); the others are internal.
PUBLIC = frozenset({S.SCHEDULED, S.SENT, S.DELIVERED, S.FAILED, S.SUPPRESSED})
# Counted against the frequency cap: sent, or about to be.
UNDER_WAY = frozenset({S.SENDING, S.IN_DOUBT, S.SENT, S.DELIVERED})


class IllegalMove(ValueError):
    """A write that would move a message backwards or out of a final state."""


def check_move(source: Status, target: Status) -> None:
    if target not in MOVES[source]:
        raise IllegalMove(f"a message cannot move from {source} to {target}")


class Report(StrEnum):
    """What a provider says of a message it was given (webhooks, lookups)."""

    ACCEPTED = "accepted"  # queued, processed, sent: the provider has it
    DELIVERED = "delivered"
    FAILED = "failed"  # undelivered, bounced, dropped


_AFTER_REPORT: dict[Report, tuple[frozenset[Status], Status]] = {
    Report.ACCEPTED: (frozenset({S.SENDING, S.IN_DOUBT}), S.SENT),
    Report.DELIVERED: (frozenset({S.SENDING, S.IN_DOUBT, S.SENT}), S.DELIVERED),
    Report.FAILED: (frozenset({S.SENDING, S.IN_DOUBT, S.SENT}), S.FAILED),
}


def reported(report: Report) -> tuple[frozenset[Status], Status]:
    """(the states a report may move a message from, the state it moves it to). A report
    for a message in any other state is stale or repeated and changes nothing: a late
    "sent" after "delivered", a replayed "failed" after "delivered"."""
    return _AFTER_REPORT[report]
