"""The dispatcher's settings (``PROVISIO_WEBHOOK_*``, ``PROVISIO_DISPATCHER_*``), loaded once at start."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from provisio_lib.settings import worker_setting
from provisio_lib.webhook_http import WebhookClientSettings
from provisio_lib.webhooks import parse_duration


class DispatcherSettings(WebhookClientSettings):
    health_host: str = Field(default="0.0.0.0", description="Health/metrics listener address")
    health_port: int = Field(
        validation_alias=worker_setting("dispatcher", "health_port"),
        default=9103,
        ge=0,
        le=65535,
        description="Health/metrics listener port (0: any free port)",
    )
    graceful_timeout_s: float = Field(default=15.0, gt=0, description="SIGTERM: time to finish requests in flight")

    webhook_retry_horizon: float = Field(
        default=3 * 86400.0,
        gt=0,
        description="A delivery failing this long (3d, 72h, seconds) goes to the dead-letter list",
    )
    webhook_disable_after: float = Field(
        default=86400.0,
        gt=0,
        description="An endpoint with no 2xx answer for this long (1d, 24h, seconds) is disabled and its "
        "tenant's notify addresses get a mail",
    )
    webhook_backoff_base_s: float = Field(default=5.0, gt=0, description="First retry delay (then doubling)")
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0, description="Longest retry delay")
    webhook_max_in_flight: int = Field(
        default=32, ge=1, le=1024, description="Concurrent requests to one endpoint (per dispatcher)"
    )
    webhook_claim_batch: int = Field(
        default=500, ge=1, le=10_000, description="Deliveries of one endpoint claimed at once (per dispatcher)"
    )
    webhook_max_chain: int = Field(
        default=20, ge=1, le=1000, description="Deliveries of one resource claimed at once (sent one by one)"
    )
    webhook_poll_s: float = Field(
        default=1.0, gt=0, le=60, description="Look for new events and due retries at least this often"
    )
    events_retention_days: float = Field(
        default=30.0, gt=0, description="Finished deliveries older than this are pruned (as the events are)"
    )
    webhook_prune_interval_s: float = Field(default=300.0, gt=0, description="How often finished deliveries are pruned")
    webhook_metrics_interval_s: float = Field(
        default=5.0, gt=0, description="How often backlog and lag per endpoint are measured"
    )

    @field_validator("webhook_retry_horizon", "webhook_disable_after", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value
