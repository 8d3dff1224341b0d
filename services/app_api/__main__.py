"""``python -m app_api``: settings, logging, serve until SIGTERM/SIGINT."""

from provisio_lib.process import serve_http, start

from .app import create_app
from .settings import AppApiSettings


def main() -> None:
    settings = start(AppApiSettings, "app-api")
    # Long-polls end within the wait cap; let them finish before stopping.
    serve_http(
        create_app(settings),
        host=settings.app_api_host,
        port=settings.app_api_port,
        shutdown_timeout=settings.app_api_max_wait_s + 5,
        service="app-api",
        event_loop=settings.event_loop,
    )


if __name__ == "__main__":
    main()
