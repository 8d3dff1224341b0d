"""What every CLI command needs: settings, a database connection, Redis, output."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
from rich.console import Console
from rich.table import Table

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


def settings() -> CliSettings:
    return load_settings(CliSettings)


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
            f"cannot connect to Postgres at {redact_url(dsn)}: {err}. "
            "Is it running? Check PROVISIO_DATABASE_URL."
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
    row = await conn.fetchrow(
        "SELECT id FROM tenants WHERE name = $1 OR id::text = $1", tenant.strip().lower()
    )
    if row is None:
        raise CliError(f"unknown tenant {tenant!r} (see `provisio tenant list`)")
    return row["id"]


def console() -> Console:
    return Console(highlight=False)


def print_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, as_json: bool, title: str | None = None) -> None:
    """A rich table on a terminal, JSON lines (one object per row) with --json."""
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps({c: r.get(c) for c in columns}, default=str) + "\n")
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    console().print(table)
