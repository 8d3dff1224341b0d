"""Settings of the App API (``PROVISIO_APP_API_*``, ``PROVISIO_EVENTS_*``), loaded once in ``__main__``."""

from __future__ import annotations

from pydantic import Field

from provisio_lib.settings import CommonSettings


class AppApiSettings(CommonSettings):
    app_api_host: str = Field(default="0.0.0.0", description="Interface the App API listens on")
    app_api_port: int = Field(default=8083, ge=1, le=65535)
    app_api_metrics_port: int = Field(
        default=9183,
        ge=0,
        le=65535,
        description="Operator listener: /metrics, /healthz, /readyz (not on the public port; 0: any free port)",
    )
    app_api_key_cache_s: float = Field(
        default=5.0, ge=0, le=60, description="How long an API key lookup is reused (revocation delay)"
    )
    app_api_max_wait_s: float = Field(
        default=30.0, gt=0, le=300, description="Longest long-poll (wait=) an events request may ask for"
    )
    app_api_rate_limit_per_s: float = Field(
        default=100.0, ge=0, description="Requests per second per API key per process (0 = unlimited)"
    )
    app_api_max_body: int = Field(default=64 * 1024, ge=1024, description="Request body limit (bytes)")
    events_retention_days: float = Field(
        default=30.0, gt=0, description="Events older than this are pruned from the feed"
    )
    events_prune_interval_s: float = Field(
        default=300.0, gt=0, description="How often the App API prunes events past retention"
    )
