"""Settings of the web console (``PROVISIO_CONSOLE_*``), loaded once in ``__main__``."""

from __future__ import annotations

from pydantic import AnyHttpUrl, Field, SecretStr

from provisio_lib.settings import CommonSettings


class ConsoleSettings(CommonSettings):
    console_host: str = Field(default="0.0.0.0", description="Interface the console listens on")
    console_port: int = Field(default=8084, ge=1, le=65535)
    console_public_url: AnyHttpUrl | None = Field(
        default=None,
        description="External base URL (https://console.example.com): the staff set-password links "
        "printed by `provisio staff add/reset`; https also makes the session cookie Secure. "
        "Unset: http://localhost:<port>.",
    )
    console_secret_key: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="Key that signs the session and form cookies (32+ random characters, the same "
        "on every replica). Unset: a random key per process (sessions end when it restarts).",
    )
    console_session_idle_s: int = Field(default=1800, ge=60, description="A session ends after this long unused")
    console_session_max_s: int = Field(default=43200, ge=300, description="A session ends this long after login")
    console_login_attempts: int = Field(
        default=5, ge=1, description="Failed logins per account within the window before it is locked out"
    )
    console_login_address_attempts: int = Field(
        default=20, ge=1, description="Failed logins per source address within the window before it is locked out"
    )
    console_login_window_s: int = Field(default=900, ge=10, description="Window of the failed-login counters")
    saml_public_url: str = Field(
        default="http://127.0.0.1:8082",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="The SAML gateway's external base URL (as the gateway and `provisio sso` read it): "
        "the SP values the setup wizard shows and where a test sign-in starts",
    )
    scim_public_url: str = Field(
        default="http://127.0.0.1:8081",
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="The SCIM gateway's external base URL: the SCIM base URL the setup page shows (+ /scim/v2)",
    )
    console_metadata_allow_private: bool = Field(
        default=False,
        description="Let the setup wizard fetch IdP metadata URLs on private, loopback and link-local "
        "addresses (off: refused, against server-side request forgery; on for a lab or an IdP on the "
        "internal network)",
    )
    console_page_size: int = Field(default=50, ge=5, le=500, description="Rows per page of the audit search")

    def base_url(self) -> str:
        return (
            str(self.console_public_url).rstrip("/")
            if self.console_public_url
            else f"http://localhost:{self.console_port}"
        )
