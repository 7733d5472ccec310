"""A threaded HTTP server on 127.0.0.1 with injectable faults and a record of requests.

Ground truth for tests: `messages` holds every message the double accepted (whatever the
client saw), `attempts` every request that reached it and what became of it.
"""

from __future__ import annotations

import abc
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from tests.doubles.callbacks import CallbackDispatcher

FaultKind = Literal[
    "status", "accept_then_status", "accept_then_timeout", "reset", "reset_after_accept", "slow"
]
#: Kinds that run the normal handling first (a valid message is accepted and recorded).
HANDLING_KINDS = frozenset(
    {"accept_then_status", "accept_then_timeout", "reset_after_accept", "slow"}
)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, **headers: str) -> Reply:
        return cls(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        )


@dataclass(frozen=True)
class Fault:
    """One scripted fault for one request.

    - ``status``: answer ``fault_reply`` (429 with Retry-After, 5xx) without accepting.
    - ``accept_then_status``: accept as usual, then answer ``fault_reply`` instead (an
      error from the normal handling, e.g. 400, is answered unchanged).
    - ``accept_then_timeout``: accept, hold the connection ``delay_s`` without a word,
      then close it.
    - ``reset``: read the request, accept nothing, close with a TCP RST.
    - ``reset_after_accept``: accept, then close with a TCP RST.
    - ``slow``: wait ``delay_s``, then handle and answer as usual.
    """

    status: int = 500
    retry_after: float | None = None
    kind: FaultKind = "status"
    delay_s: float = 0.0

    @property
    def label(self) -> str:
        """The `outcome` recorded in `attempts`, e.g. "status:429" or "reset"."""
        return f"{self.kind}:{self.status}" if self.kind.endswith("status") else self.kind


@dataclass(frozen=True)
class RequestInfo:
    """What a fault policy sees of a request: `index` counts requests since start/reset
    from 0; `creates` is True when it would create a message."""

    method: str
    path: str
    index: int
    creates: bool


Policy = Callable[[RequestInfo], Fault | None]


