"""Topic administration with kafka-python: create what is missing, never alter what exists."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from common import kafka_security
from common.logs import get_logger
from common.topics import TopicSpec

log = get_logger(__name__)


#: Records keep the timestamp their producer gave them (the shop's publication time),
#: which the event clock follows (docs/architecture.md, "Time"): a simulation, a
#: rehearsal or a replay runs ahead of the wall clock. Kafka 4 rejects records stamped
#: more than an hour ahead of the broker's clock by default (3.x did not); the topics we
#: create accept them, as 3.x did. Brokers before 3.6 do not know the setting: then
#: topics are created without it.
_ACCEPT_ANY_STAMP = {"message.timestamp.after.max.ms": str(2**63 - 1)}


def _retention_ms(spec: TopicSpec) -> int:
    """The spec's retention, or OUTREACH_TOPIC_RETENTION_MS for every topic created
    (-1: keep everything). Retention by time judges a segment by the timestamps of its
    records: a replay, a simulation or a benchmark stamps its records with the moments
    of its story (months back), and a rolled segment of theirs would be deleted before it
    is read. The local broker's environments (tests, `make run`, `make bench`) set -1."""
    override = os.environ.get("OUTREACH_TOPIC_RETENTION_MS")
    return int(override) if override else spec.retention_ms


def _admin(bootstrap_servers: str) -> Any:
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap_servers.split(","),
        client_id="outreach-admin",
        request_timeout_ms=10_000,
        **kafka_security.client_options(),
    )


def ensure_topics(
    bootstrap_servers: str, specs: Iterable[TopicSpec], timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created, once every
    partition of theirs has a leader.

    Retries while the cluster is still electing a controller (fresh brokers), up to
    `timeout_s`. Replication factor is min(3, number of brokers).
    """
    from kafka.errors import InvalidConfigurationError, KafkaError

    deadline = time.monotonic() + timeout_s
    specs = list(specs)
    # Refused credentials or certificates fail at once, saying what to fix.
    kafka_security.check(bootstrap_servers)
    while True:
        try:
            admin = _admin(bootstrap_servers)
            try:
                existing = set(admin.list_topics())
                brokers = len(admin.describe_cluster().get("brokers", [])) or 1
                replication = min(3, brokers)
                missing = [s for s in specs if s.name not in existing]
                created = [s.name for s in missing]
                if missing:
                    try:
                        _create(admin, missing, replication, _ACCEPT_ANY_STAMP)
                    except InvalidConfigurationError:
                        _create(admin, missing, replication, {})
                    log.info("topics_created", topics=[s.name for s in missing])
            finally:
                admin.close()
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"could not create topics on {bootstrap_servers}: {exc}"
                ) from exc
            time.sleep(0.5)
    # A consumer subscribing to a topic its broker does not list yet is assigned the
    # others and hears of it only at its next metadata refresh (minutes later); a
    # producer meets NotLeaderForPartition. So: every topic asked for is led on return,
    # whoever made it (a service starting beside this one, an earlier attempt here).
    wait_for_leaders(bootstrap_servers, [s.name for s in specs], timeout_s)
    return created


def wait_for_leaders(bootstrap_servers: str, names: Iterable[str], timeout_s: float = 30.0) -> None:
    """Until every partition of the topics `names` has a leader: a topic just created
    refuses records (NotLeaderForPartition) while its partitions' leaders are elected.
    After `timeout_s` it says which have none, and returns: a partition led again later
    is taken up by the clients' own retries, and a service had better start without it
    than not at all."""
    from kafka.errors import KafkaError

    wanted, led = set(names), set[str]()
    deadline = time.monotonic() + timeout_s
    admin = None
    try:
        while wanted - led:
            pause = 0.2  # Kafka announces no election: ask again shortly
            try:
                admin = admin or _admin(bootstrap_servers)
                led |= _led(admin, wanted - led)
            except KafkaError as exc:  # a broker still starting, or busy: ask again
                log.info("leaders_unknown", error=type(exc).__name__)
                pause = 0.5
            if wanted - led and time.monotonic() > deadline:
                log.warning("topics_without_leader", topics=sorted(wanted - led))
                return
            if wanted - led:
                time.sleep(pause)
    finally:
        if admin is not None:
            admin.close()


def _led(admin: Any, names: set[str]) -> set[str]:
    """Those of the topics `names` every partition of which has a leader."""
    return {
        t.get("name", t.get("topic"))
        for t in admin.describe_topics(sorted(names))
        if not t.get("error_code")
        and t.get("partitions")
        and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in t["partitions"])
    }


def _create(admin: Any, specs: list[TopicSpec], replication: int, extra: dict[str, str]) -> None:
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    new = [
        NewTopic(
            name=s.name,
            num_partitions=s.partitions,
            replication_factor=replication,
            topic_configs={
                "cleanup.policy": "compact" if s.compacted else "delete",
                "retention.ms": str(_retention_ms(s)),
                **extra,
            },
        )
        for s in specs
    ]
    try:
        admin.create_topics(new, validate_only=False)
    except TopicAlreadyExistsError:
        pass
