"""The auditor's settings (``PROVISIO_*``), loaded once at start."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from provisio_lib.settings import CommonSettings, worker_setting


class AuditorSettings(CommonSettings):
    # --- delivery (see provisio_lib.delivery)
    batch_size: int = Field(
        validation_alias=worker_setting("auditor", "batch_size"),
        default=500,
        ge=1,
        le=10_000,
        description="Outcomes per audit batch, at most (read as batch_size / 50 stream entries)",
    )
    audit_batch_wait_ms: int = Field(
        default=200,
        ge=0,
        le=10_000,
        description="After a short batch, wait this long before reading again: fewer, larger batches "
        "under load (the audit trail may lag by this much; the request path gets the CPU)",
    )
    claim_idle_ms: int = Field(default=30_000, ge=100, description="Claim entries idle this long")
    max_deliveries: int = Field(default=5, ge=1, description="Dead-letter after this many deliveries")
    health_host: str = Field(default="0.0.0.0", description="Health/metrics listener address")
    health_port: int = Field(
        validation_alias=worker_setting("auditor", "health_port"),
        default=9102,
        ge=0,
        le=65535,
        description="Health/metrics listener port (0: any free port)",
    )
    graceful_timeout_s: float = Field(default=15.0, gt=0, description="SIGTERM: time to finish the batch in flight")

    # --- retention
    retention_days: int = Field(default=400, ge=0, description="Delete audit rows older than this; 0 keeps all")
    retention_interval_s: float = Field(default=3600.0, gt=0, description="How often retention runs")

    # --- notifications
    notify_window_s: float = Field(
        default=900.0, gt=0, description="Digest window: further failures within it share one mail"
    )
    notify_poll_s: float = Field(default=1.0, gt=0, description="How often the notifier looks for due mail")
    notify_backoff_s: float = Field(default=5.0, gt=0, description="First retry delay after an SMTP failure")
    notify_backoff_max_s: float = Field(default=600.0, gt=0, description="Longest retry delay")
    smtp_host: str = Field(default="localhost")
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_tls: bool = Field(default=False, description="Implicit TLS (SMTPS, usually port 465)")
    smtp_starttls: bool = Field(default=False, description="Upgrade with STARTTLS (required when on)")
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = Field(default="provisio@localhost", pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    smtp_timeout_s: float = Field(default=30.0, gt=0)

    # Field validators (not a model validator) so the error names the variable to fix.
    @field_validator("smtp_starttls")
    @classmethod
    def _one_tls_mode(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("smtp_tls"):
            raise ValueError("set either PROVISIO_SMTP_TLS (implicit TLS) or PROVISIO_SMTP_STARTTLS, not both")
        return value

    @field_validator("smtp_password")
    @classmethod
    def _auth_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if (value is None) != (info.data.get("smtp_user") is None):
            raise ValueError("PROVISIO_SMTP_USER and PROVISIO_SMTP_PASSWORD go together")
        return value
