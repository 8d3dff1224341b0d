"""``python -m scim_gateway``: settings, logging, serve until SIGTERM/SIGINT."""

from provisio_lib.process import serve_http, start

from .app import create_app
from .settings import ScimSettings


def main() -> None:
    settings = start(ScimSettings, "scim-gateway")
    # In-flight writes wait up to the outcome timeout; let them finish before stopping.
    serve_http(
        create_app(settings),
        host=settings.scim_host,
        port=settings.scim_port,
        shutdown_timeout=settings.scim_outcome_timeout_s + 5,
        service="scim-gateway",
        event_loop=settings.event_loop,
    )


if __name__ == "__main__":
    main()
