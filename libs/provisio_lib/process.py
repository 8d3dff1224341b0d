"""What every ``python -m <service>`` does: settings or one clear line, logging, run,
and a start-up failure (database unreachable, schema not migrated, port taken) as one
``error:`` line and exit code 1 — never a traceback."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import asyncpg
from pydantic_settings import BaseSettings
from redis.exceptions import RedisError

from .db import SchemaError
from .logging import configure_logging, get_logger
from .settings import CommonSettings, SettingsError, load_settings

S = TypeVar("S", bound=BaseSettings)

STARTUP_ERRORS: tuple[type[BaseException], ...] = (SchemaError, OSError, asyncpg.PostgresError, RedisError)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def start(cls: type[S], service: str) -> S:
    """Load and validate settings (or exit with one line), then configure logging."""
    try:
        settings = load_settings(cls)
    except SettingsError as err:
        fail(str(err))
    assert isinstance(settings, CommonSettings)
    configure_logging(settings.log_level, settings.log_format, service=service)
    return settings


@contextmanager
def startup_errors_exit(service: str) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        pass
    except STARTUP_ERRORS as err:
        get_logger().error(f"{service}_cannot_start", error=str(err))
        if isinstance(err, SchemaError):
            fail(str(err))  # already says what to do (run `provisio migrate`, upgrade)
        fail(
            f"{service} cannot start: {err} (is Postgres/Redis running? check PROVISIO_DATABASE_URL, "
            "PROVISIO_REDIS_URL and the ports)"
        )


def new_event_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """uvloop where installed (libuv's sockets and timers: less CPU per request and per
    Redis/Postgres round trip, measured in BENCHMARKS.md), else asyncio's own loop."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:  # e.g. Windows, where uvloop does not exist
            get_logger().info("uvloop_unavailable", using="asyncio")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def calm_gc(young: int | None = 50_000) -> None:
    """Fewer, cheaper garbage collections on the request path: what exists at start-up
    (modules, settings, the app) is moved out of the collector's sight, and the youngest
    generation is collected every ``young`` allocations instead of 700 (every few requests
    under load), which made collections a source of tail latency and CPU (BENCHMARKS.md,
    "Garbage collection off the request path"). ``young=None`` keeps Python's thresholds:
    the auditor, which is off the request path, leaves more cyclic garbage per allocation
    (its RSS grew towards the memory budget), and the SAML gateway, whose time is in
    signature checks and whose RSS was closest to the budget."""
    gc.collect()
    gc.freeze()
    if young is not None:
        gc.set_threshold(young, 10, 10)


def run_worker(app: Any, service: str, *, event_loop: str = "uvloop", young_gc: int | None = 50_000) -> None:
    """Run a FastStream app; its run() turns SIGTERM/SIGINT into a graceful stop."""
    calm_gc(young_gc)
    with startup_errors_exit(service), asyncio.Runner(loop_factory=lambda: new_event_loop(event_loop)) as runner:
        runner.run(app.run())


def serve_http(
    app: Any,
    *,
    host: str,
    port: int,
    shutdown_timeout: float,
    service: str,
    event_loop: str = "uvloop",
    young_gc: int | None = 50_000,
) -> None:
    """Serve an aiohttp app; run_app turns SIGTERM/SIGINT into a graceful shutdown: stop
    accepting, let in-flight requests finish (shutdown_timeout), run the cleanup contexts."""
    from aiohttp import web

    calm_gc(young_gc)
    with startup_errors_exit(service):
        web.run_app(
            app,
            host=host,
            port=port,
            shutdown_timeout=shutdown_timeout,
            access_log=None,
            print=None,
            loop=new_event_loop(event_loop),
        )
