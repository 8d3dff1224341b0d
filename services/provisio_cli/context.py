"""What every CLI command needs: settings, a database connection, Redis, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from rich.console import Console
from rich.table import Column, Table

from provisio_lib import db
from provisio_lib.admin.errors import AdminError
from provisio_lib.logging import redact_url
from provisio_lib.redis_client import connect_redis
from provisio_lib.settings import CommonSettings, load_settings
from provisio_lib.topology import Topology

# One clear line for the operator; the CLI exits non-zero. The same class as the shared
# admin layer's (provisio_lib.admin), so its errors reach the CLI's one-line handler.
CliError = AdminError


class CliSettings(CommonSettings):
    pass


C = TypeVar("C", bound=CommonSettings)
_told_dev_stack = False


def load_cli_settings(cls: type[C]) -> C:
    """Settings from the environment; where PROVISIO_DATABASE_URL is unset and a
    `provisio dev` runs, its URLs (from .provisio/dev.env), said once on stderr."""
    global _told_dev_stack
    from .devstack import use_running_stack

    env_file = use_running_stack()
    if env_file is not None and not _told_dev_stack:
        _told_dev_stack = True
        sys.stderr.write(
            f"using the running `provisio dev` stack ({env_file}); set PROVISIO_DATABASE_URL to use another\n"
        )
    return load_settings(cls)


def actor() -> str:
    """Who runs this command, for the audit trail: ``cli:<OS user>``."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"


def settings() -> CliSettings:
    return load_cli_settings(CliSettings)


def topology(s: CommonSettings) -> Topology:
    return Topology(prefix=s.redis_prefix, partitions=s.partitions, maxlen=s.stream_maxlen)


@asynccontextmanager
async def database(s: CommonSettings | None = None, *, check: bool = True) -> AsyncIterator[asyncpg.Connection]:
    s = s or settings()
    dsn = s.database_url.get_secret_value()
    try:
        conn = await db.connect(dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        raise CliError(
            f"cannot connect to Postgres at {redact_url(dsn)}: {err}. Is it running? Check PROVISIO_DATABASE_URL."
        ) from None
    try:
        if check:
            try:
                await db.check_schema(conn)
            except db.SchemaError as err:
                raise CliError(str(err)) from None
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def redis(s: CommonSettings | None = None) -> AsyncIterator[Any]:
    s = s or settings()
    url = s.redis_url.get_secret_value()
    client = connect_redis(url)
    try:
        await client.ping()
    except Exception as err:
        await client.aclose()
        raise CliError(
            f"cannot connect to Redis at {redact_url(url)}: {err}. Is it running? Check PROVISIO_REDIS_URL."
        ) from None
    try:
        yield client
    finally:
        await client.aclose()


async def tenant_id(conn: asyncpg.Connection, tenant: str) -> UUID:
    """Resolve a tenant given by name or id; a clear error if there is none."""
    row = await conn.fetchrow("SELECT id FROM tenants WHERE name = $1 OR id::text = $1", tenant.strip().lower())
    if row is None:
        raise CliError(f"unknown tenant {tenant!r} (see `provisio tenant list`)")
    return row["id"]


# Piped or redirected output is not cut to fit a terminal (rich's default there is 80
# columns): tables are as wide as their rows. COLUMNS still wins where set.
PIPE_WIDTH = 4096
_suggested_json = False


def console() -> Console:
    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, width=PIPE_WIDTH if wide else None)


def _is_id(column: str) -> bool:
    return column == "id" or column.endswith("_id")


def print_rows(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, as_json: bool, title: str | None = None
) -> None:
    """A rich table on a terminal, JSON lines (one object per row) with --json."""
    global _suggested_json
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps({c: r.get(c) for c in columns}, default=str) + "\n")
        return
    cells = [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    # Ids are shown whole: cut at the end, correlation ids (one prefix per gateway
    # process, then a counter) all looked the same.
    table = Table(
        *(
            Column(c, no_wrap=True, min_width=max([len(c), *(len(row[i]) for row in cells)]))
            if _is_id(c)
            else Column(c)
            for i, c in enumerate(columns)
        ),
        title=title,
    )
    for row in cells:
        table.add_row(*row)
    console().print(table)
    if not sys.stdout.isatty() and not _suggested_json:
        _suggested_json = True
        sys.stderr.write("tip: --json prints one JSON object per row, for scripts\n")
