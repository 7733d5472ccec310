"""One replay of a shop's story through the whole pipeline, in event-clock mode, and what
it did to the world: the incidents and requests on the topics, the ledger's decisions,
the messages the provider doubles accepted, the watcher's dead letters.

Used by the determinism test (tests/replay/test_determinism.py) and by hand:

    python -m tests.replay --customers 300 --days 21 --speed 0 --runs 3
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from common.topics import WATERMARKS
from services.outreach.rehearsal.rest import wait_at_rest
from simulator.publisher import Publisher
from simulator.shop import Config, Emission, Shop
from tests.chaos.checker import read_topic
from tests.conftest import free_port, wait_for
from tests.doubles.sendgrid import SendGridDouble
from tests.doubles.twilio import TwilioDouble, provider_env
from tests.e2e.stack import PIPELINE, Stack

#: What identifies an incident and a request by content (besides type and time).
INCIDENT_FIELDS: tuple[Callable[[dict[str, Any]], Any], ...] = (
    lambda d: d.get("incident_id"),
    lambda d: d.get("kind"),
    lambda d: d.get("revision"),
    lambda d: d.get("order_id"),
)
REQUEST_FIELDS: tuple[Callable[[dict[str, Any]], Any], ...] = (
    lambda d: d.get("customer_id"),
    lambda d: d.get("message_kind") or d.get("kind"),
    lambda d: (d.get("cause") or {}).get("id") if isinstance(d.get("cause"), dict) else None,
)


def story(
    *, customers: int = 300, days: float = 21, orders_per_hour: float = 3.0, seed: int = 7
) -> list[Emission]:
    """A shop's story: late, duplicated and out-of-order events, customers in several
    time zones (the simulator's own mix)."""
    return list(
        Shop(
            Config(
                seed=seed,
                customers=customers,
                orders_per_hour=orders_per_hour,
                duration=timedelta(days=days),
                duplicate_rate=0.03,
                out_of_order_rate=0.05,
            )
        ).events()
    )


@dataclass
class Replay:
    """What one replay did, in forms that compare by content across runs."""

    incidents: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    requests: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    decisions: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    messages: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    orphans: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def differences(self, other: Replay) -> dict[str, tuple[list[Any], list[Any]]]:
        """Per kind of outcome: (only here, only there), for those that differ. Records on
        the topics compare as sets: a record emitted again after a rebalance carries the
        same content and id (its readers dedupe by id). Messages compare with their
        counts: a message sent twice is a difference."""
        found = {}
        for name in ("incidents", "requests", "decisions", "messages"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in ("incidents", "requests"):
                mine, theirs = Counter(set(mine)), Counter(set(theirs))
            if mine != theirs:
                found[name] = (
                    sorted((mine - theirs).elements(), key=repr),
                    sorted((theirs - mine).elements(), key=repr),
                )
        if sorted(self.orphans) != sorted(other.orphans):
            found["orphans"] = (self.orphans, other.orphans)
        return found


def replay(
    bootstrap: str,
    emissions: list[Emission],
    work: Path,
    *,
    speed: float = 0.0,
    watchers: int = 1,
    join_at: float | None = None,
    quiet_s: float = 5.0,
    timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
    services: tuple[str, ...] = PIPELINE,
) -> Replay:
    """Publish `emissions` at `speed` (event seconds per wall second; 0: as fast as the
    broker takes them) into a fresh pipeline and collect what it did once it is at rest:
    no input left uncommitted and nothing new on its topics for `quiet_s`. `watchers`
    orders_watcher instances; with `join_at` (a fraction of the story) all but the first
    are started once that much of it is published, and join while the rest is: the
    group rebalances in the middle of the replay."""
    prefix = f"rp{uuid.uuid4().hex[:8]}."
    started = time.monotonic()
    with SendGridDouble() as sendgrid, TwilioDouble() as twilio:
        stack = Stack(
            bootstrap,
            prefix,
            work,
            extra_env={
                **provider_env(twilio, sendgrid),
                # The same secrets in every replay: offer codes and unsubscribe links
                # are derived from them, so that messages compare by their words.
                "OUTREACH_OFFER_SECRET": "replay-offers",
                "OUTREACH_UNSUBSCRIBE_SECRET": "replay-unsubscribe",
                **(env or {}),
            },
        )
        publisher = Publisher(bootstrap, prefix)
        try:
            publisher.ensure_topics()
            stack.start(*services)
            joining = [f"orders_watcher-{n}" for n in range(2, watchers + 1)]
            cut = len(emissions) if join_at is None else int(len(emissions) * join_at)
            if join_at is None:
                _launch_watchers(stack, work, joining)
            publisher.run(emissions[:cut], speed=speed, report_every_s=3600)
            if join_at is not None:
                # The story goes on while they start, join and take over partitions.
                _launch_watchers(stack, work, joining, wait=False)
                publisher.run(emissions[cut:], speed=speed, report_every_s=3600)
                for name in joining:
                    wait_for(lambda name=name: stack.ready(name), timeout=90, message=name)
            publisher.producer.flush()
            wait_at_rest(bootstrap, prefix, quiet_s, timeout_s, skip=(WATERMARKS,))
            result = _collect(bootstrap, prefix, stack, sendgrid, twilio)
        finally:
            publisher.close()
            stack.stop()
    result.seconds = time.monotonic() - started
    return result


def _launch_watchers(stack: Stack, work: Path, names: list[str], *, wait: bool = True) -> None:
    for name in names:
        stack.ports[name] = free_port()
        stack.launch(
            name,
            ORDERS_WATCHER_HTTP_PORT=str(stack.ports[name]),
            OUTREACH_DATA_DIR=str(work / name),
        )
        if wait:
            wait_for(lambda name=name: stack.ready(name), timeout=90, message=name)


def _collect(
    bootstrap: str, prefix: str, stack: Stack, sendgrid: SendGridDouble, twilio: TwilioDouble
) -> Replay:
    result = Replay()
    for name, fields in (("incidents", INCIDENT_FIELDS), ("requests", REQUEST_FIELDS)):
        counter = getattr(result, name)
        for record in read_topic(bootstrap, prefix + "outreach." + name):
            event = orjson.loads(record.value)
            data = event.get("data") or {}
            counter[(event["type"], event.get("time"), *(field(data) for field in fields))] += 1
    for record in read_topic(bootstrap, prefix + "deadletter.orders_watcher"):
        headers = {k: v.decode(errors="replace") for k, v in record.headers}
        if headers.get("dlq.reason.code") == "orphan_expired":
            result.orphans.append(record.value.decode(errors="replace")[:200])
    database = stack.data_dir / "outreach" / "outreach.db"
    if not database.exists():  # outreach did not run
        return result
    with sqlite3.connect(database) as db:
        for row in db.execute(
            "SELECT customer_id, cause_id, message_kind, intent, status, reason, channel,"
            " revision, send_at FROM deliveries"
        ):
            result.decisions[tuple(row)] += 1
    for message in sendgrid.messages:
        mail = message.get("json", message)
        personal = (mail.get("personalizations") or [{}])[0]
        to = ",".join(t.get("email", "") for t in personal.get("to", []))
        result.messages[("email", to, personal.get("subject") or mail.get("subject"))] += 1
    for message in twilio.messages:
        sms = message.get("form", message)
        result.messages[("sms", sms.get("To"), sms.get("Body"))] += 1
    return result
