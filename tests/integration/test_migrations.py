import os
import shutil
import subprocess
import sys

import pytest

from provisio_lib import db
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration


async def test_migrate_applies_everything_once_and_records_it(empty_database_url):
    conn = await db.connect(empty_database_url)
    try:
        with pytest.raises(db.SchemaError, match="provisio migrate"):
            await db.check_schema(conn)
        done = await db.migrate(conn)
        assert [m.version for m in done] == [m.version for m in db.load_migrations()]
        assert await db.migrate(conn) == []
        await db.check_schema(conn)
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {
            "tenants",
            "scim_tokens",
            "sso_connections",
            "users",
            "groups",
            "memberships",
            "inbox",
            "audit_log",
        } <= tables
    finally:
        await conn.close()


async def test_a_database_from_newer_code_is_refused(database_url):
    conn = await db.connect(database_url)
    try:
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
        with pytest.raises(db.SchemaError, match="newer than this code"):
            await db.check_schema(conn)
        with pytest.raises(db.SchemaError, match="does not know"):
            await db.migrate(conn)
    finally:
        await conn.close()


async def test_migrate_records_each_files_checksum(empty_database_url):
    conn = await db.connect(empty_database_url)
    try:
        await db.migrate(conn)
        rows = {
            r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        assert rows == {m.version: m.checksum for m in db.load_migrations()}
        assert all(len(c) == 64 for c in rows.values())
    finally:
        await conn.close()


async def test_an_edited_applied_migration_is_refused_naming_the_file(database_url, tmp_path, monkeypatch):
    """0001 edited after it was applied: migrate and every service's schema check refuse,
    naming the file, instead of running on a schema the files no longer describe."""
    edited = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS_DIR, edited)
    first = sorted(edited.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\nCREATE TABLE added_later (id int);\n")
    monkeypatch.setattr(db, "MIGRATIONS_DIR", edited)
    conn = await db.connect(database_url)
    try:
        with pytest.raises(db.SchemaError, match=rf"{first.name} was changed after it was applied") as err:
            await db.migrate(conn)
        assert "new migration" in str(err.value)
        with pytest.raises(db.SchemaError, match=rf"{first.name} was changed"):
            await db.check_schema(conn)
        assert await conn.fetchval("SELECT to_regclass('added_later')") is None
    finally:
        await conn.close()


async def test_the_cli_and_services_refuse_a_database_whose_migration_changed(service_env, database_url):
    """The same as seen by an operator: `provisio migrate` and a service exit non-zero with
    one line naming the file (here the database's record differs, as after an edit)."""
    conn = await db.connect(database_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
    finally:
        await conn.close()
    name = db.load_migrations()[0].filename
    env = {**os.environ, **service_env, "PROVISIO_PROVISIONER_HEALTH_PORT": "0"}
    for cmd in (["provisio_cli", "migrate"], ["provisioner"]):
        run = subprocess.run([sys.executable, "-m", *cmd], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1, (cmd, run.stdout, run.stderr)
        assert f"error: migration {name} was changed after it was applied" in run.stderr, (cmd, run.stderr)
        assert "Traceback" not in run.stderr


async def test_a_database_migrated_before_checksums_gets_them_recorded_once(database_url):
    conn = await db.connect(database_url)
    try:
        # As the code before checksums left it: no checksum column at all.
        await conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
        with pytest.raises(db.SchemaError, match="run `provisio migrate` once"):
            await db.check_schema(conn)
        assert await db.migrate(conn) == []
        await db.check_schema(conn)
        rows = {
            r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        assert rows == {m.version: m.checksum for m in db.load_migrations()}
        # From then on a change is caught.
        await conn.execute("UPDATE schema_migrations SET checksum = repeat('f', 64) WHERE version = 1")
        with pytest.raises(db.SchemaError, match="was changed after it was applied"):
            await db.migrate(conn)
    finally:
        await conn.close()


async def test_new_migration_files_are_applied_and_recorded(database_url, tmp_path, monkeypatch):
    folder = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS_DIR, folder)
    (folder / "0900_later_one.sql").write_text("CREATE TABLE later_one (id int);\n")
    (folder / "0901_later_two.sql").write_text("CREATE TABLE later_two (id int);\r\n")
    monkeypatch.setattr(db, "MIGRATIONS_DIR", folder)
    conn = await db.connect(database_url)
    try:
        done = await db.migrate(conn)
        assert [m.filename for m in done] == ["0900_later_one.sql", "0901_later_two.sql"]
        await db.check_schema(conn)
        assert await conn.fetchval("SELECT checksum FROM schema_migrations WHERE version = 901") == done[1].checksum
        # CRLF line endings are the same file (a Windows checkout): no false alarm.
        (folder / "0901_later_two.sql").write_text("CREATE TABLE later_two (id int);\n")
        await db.check_schema(conn)
    finally:
        await conn.close()


async def test_user_name_is_unique_per_tenant_ignoring_case(pool, tenant):
    import uuid

    import asyncpg

    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'Alice@Acme.test')", uuid.uuid4(), tenant.id
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'alice@acme.TEST')",
                uuid.uuid4(),
                tenant.id,
            )
        other = uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 'other')", other)
        await conn.execute(
            "INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'alice@acme.test')", uuid.uuid4(), other
        )
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT * FROM users WHERE tenant_id = $1 AND lower(user_name) = lower($2)", tenant.id, "x"
            )
        )
        assert "users_user_name_key" in plan


