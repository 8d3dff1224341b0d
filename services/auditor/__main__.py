"""``python -m auditor``: load settings, configure logging, run until SIGTERM/SIGINT."""

import asyncio
import sys

import asyncpg

from provisio_lib.db import SchemaError
from provisio_lib.logging import configure_logging, get_logger
from provisio_lib.settings import SettingsError, load_settings

from .app import create_app
from .settings import AuditorSettings


def main() -> None:
    try:
        settings = load_settings(AuditorSettings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    configure_logging(settings.log_level, settings.log_format, service="auditor")
    try:
        # FastStream's run() turns SIGTERM and SIGINT into a graceful stop.
        asyncio.run(create_app(settings).run())
    except KeyboardInterrupt:
        pass
    except (SchemaError, OSError, asyncpg.PostgresError) as err:
        get_logger().error("auditor_cannot_start", error=str(err))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
