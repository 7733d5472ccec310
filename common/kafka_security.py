"""How every Kafka client of this process proves itself to the cluster and trusts it: TLS
with a CA, mutual TLS, SASL PLAIN and SCRAM-SHA-256/512 (Strimzi's KafkaUser, managed
Kafka), from the environment as the bootstrap servers are.

    KAFKA_SECURITY_PROTOCOL  PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    KAFKA_SSL_CAFILE         PEM of the CA(s) the brokers' certificates are checked against
                             (unset: the system's trust store)
    KAFKA_SSL_CERTFILE       PEM of this client's certificate (mutual TLS) ...
    KAFKA_SSL_KEYFILE        ... and its private key (KAFKA_SSL_KEY_PASSWORD if encrypted)
    KAFKA_SSL_CHECK_HOSTNAME whether the broker's name must match its certificate (true)
    KAFKA_SASL_MECHANISM     PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD

Every client is made with `client_options()` (aiokafka's and kafka-python's keyword
arguments) or `faust_credentials()`, so aiokafka (the services' consumers and producers), faust (the
stream services), kafka-python (topic admin, outreachctl, the simulator) all connect
the same way. Settings are checked once (`KafkaSecurity()` raises naming the variable);
the password never appears in a repr or a log line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _env(name: str) -> Any:
    return Field(None, validation_alias=AliasChoices(name))


class KafkaSecurity(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    protocol: Protocol = Field(
        "PLAINTEXT", validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL")
    )
    ssl_cafile: Path | None = _env("KAFKA_SSL_CAFILE")
    ssl_certfile: Path | None = _env("KAFKA_SSL_CERTFILE")
    ssl_keyfile: Path | None = _env("KAFKA_SSL_KEYFILE")
    ssl_key_password: SecretStr | None = _env("KAFKA_SSL_KEY_PASSWORD")
    ssl_check_hostname: bool = Field(
        True, validation_alias=AliasChoices("KAFKA_SSL_CHECK_HOSTNAME")
    )
    sasl_mechanism: Mechanism | None = _env("KAFKA_SASL_MECHANISM")
    sasl_username: str | None = _env("KAFKA_SASL_USERNAME")
    sasl_password: SecretStr | None = _env("KAFKA_SASL_PASSWORD")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        if self.sasl:
            missing = [
                name
                for name, value in (
                    ("KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                    ("KAFKA_SASL_USERNAME", self.sasl_username),
                    ("KAFKA_SASL_PASSWORD", self.sasl_password),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs {missing}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together")
        if not self.tls and (self.ssl_cafile or self.ssl_certfile):
            raise ValueError(
                f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL={self.protocol} "
                "has no TLS (SSL or SASL_SSL)"
            )
        for name, path in (
            ("KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file {path}")
        return self

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every client (None without TLS): the CA to trust (else the
        system's), this client's certificate for mutual TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None
        )
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile and self.ssl_keyfile:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile), password)
        return context

    def _sasl_options(self) -> dict[str, Any]:
        if not self.sasl:
            return {}
        assert self.sasl_password is not None
        return {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password.get_secret_value(),
        }

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka or kafka-python client (both take these)."""
        if self.protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.protocol, **self._sasl_options()}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        return options

    def faust_credentials(self) -> Any:
        """faust's `broker_credentials` (None: plaintext)."""
        import faust

        if self.sasl:
            assert self.sasl_password is not None
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


class KafkaAccessDenied(RuntimeError):
    """The cluster refused this client: its credentials or certificates, or TLS settings
    that do not match the listener. Retrying will not help; the message says what to fix
    (and never holds the password)."""


def check(bootstrap_servers: str, timeout_s: float = 10.0) -> None:
    """Connect once to the first bootstrap server as every client of this process will,
    and raise `KafkaAccessDenied` if the cluster refuses it. A server not answering is
    not an error here (it may still be starting): the caller's retries see to that."""
    security = current()
    if security.protocol == "PLAINTEXT":
        return
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callable inside an event loop
        problem = pool.submit(asyncio.run, _handshake(security, host, int(port), timeout_s))
        denied = problem.result()
    if denied:
        raise KafkaAccessDenied(f"Kafka at {host}:{port} refused this client: {denied}")


async def _handshake(security: KafkaSecurity, host: str, port: int, timeout_s: float) -> str:
    """What is wrong with this client's TLS or SASL for the server ("" if nothing)."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError

    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout_s * 1000),
                        **security.client_options()),
            timeout_s,
        )  # fmt: skip
    except (KafkaError, OSError, TimeoutError) as exc:
        return _what_went_wrong(security, exc)
    conn.close()
    return ""


def _what_went_wrong(security: KafkaSecurity, exc: BaseException) -> str:
    """A refusal as the person who set the KAFKA_* variables can act on it ("" for a
    server that is not reachable or not answering yet)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"its TLS certificate is not trusted ({cause.verify_message}); "
            f"KAFKA_SSL_CAFILE={security.ssl_cafile or '(the system trust store)'}"
        )
    if isinstance(cause, ssl.SSLError):
        return (
            f"the TLS handshake failed ({cause.reason}): does the listener take "
            f"KAFKA_SECURITY_PROTOCOL={security.protocol}, and does it want a client "
            "certificate (KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE) this one lacks or it does "
            "not trust?"
        )
    if "authentication" in f"{type(exc).__name__} {exc}".lower():
        return (
            f"authentication of user {security.sasl_username!r} with "
            f"{security.sasl_mechanism} failed; check KAFKA_SASL_USERNAME, "
            "KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
        )
    return ""


@functools.cache
def current() -> KafkaSecurity:
    """This process's Kafka security, read from the environment once."""
    return KafkaSecurity()


def client_options() -> dict[str, Any]:
    """Keyword arguments every aiokafka and kafka-python client of this process is made
    with (both take the same names)."""
    return current().client_options()


def faust_credentials() -> Any:
    return current().faust_credentials()


__all__ = [
    "KafkaAccessDenied",
    "KafkaSecurity",
    "check",
    "client_options",
    "current",
    "faust_credentials",
]
