"""Settings every service shares; each service's config.py extends `ServiceSettings`.

All settings come from environment variables, are validated once at start-up, and a
bad value fails with the variable's name. docs/configuration.md lists every one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import kafka_security
from common.clock import Clock, clock_from_mode
from common.topics import Topics


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    def __repr_args__(self) -> Any:
        """The settings as repr/str show them: secrets are SecretStr (masked by pydantic),
        and the password inside a URL (a database URL) is masked too."""
        for name, value in super().__repr_args__():
            if isinstance(value, str) and "://" in value:
                value = _URL_PASSWORD.sub(r"\1***@", value)
            yield name, value

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS")
    )
    outreach_clock: Literal["wall", "event"] = Field(
        "wall", validation_alias=_env("OUTREACH_CLOCK")
    )
    topic_prefix: str = Field("", validation_alias=_env("OUTREACH_TOPIC_PREFIX"))
    topic_partitions: int = Field(4, ge=1, validation_alias=_env("OUTREACH_TOPIC_PARTITIONS"))
    data_dir: Path = Field(Path("var"), validation_alias=_env("OUTREACH_DATA_DIR"))
    log_level: str = Field("INFO", validation_alias=_env("LOG_LEVEL"))
    log_format: Literal["json", "console"] = Field("json", validation_alias=_env("LOG_FORMAT"))
    http_host: str = Field("127.0.0.1", validation_alias=_env("OUTREACH_HTTP_HOST"))
    kafka_session_timeout_s: float = Field(
        30.0, ge=6, le=300, validation_alias=_env("OUTREACH_KAFKA_SESSION_TIMEOUT_S")
    )
    tracing_enabled: bool = Field(False, validation_alias=_env("OUTREACH_TRACING_ENABLED"))
    # Operators' HTTP routes (explain, the kill switch) want it as a bearer token; unset,
    # they answer loopback callers only.
    operator_token: SecretStr | None = Field(None, validation_alias=_env("OUTREACH_OPERATOR_TOKEN"))
    # Bytes a stream service's consumer asks per partition and fetch. Faust's default
    # (1 MiB, ~700 order states) made changelog recovery wait on fetches: 8 MiB recovers
    # twice as fast for ~60 MiB more RSS (docs/performance.md, "Recovery").
    consumer_max_fetch_bytes: int = Field(
        8 * 1024 * 1024, ge=64 * 1024, validation_alias=_env("OUTREACH_CONSUMER_MAX_FETCH_BYTES")
    )
    # Bytes a stream service's producer puts in one batch per partition. Faust's default
    # (16 KiB, about a dozen order states) made the watcher's producer send many small
    # requests: 512 KiB took ~30 us of CPU off each input record (docs/performance.md).
    producer_max_batch_bytes: int = Field(
        512 * 1024,
        ge=16 * 1024,
        le=1_000_000,
        validation_alias=_env("OUTREACH_PRODUCER_MAX_BATCH_BYTES"),
    )
    # Table recovery copies a changelog partition into RocksDB in bulk when at least this
    # many records are to be read, before faust's own record-by-record pass
    # (common/recovery.py; docs/performance.md, "Recovery").
    # Event clock (common/watermark.py): how long a partition that cannot be confirmed
    # read to its end holds the clock back, and how many records may wait per partition
    # before it is paused.
    watermark_idle_s: float = Field(30.0, gt=0, validation_alias=_env("OUTREACH_WATERMARK_IDLE_S"))
    watermark_max_buffered: int = Field(
        5_000, ge=10, validation_alias=_env("OUTREACH_WATERMARK_MAX_BUFFERED")
    )
    # Read by common.admin.ensure_topics when it creates topics (unset: each topic's own).
    topic_retention_ms: int | None = Field(
        None, ge=-1, validation_alias=_env("OUTREACH_TOPIC_RETENTION_MS")
    )
    bulk_recovery: bool = Field(True, validation_alias=_env("OUTREACH_BULK_RECOVERY"))
    # Stream services: other workers keep a warm copy of each table partition, read from
    # its changelog as it is written; when its worker goes, the one taking over has the
    # table already and reads only the last records (faust's standby replicas).
    table_standby_replicas: int = Field(
        0, ge=0, le=3, validation_alias=_env("OUTREACH_TABLE_STANDBY_REPLICAS")
    )
    bulk_recovery_min_records: int = Field(
        5_000, ge=1, validation_alias=_env("OUTREACH_BULK_RECOVERY_MIN_RECORDS")
    )
    # RocksDB per table partition (faust's defaults: 64 MiB memtables, up to three, and a
    # 2 GiB block cache, each per partition): what a cold recovery of a million orders
    # left in RSS was mostly memtables (docs/performance.md, run I).
    rocksdb_write_buffer_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024 * 1024,
        validation_alias=_env("OUTREACH_ROCKSDB_WRITE_BUFFER_BYTES"),
    )
    rocksdb_block_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        validation_alias=_env("OUTREACH_ROCKSDB_BLOCK_CACHE_BYTES"),
    )
    # How the other replicas of a stream service reach this one's HTTP port (the pod's
    # address on Kubernetes): a question about a key another replica owns (explain) is
    # passed to it. Unset: this host's name and the service's HTTP port.
    advertised_url: str | None = Field(None, validation_alias=_env("OUTREACH_ADVERTISED_URL"))
    # The stream services' (faust) event loop; the others run on asyncio's own.
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "uvloop", validation_alias=_env("OUTREACH_EVENT_LOOP")
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _hosts(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts or any(":" not in h for h in hosts):
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS must be host:port[,host:port...]")
        return ",".join(hosts)

    @model_validator(mode="after")
    def _kafka_security(self) -> ServiceSettings:
        """KAFKA_SECURITY_PROTOCOL and the KAFKA_SSL_* / KAFKA_SASL_* settings are checked
        with the others, at start-up (common/kafka_security.py)."""
        try:
            kafka_security.current()
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ValueError(f"Kafka security: {problems}") from None
        return self

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def make_clock(self) -> Clock:
        return clock_from_mode(self.outreach_clock)

    def configure_tracing(self, service: str) -> bool:
        """OpenTelemetry for this process (common.tracing); returns whether it is on.
        Raises ValueError naming the variable when an OTEL_* value is bad."""
        from common.tracing import configure_tracing

        return configure_tracing(service, self.tracing_enabled)

    def table_options(self) -> dict[str, int]:
        """Store options of a faust table (RocksDB sizes; other stores ignore them)."""
        return {
            "write_buffer_size": self.rocksdb_write_buffer_bytes,
            "block_cache_size": self.rocksdb_block_cache_bytes,
        }

    def service_dir(self, service: str) -> Path:
        path = self.data_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path


def secret_value(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None
