"""Rendering off the event loop, under the hard limits of a process (the `Renderer`
port: `RenderPool` in services, `InlineRenderer` for unit tests).

A template is code a marketer writes. The sandbox (domain/rendering.py) bounds what it
may build and how often it may loop, but not every way to spend CPU: a render, a
preview or a publish check runs in a worker process of this pool, with a wall-time limit
(`timeout_s`: the process is killed and replaced, the render fails with a RenderError)
counted from the request, never from the worker's start (a worker says it is ready once
its imports are done, and the pool waits for that up to `STARTUP_S`), and an address-space
limit (`memory_mb`: a MemoryError inside, a RenderError outside).
The service's event loop only waits on a pipe, so its health endpoints, webhooks and
consumers stay responsive while a bomb is being defused.

The pipe carries JSON lines (datetimes and decimals tagged), never pickles: a worker is
where untrusted template code runs, and nothing it sends back is executed.

    python -m services.outreach.adapters.render_pool    # one worker (started by the pool)
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from common.logs import get_logger
from services.outreach.domain.rendering import (
    Problem,
    RenderedMessage,
    RenderError,
    TemplateSource,
    render,
    validate_template,
)
from services.outreach.domain.sms import count

log = get_logger(__name__)
LINE_LIMIT = 8 * 1024 * 1024  # a rendered message with its parts, as one JSON line
STARTUP_S = 60.0  # a worker's imports on a loaded machine; not the template's time
READY = {"ready": True}


# --- the wire ------------------------------------------------------------------------


def _tagged(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    raise TypeError(f"cannot send {type(value).__name__} to a render worker")


def _untagged(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$dt" in obj:
            return datetime.fromisoformat(obj["$dt"])
        if "$dec" in obj:
            return Decimal(obj["$dec"])
    return obj


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, default=_tagged, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Any:
    return json.loads(line, object_hook=_untagged)


# --- the port ------------------------------------------------------------------------


class Renderer(abc.ABC):
    """Renders and validates templates. `render` returns the message or raises
    RenderError (the template's fault or a limit reached); `validate` returns the
    problems of `validate_template` (a limit reached is one of them)."""

    @abc.abstractmethod
    async def render(
        self, template: TemplateSource, context: Mapping[str, Any], *, locale: str, timezone: str
    ) -> RenderedMessage: ...

    @abc.abstractmethod
    async def validate(
        self,
        source: TemplateSource,
        sample_contexts: Mapping[str, Mapping[str, Any]],
        *,
        timezone: str | None = None,
        marketing: bool | None = None,
    ) -> list[Problem]: ...

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class InlineRenderer(Renderer):
    """In this process, with the sandbox's bounds but no process limits: for unit tests
    and tools, never for a service."""

    async def render(
        self, template: TemplateSource, context: Mapping[str, Any], *, locale: str, timezone: str
    ) -> RenderedMessage:
        return render(template, context, locale=locale, timezone=timezone)

    async def validate(
        self,
        source: TemplateSource,
        sample_contexts: Mapping[str, Mapping[str, Any]],
        *,
        timezone: str | None = None,
        marketing: bool | None = None,
    ) -> list[Problem]:
        return validate_template(source, sample_contexts, timezone=timezone, marketing=marketing)


# --- the pool (in the service) ---------------------------------------------------------


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def call(self, request: Mapping[str, Any], timeout_s: float) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(encode(request))
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            raise EOFError("the render worker exited")
        return decode(line)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class RenderPool(Renderer):
    """Renders and validates templates in `processes` worker processes, each call under
    `timeout_s` and `memory_mb` (a worker that dies or runs over is replaced). Safe to
    call from the event loop: it only waits."""

    def __init__(self, *, processes: int = 2, timeout_s: float = 2.0, memory_mb: int = 512):
        self.processes = max(1, processes)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._idle: asyncio.Queue[_Worker] | None = None
        self._workers: set[_Worker] = set()

    async def start(self) -> None:
        if self._idle is not None:
            return
        self._idle = asyncio.Queue()
        for _ in range(self.processes):
            self._idle.put_nowait(await self._spawn())

    async def stop(self) -> None:
        for worker in list(self._workers):
            worker.kill()
            with contextlib.suppress(Exception):
                await worker.proc.wait()
        self._workers.clear()
        self._idle = None

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            str(self.memory_mb),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        worker = _Worker(proc)
        self._workers.add(worker)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_S)
        except TimeoutError:
            line = b""
        if not line or decode(line) != READY:
            worker.kill()
            self._workers.discard(worker)
            raise RuntimeError(f"a render worker did not start within {STARTUP_S:g} s")
        return worker

    async def _ask(self, request: dict[str, Any], what: str) -> Any:
        if self._idle is None:
            await self.start()
        assert self._idle is not None
        worker = await self._idle.get()
        healthy = False
        try:
            reply = await worker.call(request, self.timeout_s)
            healthy = True
        except TimeoutError:
            log.warning("render_timeout", what=what, limit_s=self.timeout_s)
            raise RenderError(
                f"the template took longer than {self.timeout_s:g} s to render", kind="sandbox"
            ) from None
        except (EOFError, ConnectionError, ValueError) as exc:
            log.warning("render_worker_died", what=what, error=type(exc).__name__)
            raise RenderError(
                "the template stopped its render process (too much memory?)", kind="sandbox"
            ) from None
        finally:
            # A worker that did not answer (or whose caller went away) may still answer
            # later: it is replaced, never asked again.
            if not healthy:
                worker.kill()
                self._workers.discard(worker)
                worker = await self._spawn()
            self._idle.put_nowait(worker)
        if "error" in reply:
            raise RenderError(**reply["error"])
        return reply["ok"]

    async def render(
        self, template: TemplateSource, context: Mapping[str, Any], *, locale: str, timezone: str
    ) -> RenderedMessage:
        reply = await self._ask(
            {
                "op": "render",
                "template": asdict(template),
                "context": dict(context),
                "locale": locale,
                "timezone": timezone,
            },
            f"{template.message_kind}/{template.channel}/{template.locale}",
        )
        text = reply["text"]
        segments = count(text) if template.channel != "email" else None
        return RenderedMessage(reply["subject"], reply["html"], text, segments)

    async def validate(
        self,
        source: TemplateSource,
        sample_contexts: Mapping[str, Mapping[str, Any]],
        *,
        timezone: str | None = None,
        marketing: bool | None = None,
    ) -> list[Problem]:
        """validate_template in a worker; a check that reaches a limit is an error of
        the template (it would fail the same way for a customer)."""
        try:
            reply = await self._ask(
                {
                    "op": "validate",
                    "template": asdict(source),
                    "samples": {k: dict(v) for k, v in sample_contexts.items()},
                    "timezone": timezone,
                    "marketing": marketing,
                },
                f"validate {source.message_kind}/{source.channel}/{source.locale}",
            )
        except RenderError as exc:
            return [Problem("error", "limit", exc.reason)]
        return [Problem(**p) for p in reply]


# --- a worker (its own process) --------------------------------------------------------


def _serve(memory_mb: int) -> None:
    """Answer requests from stdin on the original stdout, one JSON line each; anything
    else printed goes to stderr."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr
    out.write(encode(READY))  # the imports are done: from here on, time is the template's
    out.flush()
    for line in sys.stdin.buffer:
        request = decode(line)
        try:
            template = TemplateSource(**request["template"])
            if request["op"] == "render":
                rendered = render(
                    template,
                    request["context"],
                    locale=request["locale"],
                    timezone=request["timezone"],
                )
                reply: dict[str, Any] = {
                    "ok": {
                        "subject": rendered.subject,
                        "html": rendered.html,
                        "text": rendered.text,
                    }
                }
            else:
                problems = validate_template(
                    template,
                    request["samples"],
                    timezone=request["timezone"],
                    marketing=request["marketing"],
                )
                reply = {"ok": [asdict(p) for p in problems]}
        except RenderError as exc:
            reply = {
                "error": {
                    "reason": exc.reason,
                    "part": exc.part,
                    "line": exc.line,
                    "kind": exc.kind,
                }
            }
        except MemoryError:
            reply = {"error": {"reason": "the template needs too much memory", "kind": "sandbox"}}
        out.write(encode(reply))
        out.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else 512)
