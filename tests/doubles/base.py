"""A threaded HTTP server on 127.0.0.1 with scripted faults and a record of requests."""

from __future__ import annotations

import abc
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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


@dataclass
class Fault:
    status: int
    retry_after: float | None = None


class ProviderDouble(abc.ABC):
    """Subclasses implement `handle(method, path, headers, body) -> Reply`."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.messages: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- test API ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None, "double not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, n: int, status: int = 429, retry_after: float | None = None) -> None:
        with self._lock:
            self._faults.extend(Fault(status, retry_after) for _ in range(n))

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.requests.clear()
            self._faults.clear()

    def wait_for_messages(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"expected {n} messages, got {len(self.messages)}")

    def record(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.messages.append(message)

    def start(self) -> ProviderDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                return None

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with double._lock:
                    double.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": headers,
                            "body": body,
                        }
                    )
                    fault = double._faults.pop(0) if double._faults else None
                if double.latency_s:
                    time.sleep(double.latency_s)
                reply = (
                    double.fault_reply(fault)
                    if fault
                    else double.handle(self.command, self.path, headers, body)
                )
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ProviderDouble:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    # --- to implement --------------------------------------------------------------

    @abc.abstractmethod
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        """Answer one request as the provider would."""

    @abc.abstractmethod
    def fault_reply(self, fault: Fault) -> Reply:
        """The provider's answer for a scripted 429 or 5xx."""
