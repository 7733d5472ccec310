"""Topic administration with kafka-python: create what is missing, never alter what exists."""

from __future__ import annotations

import time
from collections.abc import Iterable

from common.logs import get_logger
from common.topics import TopicSpec

log = get_logger(__name__)


def ensure_topics(
    bootstrap_servers: str, specs: Iterable[TopicSpec], timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Retries while the cluster is still electing a controller (fresh brokers), up to
    `timeout_s`. Replication factor is min(3, number of brokers).
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    specs = list(specs)
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers.split(","),
                client_id="outreach-admin",
                request_timeout_ms=10_000,
            )
            try:
                existing = set(admin.list_topics())
                brokers = len(admin.describe_cluster().get("brokers", [])) or 1
                replication = min(3, brokers)
                missing = [s for s in specs if s.name not in existing]
                if missing:
                    new = [
                        NewTopic(
                            name=s.name,
                            num_partitions=s.partitions,
                            replication_factor=replication,
                            topic_configs={
                                "cleanup.policy": "compact" if s.compacted else "delete",
                                "retention.ms": str(s.retention_ms),
                            },
                        )
                        for s in missing
                    ]
                    try:
                        admin.create_topics(new, validate_only=False)
                    except TopicAlreadyExistsError:
                        pass
                    log.info("topics_created", topics=[s.name for s in missing])
                return [s.name for s in missing]
            finally:
                admin.close()
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"could not create topics on {bootstrap_servers}: {exc}"
                ) from exc
            time.sleep(0.5)
