"""Status callbacks as providers send them: signed POSTs to a webhook, some time after a
message was accepted, retried when the receiver fails, and, on request, faulty.

A `CallbackDispatcher` belongs to one double. The double builds `Callback`s (what to
say, to which URL) and an encoder (how the provider serialises and signs a POST); the
dispatcher owns time: one background thread posts callbacks in due order.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

#: (original URL, payloads) -> (body, headers): serialises and signs one POST.
Encoder = Callable[[str, list[dict[str, Any]]], tuple[bytes, dict[str, str]]]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 5.0) -> int:
    """POST `body`; the HTTP status the receiver answered. Connection errors and
    timeouts raise (OSError / urllib.error.URLError)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def post_reading(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float = 5.0
) -> tuple[int, str]:
    """POST `body`; the HTTP status and the body the receiver answered."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        exc.close()
        return int(exc.code), text


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature for a form POST to `url` (the URL as the receiver knows it)."""
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(auth_token).compute_signature(url, params))


def sendgrid_signature(key: ec.EllipticCurvePrivateKey, timestamp: str, payload: str) -> str:
    """X-Twilio-Email-Event-Webhook-Signature: base64 DER ECDSA/SHA-256 over
    timestamp + payload."""
    signature = key.sign((timestamp + payload).encode(), ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


@dataclass(frozen=True)
class Callback:
    """One status update for one message: `payload` (Twilio form parameters, or one
    SendGrid event) for `url`, the original webhook URL that signatures cover. `name`
    (status or event) and `decision_id` only label the dispatcher's log."""

    url: str
    payload: dict[str, Any]
    name: str
    decision_id: str | None = None


@dataclass(order=True)
class _Due:
    at: float  # time.monotonic()
    seq: int
    url: str = field(compare=False)
    callbacks: list[Callback] = field(compare=False)
    attempt: int = field(default=1, compare=False)
    duplicated: bool = field(default=False, compare=False)  # duplicate decided already


class CallbackDispatcher:
    """Posts scheduled callbacks when due, signed by `encode`, to `route(url)`.

    Delivery: a connection error or an HTTP status >= 500 is retried up to `max_retries`
    times, `backoff_s` doubling up to `max_backoff_s`; a 4xx is final. With `batch`,
    callbacks for one URL falling due within `batch_window_s` of each other go out as
    one POST (SendGrid).
    Every POST (and every callback dropped) is appended to `log` as a dict: url,
    original_url, events (names), decision_id, status (HTTP status or None), error
    (text or None), attempt (1 = first try), dropped (bool), time (time.time()).

    Fault modes (plain attributes and `outage`, safe to change while running):
    `duplicate` posts every callback twice; `reorder` swaps the due times of a
    message's steps, so the final status comes before the intermediate one;
    `extra_delay_s` makes callbacks late; `contradict` follows a success with a stale
    contradicting failure `contradict_after_s` later. `reorder`, `extra_delay_s` and
    `contradict` apply to callbacks scheduled while they are set; `duplicate` and
    `outage` to callbacks falling due while they are set.
    """

    def __init__(self, encode: Encoder, *, batch: bool = False, timeout_s: float = 5.0) -> None:
        self.encode = encode
        self.batch = batch
        self.batch_window_s = 0.02
        self.timeout_s = timeout_s
        self.route: Callable[[str], str] = lambda url: url
        self.max_retries = 5
        self.backoff_s = 0.2
        self.max_backoff_s = 2.0
        self.duplicate = False
        self.reorder = False
        self.extra_delay_s = 0.0
        self.contradict = False
        self.contradict_after_s = 0.3
        self.log: list[dict[str, Any]] = []
        self._queue: list[_Due] = []
        self._in_flight = 0
        self._outage = False
        self._hold = True
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    # --- scheduling ----------------------------------------------------------------

    def schedule(
        self, steps: Sequence[tuple[float, Callback]], contradiction: Callback | None = None
    ) -> None:
        """Post each step's callback its delay (s) from now, plus `extra_delay_s`. The
        steps of one message come in order, the final status last; with `reorder` the
        delays are reversed. With `contradict`, `contradiction` (if given) follows the
        last step by `contradict_after_s`."""
        delays = [delay for delay, _ in steps]
        if self.reorder:
            delays.reverse()
        plan = [(delay, callback) for delay, (_, callback) in zip(delays, steps, strict=True)]
        if contradiction is not None and self.contradict:
            plan.append((max(delays, default=0.0) + self.contradict_after_s, contradiction))
        start = time.monotonic() + self.extra_delay_s
        with self._cond:
            for delay, callback in plan:
                self._push(_Due(start + delay, next(self._seq), callback.url, [callback]))
            self._cond.notify_all()

    def outage(self, on: bool, hold: bool = True) -> None:
        """While on, nothing is posted: callbacks falling due are kept and posted (late)
        when it ends with `hold`, dropped (and logged as such) without."""
        with self._cond:
            self._outage, self._hold = on, hold
            self._cond.notify_all()

    def pending(self) -> int:
        """Callbacks neither posted (finally) nor dropped yet, retries included."""
        with self._cond:
            return self._pending()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Return once nothing is pending; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self._pending()} callbacks still pending after {timeout}s"
                    )
                self._cond.wait(remaining)

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._run, name="callbacks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; callbacks not yet posted are forgotten."""
        with self._cond:
            self._running = False
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)
            self._thread = None

    # --- the thread ----------------------------------------------------------------

    def _push(self, due: _Due) -> None:
        heapq.heappush(self._queue, due)

    def _pending(self) -> int:
        return sum(len(due.callbacks) for due in self._queue) + self._in_flight

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    return
                ready = self._take_due()
                if not ready:
                    self._cond.wait(self._idle_wait())
                    continue
                self._in_flight += sum(len(due.callbacks) for due in ready)
            for due in ready:
                self._deliver(due)

    def _idle_wait(self) -> float:
        """How long the thread may sleep (bounded; woken early by schedule/outage)."""
        if not self._queue or (self._outage and self._hold):
            return 0.5
        return min(max(self._queue[0].at - time.monotonic(), 0.0), 0.5)

    def _take_due(self) -> list[_Due]:
        """Pop what is due (under the lock): [] during a holding outage; dropped and
        logged during a dropping one; merged per URL when batching."""
        if self._outage and self._hold:
            return []
        now = time.monotonic()
        ready: list[_Due] = []
        if not self._queue or self._queue[0].at > now:
            return ready
        horizon = now + (self.batch_window_s if self.batch else 0.0)
        while self._queue and self._queue[0].at <= horizon:
            ready.append(heapq.heappop(self._queue))
        if self._outage:
            for due in ready:
                self._log(due, due.url, None, "dropped: outage", dropped=True)
            self._cond.notify_all()
            return []
        return self._merged(ready) if self.batch else ready

    def _merged(self, ready: list[_Due]) -> list[_Due]:
        """First tries for one URL as one POST; retries and duplicates go alone."""
        merged: list[_Due] = []
        by_url: dict[str, _Due] = {}
        for due in ready:
            first = by_url.get(due.url)
            if first is not None and due.attempt == 1 and not due.duplicated:
                first.callbacks.extend(due.callbacks)
                continue
            merged.append(due)
            if due.attempt == 1 and not due.duplicated:
                by_url[due.url] = due
        return merged

    def _deliver(self, due: _Due) -> None:
        """One POST of `due`; then, under the lock, its duplicate and retry if any."""
        target, status, error = due.url, None, None
        try:
            target = self.route(due.url)
            body, headers = self.encode(due.url, [c.payload for c in due.callbacks])
            status = post(target, body, headers, self.timeout_s)
        except Exception as exc:  # refused, reset, timed out, garbled: all worth a retry
            error = f"{type(exc).__name__}: {exc}"
        with self._cond:
            self._log(due, target, status, error)
            if not due.duplicated and self.duplicate:
                copy = _Due(time.monotonic(), next(self._seq), due.url, due.callbacks, 1, True)
                self._push(copy)
            failed = error is not None or (status is not None and status >= 500)
            if failed and due.attempt <= self.max_retries:
                backoff = min(self.backoff_s * 2 ** (due.attempt - 1), self.max_backoff_s)
                retry_at = time.monotonic() + backoff
                self._push(
                    _Due(retry_at, next(self._seq), due.url, due.callbacks, due.attempt + 1, True)
                )
            self._in_flight -= len(due.callbacks)
            self._cond.notify_all()

    def _log(
        self, due: _Due, url: str, status: int | None, error: str | None, dropped: bool = False
    ) -> None:
        self.log.append(
            {
                "url": url,
                "original_url": due.url,
                "events": [c.name for c in due.callbacks],
                "decision_id": next((c.decision_id for c in due.callbacks if c.decision_id), None),
                "status": status,
                "error": error,
                "attempt": due.attempt,
                "dropped": dropped,
                "time": time.time(),
            }
        )