async def test_a_plan_made_on_an_empty_table_does_not_outlive_the_statement_lifetime(database_url, tenant, monkeypatch):
    """A new installation's first sync: the userName lookup is prepared while `users` is
    empty (a sequential-scan plan); once the table has grown, re-preparing after
    STATEMENT_LIFETIME_S gives the index plan again."""
    import asyncio
    import time

    monkeypatch.setattr(db, "STATEMENT_LIFETIME_S", 1)
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    sql = "SELECT id FROM users u WHERE u.tenant_id = $1 AND lower(u.user_name) = lower($2::text)"

    async def per_lookup_s() -> float:
        t0 = time.perf_counter()
        for _ in range(30):
            await pool.fetch(sql, tenant.id, "nobody@x.test")
        return (time.perf_counter() - t0) / 30

    try:
        # No autovacuum ANALYZE of `users` during the test: new statistics invalidate cached
        # plans by themselves (the embedded server's autovacuum did it at once, so the
        # stale plan was never stale); the statement lifetime must do it alone here.
        await pool.execute("ALTER TABLE users SET (autovacuum_enabled = false)")
        for _ in range(10):  # past Postgres's five custom plans: the generic plan is cached
            await pool.fetch(sql, tenant.id, "nobody@x.test")
        await pool.execute(
            "INSERT INTO users (id, tenant_id, user_name) SELECT gen_random_uuid(), $1, 'u' || i || '@x.test'"
            " FROM generate_series(1, 20000) i",
            tenant.id,
        )
        stale = await per_lookup_s()
        await asyncio.sleep(1.5)
        fresh = await per_lookup_s()
    finally:
        await pool.close()
    assert fresh < stale / 5, f"lookups did not get the index plan back: {stale * 1000:.2f} -> {fresh * 1000:.2f} ms"


