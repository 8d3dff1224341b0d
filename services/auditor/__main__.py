"""``python -m auditor``: settings, logging, run until SIGTERM/SIGINT."""

from provisio_lib.process import run_worker, start

from .app import create_app
from .settings import AuditorSettings


def main() -> None:
    settings = start(AuditorSettings, "auditor")
    run_worker(create_app(settings), "auditor", event_loop=settings.event_loop, young_gc=None)


if __name__ == "__main__":
    main()
