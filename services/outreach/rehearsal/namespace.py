"""The rehearsal's isolated namespace: its own topics (a prefix of its own on the same
cluster), its own databases and data under a work directory, preferences,
orders_watcher, risk_detector and outreach as processes on the event clock, and no
provider at all (outbox senders: no credentials are passed on). Its environment is
built from nothing but the cluster's address and security settings, so no production
setting — a database URL, a provider key, the topic prefix — can leak into it. Its
topics are deleted when it stops."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from common.topics import WATERMARKS, all_topics

ROOT = Path(__file__).resolve().parents[3]
SERVICES = {
    "preferences": ("services.preferences", "PREFERENCES_HTTP_PORT"),
    "orders_watcher": ("services.orders_watcher", "ORDERS_WATCHER_HTTP_PORT"),
    "risk_detector": ("services.risk_detector", "RISK_DETECTOR_HTTP_PORT"),
    "outreach": ("services.outreach", "OUTREACH_HTTP_PORT"),
}
# What the rehearsal takes over from the operator's environment: how to reach the
# cluster, and nothing else.
PASSED_ON = ("PATH", "HOME", "LANG", "TZ")
PASSED_ON_PREFIXES = ("KAFKA_SECURITY_", "KAFKA_SSL_", "KAFKA_SASL_")
# Rule settings (detection, scoring, decisions, what the messages say): the live ones
# are the rehearsal's starting point, a rules file may change them. Never where things
# are, who may do what, how to reach a provider or where telemetry goes.
RULE_PREFIXES = ("ORDERS_WATCHER_", "RISK_", "OUTREACH_")
NOT_RULES = ("_URL", "_PORT", "_HOST", "_TOKEN", "_SECRET", "_KEY", "_PASSWORD", "_PREFIX",
             "_DIR", "_CLOCK", "_TARGET", "_SERVERS", "_FORMAT", "_SID", "_STORE", "_FILE",
             "_RETENTION_MS")  # fmt: skip
NOT_RULES_ANYWHERE = ("TWILIO", "SENDGRID", "ZENDESK", "TRACING", "OTEL", "STUDIO", "HELPDESK")


def is_rule(key: str) -> bool:
    """May a rehearsal take this setting (from the live environment, or a rules file)?"""
    return (
        key.startswith(RULE_PREFIXES)
        and not key.endswith(NOT_RULES)
        and not any(part in key for part in NOT_RULES_ANYWHERE)
    )


class RulesError(ValueError):
    """A rules file that would change more than rules."""


def read_rules(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines (blank lines and `#` comments skipped): the settings of the
    services to rehearse with, e.g. ORDERS_WATCHER_STALL_HOURS=24."""
    rules: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isupper():
            raise RulesError(f"{path}:{n}: not KEY=VALUE")
        if not is_rule(key):
            raise RulesError(f"{path}:{n}: {key} is not a rule setting a rehearsal may change")
        rules[key] = value.strip()
    return rules


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Namespace:
    """One rehearsal's topics, databases and processes (`rules`: the settings to try,
    over the live ones)."""

    def __init__(self, bootstrap: str, work: Path, rules: dict[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.work = work.resolve()
        self.prefix = f"rehearsal-{secrets.token_hex(4)}."
        self.rules = dict(rules or {})
        self.ports = {name: _free_port() for name in (*SERVICES, "grpc")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        # Its own: preferences' tokens, offer codes and unsubscribe links.
        self._secrets = {
            name: secrets.token_hex(16) for name in ("read", "write", "offer", "unsub")
        }

    @staticmethod
    def live_rules() -> dict[str, str]:
        """The rule settings of the environment it was started in (the live ones)."""
        return {k: v for k, v in os.environ.items() if is_rule(k)}

    def env(self) -> dict[str, str]:
        """The services' environment: the cluster, the live rules, the rules to try,
        and the rehearsal's own everything else."""
        env = {k: v for k, v in os.environ.items() if k in PASSED_ON}
        env |= {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON_PREFIXES)}
        env |= self.live_rules()
        token, own = self._secrets["read"], self._secrets
        grpc = f"127.0.0.1:{self.ports['grpc']}"
        env |= {
            "PYTHONPATH": str(ROOT),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "OUTREACH_TOPIC_PREFIX": self.prefix,
            "OUTREACH_CLOCK": "event",
            "OUTREACH_DATA_DIR": str(self.work),
            "LOG_LEVEL": "WARNING",
            "PREFERENCES_GRPC_PORT": str(self.ports["grpc"]),
            "PREFERENCES_GRPC_TARGET": grpc,
            "PREFERENCES_READ_TOKEN": token,
            "PREFERENCES_WRITE_TOKEN": own["write"],
            "OUTREACH_PREFERENCES_TOKEN": token,
            "OUTREACH_PUBLIC_BASE_URL": "https://rehearsal.invalid",
            "OUTREACH_OFFER_SECRET": own["offer"],
            "OUTREACH_UNSUBSCRIBE_SECRET": own["unsub"],
        }
        env |= {port: str(self.ports[name]) for name, (_, port) in SERVICES.items()}
        return env | self.rules

    def create_topics(self, partitions: int) -> None:
        """Its topics, kept whatever the records' age (a replay of an older archive must
        not lose its input to retention; they are deleted at the end)."""
        from common.admin import ensure_topics

        self.work.mkdir(parents=True, exist_ok=True)
        specs = [replace(t, retention_ms=-1) for t in all_topics(self.prefix, partitions)]
        ensure_topics(self.bootstrap, specs)  # returns once every partition has a leader

    def start(self, timeout_s: float = 120) -> None:
        """The four services, once the input is in their topics."""
        env = self.env()
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        for name, (module, _) in SERVICES.items():
            with uninterrupted():  # a service started is a service known, to be stopped
                log = (self.work / "logs" / f"{name}.log").open("ab")
                self._logs.append(log)
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not all(self.ready(name) for name in SERVICES):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the rehearsal's services did not start: {self.work}/logs")
            time.sleep(0.5)

    def ready(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            log = (self.work / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the rehearsal's {name} exited ({proc.returncode}):\n{log}")
        try:
            url = f"http://127.0.0.1:{self.ports[name]}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def topics(self) -> list[str]:
        from kafka import KafkaConsumer

        from common.kafka_security import client_options

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","), **client_options())
        try:
            return sorted(t for t in consumer.topics() if t.startswith(self.prefix))
        finally:
            consumer.close()

    def stop(self, *, delete_topics: bool = True) -> None:
        """The services stopped (by pid, those it started), its topics deleted; a second
        Ctrl-C or SIGTERM meanwhile waits until that is done."""
        with uninterrupted():
            self._stop(delete_topics)

    def _stop(self, delete_topics: bool) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        if delete_topics:
            self._delete_topics()

    def _delete_topics(self) -> None:
        from kafka.admin import KafkaAdminClient

        from common.kafka_security import client_options

        names = self.topics()
        if names:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap.split(","), **client_options()
            )
            try:
                admin.delete_topics(names)
            finally:
                admin.close()

    def at_rest(self, quiet_s: float, timeout_s: float) -> None:
        """Until nothing moves: no topic of the namespace grows for `quiet_s` (the
        services' marks aside) and every consumer group has committed all it read."""
        from services.outreach.rehearsal.rest import wait_at_rest

        wait_at_rest(self.bootstrap, self.prefix, quiet_s, timeout_s, skip=(WATERMARKS,))


@contextmanager
def uninterrupted() -> Iterator[None]:
    """SIGINT and SIGTERM that come during the block take effect after it (the clean-up
    or the start of a service is not cut in half). Python runs signal handlers in the
    main thread only, so elsewhere the block is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {
        sig: signal.signal(sig, lambda n, _: caught.append(n)) for sig in held
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():  # (None: one set outside Python)
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])


__all__ = ["Namespace", "RulesError", "read_rules"]
