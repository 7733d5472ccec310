"""A job run every few seconds beside a service's consumer, until the service stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from common.logs import get_logger
from common.outages import outage_of

log = get_logger(__name__)


async def every(
    stop: asyncio.Event, seconds: float, job: Callable[[], Awaitable[Any]], name: str
) -> None:
    """Run `job` every `seconds` until `stop` (at once again while it returns True: more
    work waiting); a failure is logged and the next round tries again. An outage (the
    database, preferences, the broker away) is a warning, not a trace."""
    while not stop.is_set():
        again = False
        try:
            again = bool(await job())
        except Exception as exc:
            dependency = outage_of(exc)
            if dependency is None:
                log.exception(f"{name}_failed")
            else:
                log.warning(f"{name}_waits", dependency=dependency, error=type(exc).__name__)
        if again:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


__all__ = ["every"]
