"""Telling an outage from a fault: the one question a consumer asks of an exception.

A dependency that cannot be reached for a while (the database restarting, preferences
down, the broker gone) is neither the input's fault (that is a dead letter) nor a bug
(bounded retry, then a dead letter): the input is fine and will be handled once the
dependency is back. So the consumer holds it (common/kafka.py `ConsumerLoop`) instead of
dead-lettering it. Misjudging a bug as an outage stalls one partition, visibly (the
`outreach_input_held` gauge, consumer lag); misjudging an outage as a bug would lose
input, so the classes below are the ones that mean "could not reach", nothing wider.
"""

from __future__ import annotations

import socket


class DependencyUnavailable(RuntimeError):
    """A dependency cannot be asked now. `dependency` names it (metrics, logs)."""

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(f"{dependency} unavailable{': ' + detail if detail else ''}")
        self.dependency = dependency


def as_outage(exc: BaseException) -> DependencyUnavailable | None:
    """`exc` as the outage it reports (itself when it is one already), or None if it is
    no outage."""
    if isinstance(exc, DependencyUnavailable):
        return exc
    dependency = outage_of(exc)
    return None if dependency is None else DependencyUnavailable(dependency, type(exc).__name__)


# Errors that mean "the broker could not be reached in time" but that aiokafka does not
# mark retriable (kafka-python marks its KafkaTimeoutError so): a producer whose buffer
# stayed full, an offset or metadata lookup that timed out, no broker answering at all.
_KAFKA_UNREACHABLE = frozenset(
    {"KafkaTimeoutError", "KafkaUnavailableError", "BrokerNotAvailableError"}
)


def outage_of(exc: BaseException) -> str | None:
    """The dependency an exception says is unreachable, or None if it is no outage."""
    if isinstance(exc, DependencyUnavailable):
        return exc.dependency
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return "network"
    name = type(exc).__module__.split(".")[0]
    if name == "sqlalchemy":
        from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

        if isinstance(exc, OperationalError | InterfaceError):
            # SQLite reports a missing table or a syntax error as "operational" too.
            text = str(exc.orig).lower()
            return None if "no such" in text or "syntax error" in text else "database"
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return "database"
        return None
    if name == "asyncpg":
        from asyncpg import exceptions as pg

        connection_errors = (
            pg.PostgresConnectionError,
            pg.CannotConnectNowError,
            pg.ConnectionDoesNotExistError,
            pg.InterfaceError,
        )
        return "database" if isinstance(exc, connection_errors) else None
    if name in ("aiokafka", "kafka"):
        retriable = getattr(exc, "retriable", False)
        unreachable = type(exc).__name__ in _KAFKA_UNREACHABLE or "Connection" in type(exc).__name__
        return "kafka" if retriable or unreachable else None
    return None
