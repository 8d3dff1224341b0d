"""Postgres: the asyncpg pool and the migration runner.

Migrations are plain numbered SQL files in ``migrations/`` (``NNNN_name.sql``), applied
in order, each in its own transaction, and recorded in ``schema_migrations``. A service
refuses to start against a database migrated by newer code (its highest version is not
one this code knows) or one that is behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Serialises concurrent `provisio migrate` runs (compose replicas, k8s Jobs).
_ADVISORY_LOCK = 0x70726F76


# Postgres is down, restarting or out of connections: worth a retry later (503 +
# Retry-After at a gateway). InternalClientError is what asyncpg's pool raises when it
# resets a connection that died mid-query; OperatorInterventionError covers 57P01
# (admin shutdown) and 57P03 (cannot connect now).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


class SchemaError(Exception):
    """The database schema does not match this code; the message says what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise SchemaError(f"migration file name {path.name!r} is not NNNN_name.sql")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SchemaError(f"two migrations share a number in {directory}")
    return found


def code_schema_version() -> int:
    return max((m.version for m in load_migrations()), default=0)


async def _applied(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply the migrations not yet applied; return them. Safe to run concurrently."""
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = await _applied(conn)
        known = {m.version for m in load_migrations()}
        newer = applied - known
        if newer:
            raise SchemaError(
                f"database has migration(s) {sorted(newer)} this code does not know; "
                "run a newer Provisio"
            )
        done = []
        for m in load_migrations():
            if m.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK)


async def check_schema(conn: asyncpg.Connection) -> None:
    """Raise SchemaError unless the database is at exactly this code's schema."""
    applied = await _applied(conn)
    known = {m.version for m in load_migrations()}
    if applied - known:
        raise SchemaError(
            f"database schema {max(applied)} is newer than this code ({max(known)}); "
            "upgrade Provisio before starting it"
        )
    missing = known - applied
    if missing:
        raise SchemaError(
            f"database is missing migration(s) {sorted(missing)}; run `provisio migrate`"
        )


async def _init_connection(conn: asyncpg.Connection) -> None:
    import json

    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_session_reset(_conn: asyncpg.Connection) -> None:
    """asyncpg's default reset runs ``RESET ALL; UNLISTEN *; CLOSE ALL; SELECT
    pg_advisory_unlock_all()`` on every release: one more round trip per request (11% of
    the SCIM gateway's time on reads). Provisio's pooled connections keep no session state
    (no SET, LISTEN, cursors or session advisory locks), and asyncpg still rolls back an
    open transaction before this runs, so there is nothing to reset."""


# How long a connection keeps a prepared statement (asyncpg's default: 300 s). Postgres
# settles on a generic plan after a statement's first executions and keeps it; a plan
# made while a table was (nearly) empty — a new installation's first Entra sync — is a
# sequential scan, and a userName lookup then scans the whole growing table (measured:
# 14 ms per lookup at 20,000 users instead of 0.1 ms) until the statement is prepared
# again. Re-preparing every few seconds bounds that window; it costs one Parse and a
# few custom plans per statement and connection.
STATEMENT_LIFETIME_S = 5


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, **kw: Any) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb to Python objects."""
    kw.setdefault("reset", _no_session_reset)
    kw.setdefault("max_cached_statement_lifetime", STATEMENT_LIFETIME_S)
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kw
    )


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn
