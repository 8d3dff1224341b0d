"""Settings blocks read from the environment (prefix ``PROVISIO_``).

Each service composes one ``BaseSettings`` class from these blocks and loads it once,
at start, through :func:`load_settings`, which turns a validation error into one
readable line naming the variable. Nothing else in Provisio reads ``os.environ``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "PROVISIO_"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class CommonSettings(BaseSettings):
    """What every process needs: where Postgres and Redis are, and how to log."""

    # env_ignore_empty: `PROVISIO_SMTP_USER=` in a .env file means "unset" (the default),
    # not an empty string (which made the auditor try SMTP AUTH with no user).
    # populate_by_name: fields read through aliases (worker_setting) still take their
    # field name as a keyword (load_settings(ProvisionerSettings, health_port=0)).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        secrets_dir=None,
        validate_default=True,
        env_ignore_empty=True,
        populate_by_name=True,
    )

    database_url: SecretStr = Field(description="PostgreSQL URL, e.g. postgresql://provisio:secret@db:5432/provisio")
    redis_url: SecretStr = Field(
        description="Redis URL (redis://host:6379/0) or a cluster seed (redis+cluster://host:7000)"
    )
    redis_prefix: str = Field(
        default="provisio",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Key prefix of every stream and key Provisio writes in Redis",
    )
    partitions: int = Field(default=8, ge=1, le=1024, description="Number of command stream partitions (by tenant)")
    stream_maxlen: int = Field(default=1_000_000, ge=1000, description="Approximate MAXLEN of each stream")
    stream_max_age_s: float = Field(
        default=300.0,
        ge=0,
        description="Processed command and audit entries older than this are trimmed (XTRIM MINID); "
        "entries not yet read or acknowledged are kept however old. 0 = trim by MAXLEN only",
    )
    log_level: str = Field(default="INFO", pattern=r"^(?i)(DEBUG|INFO|WARNING|ERROR)$")
    log_format: str = Field(default="auto", pattern=r"^(auto|json|console)$", description="auto: JSON unless on a TTY")
    event_loop: str = Field(
        default="uvloop",
        pattern=r"^(uvloop|asyncio)$",
        description="uvloop (faster sockets and timers; falls back to asyncio where it is not installed) or asyncio",
    )
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or CIDRs of reverse proxies in front of the gateways. "
        "Only a request from one of them has its X-Forwarded-For read for the client's address "
        "(per-address limits); empty: the TCP peer is the client",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        import ipaddress

        for item in value.split(","):
            if item.strip():
                ipaddress.ip_network(item.strip(), strict=False)  # ValueError names the entry
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(("postgres://", "postgresql://")):
            raise ValueError("must start with postgresql:// (e.g. postgresql://user:pw@host:5432/db)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+cluster://")
        return value


S = TypeVar("S", bound=BaseSettings)


def worker_setting(worker: str, name: str) -> AliasChoices:
    """The environment names of a worker's own setting: ``PROVISIO_<WORKER>_<NAME>`` first,
    then the older shared ``PROVISIO_<NAME>`` (kept for existing deployments). Both workers
    had the same names, so one value set for `provisio dev` reached both and they collided."""
    return AliasChoices(f"{ENV_PREFIX}{worker}_{name}".upper(), f"{ENV_PREFIX}{name}".upper())


def describe_validation_error(cls: type[BaseSettings], err: ValidationError) -> str:
    """One line per bad variable, named as the operator must set it."""
    prefix = cls.model_config.get("env_prefix", "")
    lines = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else "?"
        # A field read through aliases (worker_setting) is reported under the alias given.
        var = field.upper() if field.upper().startswith(prefix.upper()) else f"{prefix}{field}".upper()
        if e["type"] == "missing":
            lines.append(f"{var} is not set")
        else:
            lines.append(f"{var} is invalid: {e['msg']}")
    return "; ".join(lines)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment; raise SettingsError with a readable message."""
    try:
        return cls(**overrides)
    except ValidationError as err:
        raise SettingsError(describe_validation_error(cls, err)) from None
