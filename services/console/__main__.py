"""``python -m console``: settings, logging, serve until SIGTERM/SIGINT."""

from provisio_lib.process import serve_http, start

from .app import create_app
from .settings import ConsoleSettings


def main() -> None:
    settings = start(ConsoleSettings, "console")
    # Live tails (SSE) end within a second of shutdown; pages are quick.
    serve_http(
        create_app(settings),
        host=settings.console_host,
        port=settings.console_port,
        shutdown_timeout=5,
        service="console",
        event_loop=settings.event_loop,
        young_gc=None,
    )


if __name__ == "__main__":
    main()
