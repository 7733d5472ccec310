"""Named crash points for the crash and fault tests: `OUTREACH_FAILPOINTS=a,b@3` makes
the process kill itself with SIGKILL (no clean-up, no flush, as a node failure would)
when it reaches a point of that name — the first time, or with `@n` the n-th time. Unset
— always, in production — a failpoint costs one dict lookup.

The points on outreach's send path, in order: `outreach.after_decision` (the decision is
recorded, nothing claimed), `outreach.before_provider_call` (claimed: the ledger says
`sending`), `outreach.after_provider_call` (the provider has it; the ledger does not
know yet), `outreach.after_ledger_sent` (recorded; the request's offset not yet
committed), and `<service>.before_offset_commit` in every plain consumer loop.
"""

from __future__ import annotations

import os
import signal


def _armed(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in (p.strip() for p in spec.split(",")):
        if item:
            name, _, nth = item.partition("@")
            points[name] = int(nth) if nth else 1
    return points


_ARMED = _armed(os.environ.get("OUTREACH_FAILPOINTS", ""))


def failpoint(name: str) -> None:
    left = _ARMED.get(name)
    if left is None:
        return
    if left <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _ARMED[name] = left - 1
