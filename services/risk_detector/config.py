"""risk_detector settings (environment variables, documented in docs/configuration.md)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings
from common.topics import Topics
from services.risk_detector.domain.decisions import Policy


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RISK_DETECTOR_", extra="ignore")

    http_port: int = 8082
    store: str = "rocksdb://"
    checkin_score: float = Field(70, ge=0, le=100)
    handoff_score: float = Field(85, ge=0, le=100)
    high_value_spend: float = Field(1000, ge=0)
    serial_returns_count: int = Field(3, ge=1)
    serial_returns_window_days: int = Field(90, ge=1)
    checkin_quiet_days: int = Field(30, ge=1)
    checkin_waits_for_agent: bool = True
    agent_wait_days: float = Field(3.0, gt=0)
    tick_interval_s: float = Field(1.0, gt=0)
    order_memory_days: float = Field(365, gt=0)

    def policy(self) -> Policy:
        return Policy(
            checkin_score=self.checkin_score,
            handoff_score=self.handoff_score,
            high_value_spend=self.high_value_spend,
            serial_returns_count=self.serial_returns_count,
            serial_returns_window_days=self.serial_returns_window_days,
            checkin_quiet_days=self.checkin_quiet_days,
            checkin_waits_for_agent=self.checkin_waits_for_agent,
            agent_wait_days=self.agent_wait_days,
        )


def customer_topics(topics: Topics) -> frozenset[str]:
    """The customer-keyed topics `assess` reads besides its own facts and ticks: the
    incidents, the shop's feedback and customers, the agents' outcomes of hand-offs and
    the customers' replies."""
    return frozenset(
        {topics.incidents, topics.feedback, topics.resolutions, topics.replies, topics.customers}
    )
