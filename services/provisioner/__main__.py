"""``python -m provisioner``: settings, logging, run until SIGTERM/SIGINT."""

from provisio_lib.process import run_worker, start

from .app import create_app
from .settings import ProvisionerSettings


def main() -> None:
    settings = start(ProvisionerSettings, "provisioner")
    run_worker(create_app(settings), "provisioner", event_loop=settings.event_loop)


if __name__ == "__main__":
    main()
