"""``python -m saml_gateway``: load settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

import sys

import asyncpg
from aiohttp import web

from provisio_lib.db import SchemaError
from provisio_lib.logging import configure_logging, get_logger
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
    except (SchemaError, OSError, asyncpg.PostgresError) as err:
        # Postgres/Redis unreachable, schema not migrated, port taken: one line, no traceback.
        get_logger().error("saml_gateway_cannot_start", error=str(err))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
