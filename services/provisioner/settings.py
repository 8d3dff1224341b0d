from pydantic import Field

from provisio_lib.settings import CommonSettings, worker_setting


class ProvisionerSettings(CommonSettings):
    health_host: str = Field(default="0.0.0.0", description="Health/metrics listener address")
    health_port: int = Field(
        validation_alias=worker_setting("provisioner", "health_port"),
        default=9101,
        ge=0,
        le=65535,
        description="Health/metrics listener port (0: any free port)",
    )
    batch_size: int = Field(
        validation_alias=worker_setting("provisioner", "batch_size"),
        default=200,
        ge=1,
        le=5000,
        description="Commands read (and committed) per batch",
    )
    claim_idle_ms: int = Field(default=30_000, ge=100, description="Claim other workers' messages idle this long")
    max_deliveries: int = Field(default=5, ge=1, description="Deliveries before a failing command is dead-lettered")
    graceful_timeout_s: float = Field(default=15.0, gt=0, description="SIGTERM: time to finish in-flight work")