async def test_0015_gives_admin_rows_written_before_it_their_actor_kind(database_url):
    """Every admin action was source kind 'staff' before 0015: the CLI's (`cli`, `cli:<OS
    user>`) and a setup link's (`setup:<prefix>`) rows get their kind; a console user's row
    (account id as source_id) stays staff whatever its email; outcomes are untouched."""
    import uuid

    import asyncpg

    conn = await db.connect(database_url)
    try:
        staff_id = str(uuid.uuid4())
        before = [  # source_kind, source_id, source_label
            ("staff", "cli", "cli"),
            ("staff", "cli:alice", "cli:alice"),
            ("staff", "setup:psl_abc", "setup:psl_abc"),
            ("staff", staff_id, "ada@example.com"),
            ("staff", staff_id, "cli:odd@example.com"),  # an email may begin with "cli:"
            ("staff", "admin@acme.test", "admin@acme.test"),
            ("scim", "cli:tok", "cli:tok"),
        ]
        for kind, sid, label in before:
            await conn.execute(
                """INSERT INTO audit_log (event_id, occurred_at, completed_at, tenant_id, source_kind, source_id,
                                          source_label, operation, result, correlation_id)
                   VALUES ($1, now(), now(), $2, $3, $4, $5, 'x', 'applied', 'c')""",
                uuid.uuid4(),
                uuid.UUID(int=0),
                kind,
                sid,
                label,
            )
        await conn.execute("DELETE FROM schema_migrations WHERE version = 15")
        assert [m.filename for m in await db.migrate(conn)] == ["0015_admin_actor_kinds.sql"]
        after = [r["source_kind"] for r in await conn.fetch("SELECT source_kind FROM audit_log ORDER BY id")]
        assert after == ["cli", "cli", "setup", "staff", "staff", "staff", "scim"]

        # user_identities.linked_by takes the admin actor kinds too, and nothing else.
        tid, cid, uid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 'm15')", tid)
        await conn.execute(
            """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata, jit_mode,
                   attribute_map, required_attributes, sp_cert_pem, sp_key_pem)
               VALUES ($1, $2, 'c', 'generic', 'e', 'm', 'create', '{}', '{}', 'c', 'k')""",
            cid,
            tid,
        )
        await conn.execute("INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'u')", uid, tid)
        insert = "INSERT INTO user_identities (tenant_id, connection_id, name_id, user_id, linked_by) VALUES ($1, $2, $3, $4, $5)"
        await conn.execute(insert, tid, cid, "n1", uid, "setup")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, tid, cid, "n2", uuid.uuid4(), "anyone")
    finally:
        await conn.close()


async def test_an_identity_link_across_tenants_is_refused_by_postgres(pool):
    """0017: whatever code writes it, a link must join a user and a connection of its own
    tenant — by insert or by update; links made before 0017 that break this are gone."""
    import uuid

    import asyncpg

    a, b = await make_tenant(pool), await make_tenant(pool)

    async def connection(tenant_id) -> uuid.UUID:
        cid = uuid.uuid4()
        await pool.execute(
            """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata)
               VALUES ($1, $2, $3, 'generic', 'e', 'm')""",
            cid,
            tenant_id,
            f"c{cid.hex[:8]}",
        )
        return cid

    async def user(tenant_id) -> uuid.UUID:
        uid = uuid.uuid4()
        await pool.execute(
            "INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, $3)", uid, tenant_id, f"{uid}@x"
        )
        return uid

    ca, cb, ua, ub = await connection(a.id), await connection(b.id), await user(a.id), await user(b.id)
    insert = "INSERT INTO user_identities (tenant_id, connection_id, name_id, user_id) VALUES ($1, $2, $3, $4)"
    await pool.execute(insert, a.id, ca, "ann", ua)  # all of tenant a: fine
    for tenant_id, cid, uid in ((a.id, ca, ub), (a.id, cb, ua), (b.id, ca, ua), (b.id, ca, ub)):
        with pytest.raises(asyncpg.CheckViolationError, match="of its own tenant"):
            await pool.execute(insert, tenant_id, cid, "mallory", uid)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE user_identities SET user_id = $1 WHERE connection_id = $2", ub, ca)
    assert await pool.fetchval("SELECT user_id FROM user_identities WHERE connection_id = $1", ca) == ua

    # A row written across tenants before the trigger existed is removed by 0017.
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE user_identities DISABLE TRIGGER user_identities_same_tenant")
        await conn.execute(insert, b.id, cb, "stray", ua)
        await conn.execute("DROP TRIGGER user_identities_same_tenant ON user_identities")
        await conn.execute("DROP FUNCTION user_identities_same_tenant()")
        await conn.execute("DELETE FROM schema_migrations WHERE version = 17")
        assert [m.filename for m in await db.migrate(conn)] == ["0017_user_identities_same_tenant.sql"]
    rows = await pool.fetch("SELECT name_id FROM user_identities ORDER BY name_id")
    assert [r["name_id"] for r in rows] == ["ann"]
