"""Postgres: the asyncpg pool and the migration runner.

Migrations are plain numbered SQL files in ``migrations/`` (``NNNN_name.sql``), applied
in order, each in its own transaction, and recorded in ``schema_migrations`` with the
SHA-256 of the file. A service refuses to start against a database migrated by newer
code (its highest version is not one this code knows), one that is behind, or one whose
applied migration no longer matches its file: applied migrations are immutable, a change
goes in a new file.
"""

from __future__ import annotations

import hashlib
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

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        """SHA-256 of the file with line endings normalised, so a checkout that turns LF
        into CRLF (git's autocrlf on Windows) does not read as an edit."""
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or MIGRATIONS_DIR
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


async def _applied(conn: asyncpg.Connection) -> dict[int, str | None]:
    """Applied versions and their recorded checksums (None: applied before checksums were
    recorded, or the column does not exist yet)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    has_checksum = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'schema_migrations'"
        " AND column_name = 'checksum' AND table_schema = current_schema())"
    )
    column = "checksum" if has_checksum else "NULL::text AS checksum"
    return {r["version"]: r["checksum"] for r in await conn.fetch(f"SELECT version, {column} FROM schema_migrations")}


def _changed_error(m: Migration, recorded: str) -> SchemaError:
    return SchemaError(
        f"migration {m.filename} was changed after it was applied to this database "
        f"(recorded sha256 {recorded[:12]}…, the file now {m.checksum[:12]}…). Applied migrations "
        "are immutable: restore the file as it was and put the change in a new migration file"
    )


def _check_checksums(applied: dict[int, str | None], migrations: list[Migration]) -> None:
    for m in migrations:
        recorded = applied.get(m.version)
        if recorded is not None and recorded != m.checksum:
            raise _changed_error(m, recorded)


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply the migrations not yet applied; return them. Safe to run concurrently.

    Refuses (SchemaError) a database that has a migration this code does not know, or
    one whose applied migration's file has changed since (its recorded checksum).
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   checksum   text)"""
        )
        # Databases migrated before checksums were recorded: add the column here, not in a
        # numbered migration, because it must exist before any migration is compared.
        await conn.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text")
        migrations = load_migrations()
        applied = await _applied(conn)
        newer = set(applied) - {m.version for m in migrations}
        if newer:
            raise SchemaError(
                f"database has migration(s) {sorted(newer)} this code does not know; run a newer Provisio"
            )
        _check_checksums(applied, migrations)
        # Rows without a checksum were applied by code from before checksums: what was run
        # then cannot be known any more, so the files as they are now become the record
        # (once; from then on they are compared). Refusing instead would stop every
        # existing installation at its next upgrade with nothing the operator could do.
        for m in migrations:
            if m.version in applied and applied[m.version] is None:
                await conn.execute(
                    "UPDATE schema_migrations SET checksum = $2 WHERE version = $1 AND checksum IS NULL",
                    m.version,
                    m.checksum,
                )
        done = []
        for m in migrations:
            if m.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK)


async def check_schema(conn: asyncpg.Connection) -> None:
    """Raise SchemaError unless the database is at exactly this code's schema, every
    applied migration as its file is now."""
    migrations = load_migrations()
    applied = await _applied(conn)
    known = {m.version for m in migrations}
    if set(applied) - known:
        raise SchemaError(
            f"database schema {max(applied)} is newer than this code ({max(known)}); "
            "upgrade Provisio before starting it"
        )
    missing = known - set(applied)
    if missing:
        raise SchemaError(f"database is missing migration(s) {sorted(missing)}; run `provisio migrate`")
    _check_checksums(applied, migrations)
    unrecorded = sorted(v for v, checksum in applied.items() if checksum is None)
    if unrecorded:
        raise SchemaError(
            f"database has no checksum recorded for migration(s) {unrecorded} (migrated by an "
            "older Provisio); run `provisio migrate` once to record them"
        )


async def _init_connection(conn: asyncpg.Connection) -> None:
    import json

    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_session_reset(_conn: asyncpg.Connection) -> None:
    """asyncpg's default reset runs ``RESET ALL; UNLISTEN *; CLOSE ALL; SELECT
    pg_advisory_unlock_all()`` on every release: one more round trip per request (a
    noticeable share of the SCIM gateway's time on reads: BENCHMARKS.md). Provisio's pooled connections keep no session state
    (no SET, LISTEN, cursors or session advisory locks), and asyncpg still rolls back an
    open transaction before this runs, so there is nothing to reset."""


# How long a connection keeps a prepared statement (asyncpg's default: 300 s). Postgres
# settles on a generic plan after a statement's first executions and keeps it; a plan
# made while a table was (nearly) empty — a new installation's first Entra sync — is a
# sequential scan, and a userName lookup then scans the whole growing table (BENCHMARKS.md,
# "A planner trap") until the statement is prepared
# again. Re-preparing every few seconds bounds that window; it costs one Parse and a
# few custom plans per statement and connection.
STATEMENT_LIFETIME_S = 5


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, **kw: Any) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb to Python objects."""
    kw.setdefault("reset", _no_session_reset)
    kw.setdefault("max_cached_statement_lifetime", STATEMENT_LIFETIME_S)
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection, **kw)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn
