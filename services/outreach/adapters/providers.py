"""Ports to the message providers, and their adapters over the official SDKs.

Contract of `MessageSender.send`: returns a `SendResult` once the provider accepted the
message; raises `TransientProviderError` (429, 5xx, timeouts, connection failures: it
may work later, with the provider's Retry-After when it gave one; `maybe_sent` says
whether the provider may have taken it all the same) or `PermanentProviderError` (the
provider will never accept this message: invalid number, unsubscribed recipient, bad
credentials). Adapters do not retry: the delivery pipeline owns retries, backoff,
fallbacks and the reconciliation of sends in doubt. Nothing here logs an address or a
body.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextvars
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from common.metrics import PROVIDER_CIRCUIT_OPEN, PROVIDER_SECONDS
from services.outreach.domain.guards import CircuitBreaker, GroupShare, TokenBucket

LOOKUP_SKEW = timedelta(minutes=2)  # our clock against the provider's
LOOKUP_LIMIT = 50  # the newest messages to one number we look through


@dataclass(frozen=True)
class OutboundMessage:
    decision_id: str
    channel: str  # email | sms | whatsapp
    to: str
    subject: str | None
    html: str | None
    text: str
    message_kind: str
    intent: str
    unsubscribe_url: str | None = None
    status_callback_url: str | None = None
    test: bool = False


@dataclass(frozen=True)
class SendResult:
    provider: str
    provider_message_id: str
    outbox: bool = False


@dataclass(frozen=True)
class Lookup:
    """Whether the provider holds a message we may or may not have sent (a crash, or a
    timeout, between our call and our record of its answer): `found` (with its id),
    `absent` (certainly not there), `unknown` (this provider can never tell) or `retry`
    (it could not be asked just now)."""

    state: str  # found | absent | unknown | retry
    provider_message_id: str | None = None

    @classmethod
    def found(cls, provider_message_id: str) -> Lookup:
        return cls("found", provider_message_id)


ABSENT = Lookup("absent")
UNKNOWN = Lookup("unknown")
RETRY = Lookup("retry")


class TransientProviderError(Exception):
    """It may work later: 429, 5xx, timeouts, connection failures, an open breaker.

    `retry_after` is the provider's Retry-After in seconds when it sent one.
    `maybe_sent` is True when the request may have reached the provider (a read timeout,
    a reset connection, a 5xx): neither SDK takes an idempotency key, so trying again
    could duplicate the message — the pipeline asks the provider first.
    `throttled` is True for "not now" answers that say nothing is wrong with the message
    or the provider (429, our own rate limit or open breaker): they do not count as
    failed attempts."""

    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        status: int | None = None,
        *,
        maybe_sent: bool = False,
        throttled: bool = False,
    ):
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status
        self.maybe_sent = maybe_sent
        self.throttled = throttled


class PermanentProviderError(Exception):
    """The provider will never accept this message as it is.

    `code` is the provider's error code (Twilio's 21211, SendGrid's HTTP status, or
    "config"); `category` groups them: auth (bad credentials: every message will fail,
    stop sending), opt_out (the recipient unsubscribed: record the opt-out), recipient
    (invalid or unreachable address: try the next channel), content (the message is
    rejected), config (our sender setup), rejected (anything else). `reason` never
    contains the recipient's address."""

    def __init__(
        self, code: str, reason: str, *, opt_out: bool = False, category: str = "rejected"
    ) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.opt_out = opt_out
        self.category = "opt_out" if opt_out else category


class MessageSender(abc.ABC):
    provider: str = "unknown"

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver to the provider; see the module docstring for the error contract."""

    async def find_sent(self, message: OutboundMessage, since: datetime) -> Lookup:
        """Did the provider accept `message` (claimed for sending at `since`)? `absent`
        only when the provider can say so for certain; `unknown` when it never can;
        `retry` when it could not be asked now."""
        return UNKNOWN

    async def close(self) -> None:  # noqa: B027 - most senders hold nothing to let go of
        """Let go of connections (the worker is stopping)."""


class BlockingSdkSender(MessageSender):
    """A sender over a synchronous SDK: its calls run in a pool of its own, sized to
    the sends a worker has in flight, so that slow provider answers neither starve the
    event loop's default executor nor wait there for a thread while their timeout runs
    (a call that has not started when its time is up never starts)."""

    def __init__(self, max_in_flight: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(
            max_workers=max(1, max_in_flight), thread_name_prefix=f"{self.provider}-sdk"
        )

    async def _in_pool(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)


class OutboxSender(MessageSender):
    """No credentials: the message is rendered and recorded (by the ledger) exactly as it
    would be sent, and nothing leaves the machine."""

    provider = "outbox"

    async def send(self, message: OutboundMessage) -> SendResult:
        return SendResult(self.provider, f"outbox-{message.decision_id}", outbox=True)

    async def find_sent(self, message: OutboundMessage, since: datetime) -> Lookup:
        return ABSENT  # nothing left the machine: recording it again is harmless


@dataclass
class RecordingSender(MessageSender):
    """A fake for unit tests: records messages; scripted errors come out first."""

    provider: str = "recording"
    sent: list[OutboundMessage] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    async def send(self, message: OutboundMessage) -> SendResult:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(message)
        return SendResult(self.provider, f"rec-{len(self.sent)}")

    async def find_sent(self, message: OutboundMessage, since: datetime) -> Lookup:
        for i, sent in enumerate(self.sent, 1):
            if sent.decision_id == message.decision_id:
                return Lookup.found(f"rec-{i}")
        return ABSENT


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_EMAIL = re.compile(r"[^\s@'\"<>]+@[^\s@'\"<>]+")
_PHONE = re.compile(r"(?:whatsapp:)?\+?\d[\d ()-]{6,}\d")


def scrub(reason: str, address: str | None = None) -> str:
    """Provider error texts quote the recipient ("Invalid 'To' Phone Number: +49...");
    errors are logged and stored, addresses must not be."""
    if address:
        reason = reason.replace(address, "<recipient>")
    reason = _EMAIL.sub("<email>", reason)
    return _PHONE.sub("<number>", reason)[:200]


def with_decision_id(url: str, decision_id: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if query.get("decision_id") == decision_id:
        return url
    query["decision_id"] = decision_id
    return urlunsplit(parts._replace(query=urlencode(query)))


# Twilio codes that will never succeed for this recipient/sender.
TWILIO_OPT_OUT = {21610}
TWILIO_CATEGORY = {
    20003: "auth",
    20005: "auth",
    21211: "recipient",
    21214: "recipient",
    21408: "recipient",
    21612: "recipient",
    21614: "recipient",
    63016: "recipient",
    21602: "content",
    21617: "content",
    21603: "config",
    21604: "recipient",
    21606: "config",
    21659: "config",
    63007: "config",
}
TWILIO_PERMANENT = {
    21211,
    21214,
    21408,
    21602,
    21603,
    21604,
    21606,
    21610,
    21612,
    21614,
    21617,
    21659,
    63007,
    63016,
    20003,
}


#: The response headers of the Twilio call made last in this task (Retry-After on a 429).
_TWILIO_HEADERS: contextvars.ContextVar[Any] = contextvars.ContextVar("twilio_headers")


class TwilioMessageSender(MessageSender):
    """SMS and WhatsApp through the official twilio SDK's async client
    (messages.create_async over aiohttp): a send in flight holds a connection of a pool
    of `max_in_flight`, not a thread."""

    provider = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None,
        whatsapp_from: str | None,
        base_url: str = "https://api.twilio.com",
        timeout_s: float = 10.0,
        max_in_flight: int = 16,
    ) -> None:
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        class _PooledClient(AsyncTwilioHttpClient):  # type: ignore[misc]
            """The SDK's aiohttp client with a session made on first use (on the loop
            that sends), `max_in_flight` connections, its timeout on every request, and
            each response's headers kept for the task that asked."""

            session: Any

            def __init__(self) -> None:
                super().__init__(pool_connections=False, timeout=timeout_s, logger=quiet)

            async def request(self, *args: Any, **kwargs: Any) -> Any:
                if self.session is None:
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=max(1, max_in_flight))
                    )
                if kwargs.get("timeout") is None:
                    kwargs["timeout"] = timeout_s
                auth = kwargs.pop("auth", None)
                if auth is not None:  # as a header: aiohttp deprecates its BasicAuth
                    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
                    kwargs["headers"] = {**(kwargs.get("headers") or {}),
                                         "Authorization": f"Basic {token}"}  # fmt: skip
                response = await super().request(*args, **kwargs)
                _TWILIO_HEADERS.set(response.headers)
                return response

        # The SDK logs requests at INFO; keep its logger quiet so no address or body
        # can reach the logs whatever the root level.
        quiet = logging.getLogger("outreach.twilio_sdk")
        quiet.setLevel(logging.WARNING)
        self.http = _PooledClient()
        self.client = Client(account_sid, auth_token, http_client=self.http)
        self.client.api.base_url = base_url.rstrip("/")
        self.from_number = from_number
        self.whatsapp_from = whatsapp_from
        self.timeout_s = timeout_s

    async def close(self) -> None:
        if self.http.session is not None:
            await self.http.session.close()
            self.http.session = None

    def _addresses(self, message: OutboundMessage) -> tuple[str, str]:
        """(to, from) as Twilio writes them, `whatsapp:` prefixes included."""
        if message.channel == "whatsapp":
            if not self.whatsapp_from:
                raise PermanentProviderError(
                    "config", "TWILIO_WHATSAPP_FROM is not set", category="config"
                )
            to, sender = f"whatsapp:{message.to}", self.whatsapp_from
            if not sender.startswith("whatsapp:"):
                sender = f"whatsapp:{sender}"
        else:
            if not self.from_number:
                raise PermanentProviderError(
                    "config", "TWILIO_FROM_NUMBER is not set", category="config"
                )
            to, sender = message.to, self.from_number
        return to, sender

    async def _create(self, message: OutboundMessage) -> str:
        to, sender = self._addresses(message)
        kwargs: dict[str, Any] = {"to": to, "from_": sender, "body": message.text}
        if message.status_callback_url:
            kwargs["status_callback"] = with_decision_id(
                message.status_callback_url, message.decision_id
            )
        from twilio.base.exceptions import TwilioRestException

        try:
            created = await self.client.messages.create_async(**kwargs)
        except TwilioRestException as exc:
            # The response headers were kept in this task; carry Retry-After out.
            exc.retry_after = _retry_after(_TWILIO_HEADERS.get(None))
            raise
        return str(created.sid)

    async def send(self, message: OutboundMessage) -> SendResult:
        from twilio.base.exceptions import TwilioException, TwilioRestException

        started = time.perf_counter()
        outcome = "error"
        try:
            sid = await asyncio.wait_for(self._create(message), self.timeout_s + 1)
            outcome = "ok"
            return SendResult(self.provider, sid)
        except TwilioRestException as exc:
            code = int(exc.code) if exc.code else 0
            if exc.status == 429 or exc.status >= 500:
                raise TransientProviderError(
                    f"twilio HTTP {exc.status} ({code})",
                    retry_after=getattr(exc, "retry_after", None),
                    status=exc.status,
                    maybe_sent=exc.status >= 500,
                    throttled=exc.status == 429,
                ) from None
            category = TWILIO_CATEGORY.get(code) or ("auth" if exc.status in (401, 403) else "")
            raise PermanentProviderError(
                str(code or exc.status),
                scrub(str(exc.msg), message.to),
                opt_out=code in TWILIO_OPT_OUT,
                category=category or "rejected",
            ) from None
        except PermanentProviderError:
            raise
        except (TimeoutError, TwilioException, aiohttp.ClientError, OSError) as exc:
            raise TransientProviderError(
                f"twilio unreachable: {type(exc).__name__}", maybe_sent=_maybe_sent(exc)
            ) from None
        finally:
            PROVIDER_SECONDS.labels(self.provider, outcome).observe(time.perf_counter() - started)

    async def _find(self, message: OutboundMessage, since: datetime) -> Lookup:
        to, sender = self._addresses(message)
        earliest = since - LOOKUP_SKEW
        listed = await self.client.messages.list_async(to=to, from_=sender, limit=LOOKUP_LIMIT)
        for found in listed:
            created = found.date_created
            if created is not None and created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            if found.body == message.text and (created is None or created >= earliest):
                return Lookup.found(str(found.sid))
        return ABSENT

    async def find_sent(self, message: OutboundMessage, since: datetime) -> Lookup:
        """Twilio lists the messages to a number from ours: the same body, created since
        we claimed the send, is ours (bodies carry the decision's own offer code and
        names; two identical bodies to one person within minutes are ours twice)."""
        from twilio.base.exceptions import TwilioException

        try:
            return await asyncio.wait_for(self._find(message, since), self.timeout_s + 1)
        except PermanentProviderError:
            return UNKNOWN
        except (TimeoutError, TwilioException, aiohttp.ClientError, OSError):
            return RETRY  # ask again on the next round


class SendGridEmailSender(BlockingSdkSender):
    """Email through the official sendgrid SDK (v3 Mail Send)."""

    provider = "sendgrid"

    def __init__(
        self,
        api_key: str,
        from_email: str,
        *,
        from_name: str | None = None,
        base_url: str = "https://api.sendgrid.com",
        unsubscribe_mailto: str | None = None,
        reply_to: Callable[[str], str] | None = None,
        timeout_s: float = 10.0,
        max_in_flight: int = 16,
    ) -> None:
        super().__init__(max_in_flight)
        from sendgrid import SendGridAPIClient

        # python_http_client logs whole payloads (addresses, bodies) at DEBUG.
        logging.getLogger("python_http_client.client").setLevel(logging.INFO)
        self.client = SendGridAPIClient(api_key, host=base_url.rstrip("/"))
        self.client.client.timeout = timeout_s
        self.from_email = from_email
        self.from_name = from_name
        self.unsubscribe_mailto = unsubscribe_mailto
        self.reply_to = reply_to  # the reply-to address of a decision's email
        self.timeout_s = timeout_s

    def build(self, message: OutboundMessage) -> Any:
        from sendgrid.helpers.mail import Category, CustomArg, Header, Mail, ReplyTo

        mail = Mail(
            from_email=(self.from_email, self.from_name) if self.from_name else self.from_email,
            to_emails=message.to,
            subject=message.subject or "",
            plain_text_content=message.text,
            html_content=message.html or None,
        )
        for category in (message.message_kind, message.intent, "test" if message.test else None):
            if category:
                mail.add_category(Category(category))
        if self.reply_to is not None:
            mail.reply_to = ReplyTo(self.reply_to(message.decision_id))
        mail.add_custom_arg(CustomArg("decision_id", message.decision_id))
        mail.add_custom_arg(CustomArg("message_kind", message.message_kind))
        if message.unsubscribe_url:
            targets = [f"<{message.unsubscribe_url}>"]
            if self.unsubscribe_mailto:
                targets.append(f"<mailto:{self.unsubscribe_mailto}>")
            mail.add_header(Header("List-Unsubscribe", ", ".join(targets)))
            mail.add_header(Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        return mail

    def _send(self, message: OutboundMessage) -> str:
        try:
            mail = self.build(message).get()  # the request JSON
        except (KeyError, ValueError, TypeError, AttributeError):
            # The SDK's helper refuses some addresses before any request is made.
            raise PermanentProviderError(
                "invalid_request", "the SendGrid helper refused the message", category="recipient"
            ) from None
        response = self.client.send(mail)
        headers = response.headers or {}
        return str(headers.get("X-Message-Id") or headers.get("x-message-id") or "")

    async def send(self, message: OutboundMessage) -> SendResult:
        from python_http_client.exceptions import HTTPError

        started = time.perf_counter()
        outcome = "error"
        try:
            message_id = await asyncio.wait_for(
                self._in_pool(self._send, message), self.timeout_s + 1
            )
            outcome = "ok"
            return SendResult(self.provider, message_id or f"sg-{message.decision_id}")
        except PermanentProviderError:
            raise
        except HTTPError as exc:
            status = int(getattr(exc, "status_code", 0) or 0)
            if status == 429 or status >= 500:
                raise TransientProviderError(
                    f"sendgrid HTTP {status}",
                    retry_after=_retry_after(exc.headers),
                    status=status,
                    maybe_sent=status >= 500,
                    throttled=status == 429,
                ) from None
            body = (
                exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body)
            )
            category = {401: "auth", 403: "auth", 413: "content"}.get(status, "rejected")
            raise PermanentProviderError(
                str(status), scrub(body, message.to), category=category
            ) from None
        except (TimeoutError, OSError) as exc:
            raise TransientProviderError(
                f"sendgrid unreachable: {type(exc).__name__}", maybe_sent=_maybe_sent(exc)
            ) from None
        finally:
            PROVIDER_SECONDS.labels(self.provider, outcome).observe(time.perf_counter() - started)


