"""The world a fault scenario runs in: the four services as processes (several outreach
workers on one group if asked), the broker, PostgreSQL for the ledger and preferences,
the provider doubles with their status callbacks, and a supervisor that restarts a
process that died, as Kubernetes would.

Everything binds to 127.0.0.1; every process started here is stopped here, by pid.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import wait_for
from tests.doubles.sendgrid import SendGridDouble
from tests.doubles.twilio import TwilioDouble
from tests.e2e.stack import Stack

WRITE_TOKEN = "chaos-write-token"
TWILIO_FROM = "+15005550006"
# Short enough that a scenario sees every path within seconds; the ratios are the
# production ones (lease ≥ 2 × provider timeout, settle ≥ provider timeout).
TIMING = {
    "OUTREACH_PROVIDER_TIMEOUT_S": "2",
    "OUTREACH_IN_DOUBT_AFTER_S": "6",
    "OUTREACH_IN_DOUBT_SETTLE_S": "3",
    "OUTREACH_IN_DOUBT_CHECK_S": "0.5",
    "OUTREACH_SCHEDULER_INTERVAL_S": "0.5",
    "OUTREACH_KAFKA_SESSION_TIMEOUT_S": "6",
    "OUTREACH_BREAKER_RESET_S": "2",
    "OUTREACH_RELAY_LEASE_S": "3",
    # The SendGrid double retries an event it could not deliver within 5 s (SendGrid
    # itself: at growing intervals for up to a day).
    "OUTREACH_EVENT_RETRY_S": "30",
}


@dataclass
class Databases:
    """Where the ledger and preferences live: two fresh databases on one PostgreSQL
    server (`restart` is set when the scenario may restart that server)."""

    outreach_url: str
    preferences_url: str
    restart: Any = None  # Callable[[], None]: stop and start the server


@dataclass
class World:
    bootstrap: str
    databases: Databases
    work_dir: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    # Per process, the environment of its first launches in turn (failpoints): the
    # first start takes the first, each restart the next; then it runs plain.
    launches: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    twilio: TwilioDouble = field(default_factory=TwilioDouble)
    sendgrid: SendGridDouble = field(default_factory=SendGridDouble)
    prefix: str = field(default_factory=lambda: f"chaos{uuid.uuid4().hex[:8]}.")
    events: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stack: Stack | None = None
        self._lock = threading.RLock()
        self._held_down: set[str] = set()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._rotation = itertools.count()
        self.restarts = 0

    # --- life cycle ------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        workers = ["outreach"] + [f"outreach-{i}" for i in range(2, self.workers + 1)]
        return ["preferences", "orders_watcher", "risk_detector", *workers]

    def start(self) -> World:
        self.twilio.start()
        self.sendgrid.start()
        self.twilio.auto_callbacks = True
        self.twilio.dispatcher.route = self._route
        self.sendgrid.dispatcher.route = self._route
        self.sendgrid.dispatcher.max_retries = 40  # SendGrid retries events for a day
        self.sendgrid.dispatcher.max_backoff_s = 5.0
        self.stack = Stack(self.bootstrap, self.prefix, self.work_dir, extra_env=self._env())
        env = self.stack.env()
        self.sendgrid.event_webhook_url = (
            env["OUTREACH_PUBLIC_BASE_URL"] + "/webhooks/sendgrid/events"
        )
        self.stack.start("preferences")  # creates the topics too
        for name in self.names[1:]:
            self._launch(name)
        for name in self.names[1:]:
            wait_for(lambda n=name: self.ready(n), 90, message=f"{name} ready")
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        if self.stack is not None:
            self.stack.stop()
        self.twilio.stop()
        self.sendgrid.stop()

    def _env(self) -> dict[str, str]:
        return {
            "OUTREACH_CLOCK": "wall",
            "LOG_LEVEL": "WARNING",
            "OUTREACH_DATABASE_URL": self.databases.outreach_url,
            "PREFERENCES_DATABASE_URL": self.databases.preferences_url,
            "PREFERENCES_WRITE_TOKEN": WRITE_TOKEN,
            "TWILIO_ACCOUNT_SID": self.twilio.account_sid,
            "TWILIO_AUTH_TOKEN": self.twilio.auth_token,
            "TWILIO_FROM_NUMBER": TWILIO_FROM,
            "TWILIO_WHATSAPP_FROM": f"whatsapp:{TWILIO_FROM}",
            "TWILIO_API_BASE_URL": self.twilio.base_url,
            "SENDGRID_API_KEY": self.sendgrid.api_key,
            "SENDGRID_FROM_EMAIL": "care@shop.example",
            "SENDGRID_API_BASE_URL": self.sendgrid.base_url,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": self.sendgrid.webhook_public_key,
            **TIMING,
            **self.env,
        }

    # --- processes -------------------------------------------------------------------

    def note(self, what: str) -> None:
        with self._lock:
            self.events.append((time.time(), what))

    def _launch(self, name: str) -> None:
        assert self.stack is not None
        plan = self.launches.get(name)
        self.stack.launch(name, **(plan.pop(0) if plan else {}))

    def kill(self, name: str) -> None:
        """SIGKILL a service now; the supervisor starts it again."""
        assert self.stack is not None
        with self._lock:
            proc = self.stack.procs[name]
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
                self.note(f"SIGKILL {name}")

    def hold_down(self, name: str) -> None:
        """Stop a service (SIGKILL) and keep it down until `bring_up`."""
        with self._lock:
            self._held_down.add(name)
        self.kill(name)
        self.note(f"{name} down")

    def bring_up(self, name: str) -> None:
        assert self.stack is not None
        with self._lock:
            self._held_down.discard(name)
            self._launch(name)
        self.note(f"{name} up")

    def add_worker(self) -> str:
        assert self.stack is not None
        self.workers += 1
        name = f"outreach-{self.workers}"
        with self._lock:
            self.stack.launch(name)
        self.note(f"{name} added")
        return name

    def ready(self, name: str) -> bool:
        assert self.stack is not None
        try:
            return self.stack.ready(name)
        except AssertionError:
            return False  # exited; the supervisor brings it back

    def _supervise(self) -> None:
        """Restart a process that exited (a failpoint's SIGKILL, a crash), as Kubernetes
        restarts a container: without the first launch's failpoints."""
        assert self.stack is not None
        while not self._stopping.wait(0.2):
            with self._lock:
                for name, proc in list(self.stack.procs.items()):
                    if proc.poll() is None or name in self._held_down:
                        continue
                    self.note(f"{name} exited {proc.returncode}; restarted")
                    self.restarts += 1
                    self._launch(name)

    def _route(self, url: str) -> str:
        """A provider's callback goes to a live outreach worker (a Service would)."""
        assert self.stack is not None
        parts = urllib.parse.urlsplit(url)
        with self._lock:
            live = [
                self.stack.ports[name]
                for name, proc in self.stack.procs.items()
                if name.startswith("outreach") and proc.poll() is None
            ]
        if not live:
            return url
        port = live[next(self._rotation) % len(live)]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))

    def logs(self) -> dict[str, str]:
        assert self.stack is not None
        return {name: self.stack.logs(name) for name in self.stack.procs}
