"""Settings of the SAML gateway (``PROVISIO_SAML_*``), loaded once in ``__main__``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from provisio_lib.settings import CommonSettings


class SamlSettings(CommonSettings):
    # asyncio's loop by default here: signature checks run in worker threads, and with
    # uvloop the gateway did fewer logins (BENCHMARKS.md, "SAML JIT logins").
    # PROVISIO_EVENT_LOOP still decides.
    event_loop: str = Field(
        default="asyncio", pattern=r"^(uvloop|asyncio)$", description="asyncio (default for the SAML gateway) or uvloop"
    )
    saml_host: str = Field(default="0.0.0.0", description="Interface the gateway listens on")
    saml_port: int = Field(default=8082, ge=1, le=65535)
    saml_metrics_port: int = Field(
        default=9182,
        ge=0,
        le=65535,
        description="Operator listener: /metrics, /healthz, /readyz (not on the public port; 0: any free port)",
    )
    saml_public_url: str = Field(
        default="http://127.0.0.1:8082",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="External base URL; SP entity ids, ACS and login URLs are built from it",
    )
    saml_clock_skew_s: int = Field(
        default=180, ge=0, le=900, description="Allowed clock difference with the IdP (NotBefore/NotOnOrAfter)"
    )
    saml_max_response_bytes: int = Field(
        default=256 * 1024, ge=4096, le=4 * 1024 * 1024, description="Largest decoded SAMLResponse accepted"
    )
    saml_outcome_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Wait for the provisioner's outcome, then a 503 page"
    )
    saml_code_ttl_s: int = Field(default=60, ge=5, le=600, description="Lifetime of the one-time login code")
    saml_request_ttl_s: int = Field(
        default=600, ge=30, le=3600, description="How long an AuthnRequest id waits for its response"
    )
    saml_crypto_backend: Literal["xmlsec", "xmlsec1"] = Field(
        default="xmlsec",
        description="xmlsec: in-process libxmlsec1 binding (fast); xmlsec1: pysaml2's default, forks the program",
    )
    saml_schema_validator: Literal["libxml2", "xmlschema"] = Field(
        default="libxml2",
        description="What validates signed elements against the SAML schemas before their signature is "
        "checked: libxml2 (through lxml, the fast one; what it refuses goes to xmlschema for the verdict) or "
        "xmlschema only (pysaml2's own, pure Python, slower: BENCHMARKS.md)",
    )
    saml_xmlsec1_path: str = Field(default="/usr/bin/xmlsec1", description="The xmlsec1 program")
    saml_verify_threads: int = Field(
        default=4, ge=1, le=64, description="Threads that parse and verify SAML responses off the event loop"
    )
    saml_verify_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Worker processes that verify responses (0: threads in the gateway process). "
        "pysaml2 is Python code that holds the GIL; processes let verification use more than one core "
        "and keep the event loop's process free",
    )
    saml_login_per_min: int = Field(
        default=300,
        ge=0,
        description="Login URL calls per source address per minute, across replicas (each signs an "
        "AuthnRequest and stores a Redis key); 0 = unlimited",
    )
    saml_failed_token_per_min: int = Field(
        default=30,
        ge=0,
        description="Failed /saml/token exchanges (unknown code, wrong secret) per source address per "
        "minute, across replicas; then 429 until the minute ends (0 = unlimited)",
    )
    saml_statement_timeout_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Postgres statement_timeout of the gateway's connections: a query running longer "
        "is cancelled and the login answers a 503 page (/saml/token: 503 JSON). 0: not sent at connect "
        "(set it on the database role instead, e.g. behind PgBouncer)",
    )
    saml_connection_cache_s: float = Field(
        default=5.0, ge=0, le=300, description="How long a connection's settings are reused before re-reading"
    )