def _maybe_sent(exc: BaseException) -> bool:
    """A refused, unresolvable or never-established connection did not reach the
    provider; a read timeout or a connection dropped mid-request may have (the provider
    can have taken the message and lost only its answer)."""
    text = f"{type(exc).__name__} {exc}".lower()
    never = (
        "refused",
        "name or service",
        "nodename",
        "no route",
        "unreachable",
        "connecttimeout",
        "connect timeout",
        "connectiontimeouterror",  # aiohttp: no connection within the timeout
        "cannot connect",  # aiohttp's ClientConnectorError
        "newconnectionerror",
    )
    return not any(word in text for word in never)


class GuardedSender(MessageSender):
    """Wraps a sender with a circuit breaker and a rate limit (per provider).

    While the breaker is open, calls fail fast as transient (the ledger reschedules them
    for when it may close); the rate limit waits for a token up to `max_wait_s`, then
    reports a transient error rather than stall the consumer.
    """

    def __init__(
        self,
        inner: MessageSender,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        rate_per_s: float = 50.0,
        max_wait_s: float = 2.0,
        share: GroupShare | None = None,
    ) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.breaker = CircuitBreaker(failure_threshold, reset_after_s)
        # The provider's rate is the group's: `share` is this worker's part of it. Sends
        # are paced evenly (a tenth of a second's worth at once), so that a provider
        # enforcing the same rate keeps its own burst for the jitter on the way.
        self.bucket = TokenBucket(rate=rate_per_s, burst=max(1.0, rate_per_s / 10), share=share)
        self.max_wait_s = max_wait_s
        PROVIDER_CIRCUIT_OPEN.labels(self.provider).set(0)

    async def send(self, message: OutboundMessage) -> SendResult:

        now = time.monotonic()
        if not self.breaker.allow(now):
            raise TransientProviderError(
                f"{self.provider} circuit open",
                retry_after=self.breaker.retry_in(now),
                throttled=True,
            )
        wait = self.bucket.take(now, self.max_wait_s)
        if wait > self.max_wait_s:
            raise TransientProviderError(
                f"{self.provider} rate limit", retry_after=wait, throttled=True
            )
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            result = await self.inner.send(message)
        except TransientProviderError:
            self.breaker.failure(time.monotonic())
            PROVIDER_CIRCUIT_OPEN.labels(self.provider).set(self.breaker.state == "open")
            raise
        self.breaker.success()
        PROVIDER_CIRCUIT_OPEN.labels(self.provider).set(0)
        return result

    async def find_sent(self, message: OutboundMessage, since: datetime) -> Lookup:
        return await self.inner.find_sent(message, since)

    async def close(self) -> None:
        await self.inner.close()
