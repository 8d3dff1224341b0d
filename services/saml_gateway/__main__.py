"""``python -m saml_gateway``: load settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from aiohttp import web

from provisio_lib.logging import configure_logging
from provisio_lib.settings import SettingsError, load_settings

from .settings import SamlSettings


def main() -> None:
    try:
        settings = load_settings(SamlSettings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    configure_logging(settings.log_level, settings.log_format, service="saml_gateway")
    from .app import create_app

    # run_app handles SIGINT/SIGTERM: stop accepting, let in-flight logins finish
    # (shutdown_timeout), then run the cleanup contexts (waiter, pools).
    try:
        web.run_app(create_app(settings), host=settings.saml_host, port=settings.saml_port,
                    shutdown_timeout=15, access_log=None, print=None)
    except OSError as err:
        print(f"error: cannot serve on {settings.saml_host}:{settings.saml_port}: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
