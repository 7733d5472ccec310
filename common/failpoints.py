"""Named crash points for the crash tests: `OUTREACH_FAILPOINTS=a,b` makes the process
kill itself with SIGKILL (no clean-up, no flush, as a node failure would) the first time
it reaches a point of that name. Unset — always, in production — a failpoint costs one
set lookup.
"""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(p.strip() for p in os.environ.get("OUTREACH_FAILPOINTS", "").split(",") if p)


def failpoint(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