def rate_limited(per_s: float, burst: float | None = None, retry_after: float = 1.0) -> Policy:
    """A provider's rate limit, as a policy: message creations beyond `per_s` a second
    (bursts up to `burst`, default one second's worth) are answered 429 with
    Retry-After; other requests (lookups) are not limited."""
    capacity = burst if burst is not None else per_s
    bucket = {"tokens": capacity, "at": time.monotonic()}

    def policy(info: RequestInfo) -> Fault | None:
        if not info.creates:
            return None
        now = time.monotonic()
        tokens = min(capacity, bucket["tokens"] + (now - bucket["at"]) * per_s)
        bucket["at"] = now
        if tokens >= 1:
            bucket["tokens"] = tokens - 1
            return None
        bucket["tokens"] = tokens
        return Fault(429, retry_after=retry_after)

    return policy


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for held or idle keep-alive connections
    double: ProviderDouble


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *_: Any) -> None:
        return None

    def _serve(self) -> None:
        self.server.double._serve(self)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def answer(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def hang_up(self) -> None:
        """Close without an answer (an orderly FIN once the handler returns)."""
        self.close_connection = True

    def reset_connection(self) -> None:
        """Close at once with a TCP RST (SO_LINGER on, 0 s) instead of an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the makefile() holds a reference that keeps the socket open
        self.connection.close()
        self.close_connection = True


class ProviderDouble(abc.ABC):
    """Subclasses implement `handle`, `fault_reply` and `creates_message`.

    Faults come from a FIFO queue (`fail_next`, `inject`) and, when it is empty, from an
    optional `set_policy` callable. Sleeps never hold the lock, and stop() cuts them short.
    Status callbacks go through `dispatcher`, which `encode_callback` serialises and signs.

    `messages`: every accepted message, stamped `received_at` and `accepted_at`.
    `attempts`: one dict per request, in arrival order: method, path, received_at,
    outcome ("pending" while handled, then "accepted", "rejected", "read" for a GET, or
    the applied fault's `label`), accepted (bool), status (answered, None for no answer).
    """

    batch_callbacks = False  # True: callbacks due together for one URL share a POST

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.messages: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.dispatcher = CallbackDispatcher(self.encode_callback, batch=self.batch_callbacks)
        self._faults: list[Fault] = []
        self._policy: Policy | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- test API ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None, "double not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, n: int, status: int = 429, retry_after: float | None = None) -> None:
        """The next `n` requests of any kind get a plain `status` fault."""
        self.inject(Fault(status, retry_after), n)

    def inject(self, fault: Fault, n: int = 1) -> None:
        """Queue `fault` for the next `n` requests (FIFO, before the policy)."""
        with self._lock:
            self._faults.extend([fault] * n)

    def set_policy(self, policy: Policy | None) -> None:
        """Consult `policy` (under the lock, so keep it quick) for every request that
        finds the fault queue empty; None answers normally. `set_policy(None)` clears."""
        with self._lock:
            self._policy = policy

    def reset(self) -> None:
        """Forget messages, requests, attempts, queued faults and the policy."""
        with self._lock:
            self.messages.clear()
            self.requests.clear()
            self.attempts.clear()
            self._faults.clear()
            self._policy = None

    def wait_for_messages(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"expected {n} messages, got {len(self.messages)}")

    def record(self, message: dict[str, Any]) -> None:
        """Accept a message: stamp `received_at`/`accepted_at` (time.time()), keep it in
        `messages` and tell `accepted` (which schedules status callbacks)."""
        now = time.time()
        message["received_at"] = getattr(self._local, "received_at", now)
        message["accepted_at"] = now
        with self._lock:
            self.messages.append(message)
        self._local.accepted = True
        self.accepted(message)

    def start(self) -> ProviderDouble:
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.double = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.dispatcher.start()
        return self

    def stop(self) -> None:
        """Stop serving at once: held connections are closed, pending callbacks dropped."""
        self._stopping.set()
        self.dispatcher.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ProviderDouble:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    # --- serving -------------------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _admit(
        self, method: str, path: str, headers: dict[str, str], body: bytes, received_at: float
    ) -> tuple[dict[str, Any], Fault | None]:
        """Log the request and pick its fault (queue first, then the policy)."""
        attempt = {
            "method": method,
            "path": path,
            "received_at": received_at,
            "outcome": "pending",
            "accepted": False,
            "status": None,
        }
        with self._lock:
            info = RequestInfo(method, path, len(self.requests), self.creates_message(method, path))
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            self.attempts.append(attempt)
            if self._faults:
                fault: Fault | None = self._faults.pop(0)
            else:
                fault = self._policy(info) if self._policy else None
        return attempt, fault

    def _serve(self, handler: _Handler) -> None:
        received_at = time.time()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if self._stopping.is_set():
            return handler.hang_up()
        method, path = handler.command, handler.path
        headers = {k.lower(): v for k, v in handler.headers.items()}
        attempt, fault = self._admit(method, path, headers, body, received_at)
        self._pause(self.latency_s)
        if fault is not None and fault.kind == "slow":
            self._pause(fault.delay_s)
        reply, accepted = None, False
        if fault is None or fault.kind in HANDLING_KINDS:
            self._local.received_at, self._local.accepted = received_at, False
            reply = self.handle(method, path, headers, body)
            accepted = self._local.accepted
        reply, outcome = self._apply(fault, method, reply, accepted)
        with self._lock:
            attempt.update(
                outcome=outcome, accepted=accepted, status=reply.status if reply else None
            )
        if reply is not None:
            handler.answer(reply)
        elif fault is not None and fault.kind == "accept_then_timeout":
            self._pause(fault.delay_s)
            handler.hang_up()
        else:
            handler.reset_connection()

    def _apply(
        self, fault: Fault | None, method: str, reply: Reply | None, accepted: bool
    ) -> tuple[Reply | None, str]:
        """The answer to give (None: no answer at all) and the outcome to log."""
        if fault is None or fault.kind == "slow":
            plain = "accepted" if accepted else "read" if method == "GET" else "rejected"
            return reply, fault.label if fault else plain
        if fault.kind == "accept_then_status" and reply is not None and reply.status >= 400:
            return reply, "rejected"
        if fault.kind in ("status", "accept_then_status"):
            return self.fault_reply(fault), fault.label
        return None, fault.label

    # --- to implement --------------------------------------------------------------

    @abc.abstractmethod
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one request as the provider would (calling `record` to accept)."""

    @abc.abstractmethod
    def fault_reply(self, fault: Fault) -> Reply:
        """The provider's answer for a scripted 429 or 5xx."""

    @abc.abstractmethod
    def creates_message(self, method: str, path: str) -> bool:
        """Whether this request would create a message (what fault policies key on)."""

    def accepted(self, message: dict[str, Any]) -> None:
        """Called after a message is recorded; subclasses schedule status callbacks."""
        return None

    def encode_callback(
        self, url: str, payloads: list[dict[str, Any]]
    ) -> tuple[bytes, dict[str, str]]:
        """Body and headers (signature included) of one callback POST to `url`."""
        raise NotImplementedError(f"{type(self).__name__} sends no callbacks")
