"""``python -m scim_gateway``: load settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from aiohttp import web

from provisio_lib.logging import configure_logging
from provisio_lib.settings import SettingsError, load_settings

from .app import create_app
from .settings import ScimSettings


def main() -> None:
    try:
        settings = load_settings(ScimSettings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    configure_logging(settings.log_level, settings.log_format, service="scim-gateway")
    # run_app turns SIGTERM/SIGINT into a graceful shutdown: stop accepting, let
    # in-flight requests finish (shutdown_timeout), then run the cleanup contexts.
    web.run_app(
        create_app(settings),
        host=settings.scim_host,
        port=settings.scim_port,
        access_log=None,
        shutdown_timeout=settings.scim_outcome_timeout_s + 5,
        print=None,
    )


if __name__ == "__main__":
    main()
