"""orders_watcher settings (environment variables, documented in docs/configuration.md)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings
from services.orders_watcher.domain.rules import DetectionConfig


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_WATCHER_", extra="ignore")

    http_port: int = 8081
    store: str = "rocksdb://"
    at_risk_margin_hours: float = Field(12, gt=0)
    stall_hours: float = Field(72, gt=0)
    stall_hours_express: float = Field(48, gt=0)
    refund_days: float = Field(5, gt=0)
    checkin_hours: float = Field(24, gt=0)
    orphan_hold_minutes: float = Field(60, gt=0)
    allowed_lateness_s: float = Field(300, ge=0)
    retention_days: float = Field(90, gt=0)
    tick_interval_s: float = Field(1.0, gt=0)
    # Due orders acted on per batch, besides one per record of the batch; the rest of a
    # wave of deadlines in the batches after it, so input records are not held up behind
    # the whole wave (an order's own due deadline goes before its record regardless).
    tick_max_due: int = Field(50, ge=1)
    # Records handled per batch (outputs acknowledged once, states written once per
    # batch); a batch is what one fetch brought, in chunks of at most this.
    batch_max: int = Field(500, ge=1)
    # Batches finished (outputs acknowledged, states written) in the background while
    # the next is handled; the next waits when this many are.
    batches_in_flight: int = Field(3, ge=1)
    producer_linger_s: float = Field(0.005, ge=0)
    # Fetches wait for this many bytes or this long (common/batched_input.py): larger
    # batches at moderate rates, a fifth less CPU at half the sustainable rate for ~10 ms
    # more latency (docs/performance.md, run R). 1 byte: answer at the first record.
    fetch_min_bytes: int = Field(65_536, ge=1)
    fetch_max_wait_ms: int = Field(20, ge=1, le=1500)
    # Decoded states of recently handled orders, kept in memory (adapters/state_cache.py).
    state_cache_max: int = Field(10_000, ge=0)

    def detection(self) -> DetectionConfig:
        return DetectionConfig(
            at_risk_margin=timedelta(hours=self.at_risk_margin_hours),
            stall_after=timedelta(hours=self.stall_hours),
            stall_after_fast=timedelta(hours=self.stall_hours_express),
            refund_within=timedelta(days=self.refund_days),
            checkin_after=timedelta(hours=self.checkin_hours),
            orphan_hold=timedelta(minutes=self.orphan_hold_minutes),
            allowed_lateness=timedelta(seconds=self.allowed_lateness_s),
            retention=timedelta(days=self.retention_days),
        )
