"""Settings of the SCIM gateway (``PROVISIO_SCIM_*``), loaded once in ``__main__``."""

from __future__ import annotations

from pydantic import AnyHttpUrl, Field

from provisio_lib.settings import CommonSettings

from .limits import MAX_STRING_CHARS, MIN_STRING_CHARS


class ScimSettings(CommonSettings):
    scim_host: str = Field(default="0.0.0.0", description="Interface the gateway listens on")
    scim_port: int = Field(default=8081, ge=1, le=65535)
    scim_metrics_port: int = Field(
        default=9181,
        ge=0,
        le=65535,
        description="Operator listener: /metrics, /healthz, /readyz (not on the public port; 0: any free port)",
    )
    scim_public_url: AnyHttpUrl | None = Field(
        default=None,
        description="External base URL (https://scim.example.com); used for meta.location and "
        "Location headers. Unset: http://127.0.0.1:<PROVISIO_SCIM_PORT> (never the request's Host).",
    )
    scim_outcome_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Wait for the provisioner's outcome, then 503"
    )
    scim_retry_after_s: int = Field(default=2, ge=1, description="Retry-After sent with 503/429")
    scim_max_body: int = Field(default=1024 * 1024, ge=1024, description="Request body limit (bytes)")
    scim_max_string_chars: int = Field(
        default=MAX_STRING_CHARS,
        ge=MIN_STRING_CHARS,
        description="Longest string value (userName, name.givenName, emails[].value, extension and "
        "PATCH values, …) a write may carry, in characters; longer: 400 invalidValue. No 0: "
        f"at least {MIN_STRING_CHARS}, what Entra ID sends in userName and displayName",
    )
    scim_rate_limit_per_s: float = Field(
        default=200.0,
        ge=0,
        description="Requests per second per tenant per gateway process (0 = unlimited); "
        "provisio tenant policy TENANT --rate-limit N overrides it",
    )
    scim_rate_limit_burst: float | None = Field(
        default=None, ge=1, description="Token bucket size; default 2 × the rate"
    )
    scim_token_cache_s: float = Field(
        default=5.0, ge=0, le=60, description="How long a token lookup is reused (revocation delay)"
    )
    scim_max_results: int = Field(default=1000, ge=1, description="Largest page a list returns")
    scim_default_count: int = Field(default=100, ge=0, description="Page size when count is absent")
    scim_write_retries: int = Field(
        default=5, ge=0, le=20, description="Re-reads of a PATCH whose version went stale (concurrent writers)"
    )
    scim_statement_timeout_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Postgres statement_timeout of the gateway's connections: a query running longer "
        "is cancelled (a search with a filter: 400 tooMany; otherwise 503 + Retry-After). 0: not sent "
        "at connect (set it on the database role instead, e.g. behind PgBouncer)",
    )
    scim_tenant_reads: int = Field(
        default=0,
        ge=0,
        description="Reads (GET, .search) one tenant may run at once per gateway process; 0 = half of "
        "PROVISIO_DB_POOL_MAX, so one tenant never holds the whole pool",
    )
    scim_tenant_read_wait_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="How long a read waits for one of its tenant's slots before 429 + Retry-After",
    )
    scim_failed_auth_per_min: int = Field(
        default=30,
        ge=0,
        description="Failed bearer-token attempts per source address per minute, across replicas "
        "(Redis); then 429 until the minute ends (0 = unlimited)",
    )

    def tenant_reads(self) -> int:
        return self.scim_tenant_reads or max(1, self.db_pool_max // 2)
