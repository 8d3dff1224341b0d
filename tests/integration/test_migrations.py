import pytest

from provisio_lib import db

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
        assert {"tenants", "scim_tokens", "sso_connections", "users", "groups", "memberships", "inbox", "audit_log"} <= tables
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


async def test_user_name_is_unique_per_tenant_ignoring_case(pool, tenant):
    import uuid

    import asyncpg

    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'Alice@Acme.test')", uuid.uuid4(), tenant.id)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'alice@acme.TEST')", uuid.uuid4(), tenant.id)
        other = uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 'other')", other)
        await conn.execute("INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'alice@acme.test')", uuid.uuid4(), other)
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT * FROM users WHERE tenant_id = $1 AND lower(user_name) = lower($2)", tenant.id, "x"))
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
        for _ in range(10):  # past Postgres's five custom plans: the generic plan is cached
            await pool.fetch(sql, tenant.id, "nobody@x.test")
        await pool.execute(
            "INSERT INTO users (id, tenant_id, user_name) SELECT gen_random_uuid(), $1, 'u' || i || '@x.test'"
            " FROM generate_series(1, 20000) i", tenant.id)
        stale = await per_lookup_s()
        await asyncio.sleep(1.5)
        fresh = await per_lookup_s()
    finally:
        await pool.close()
    assert fresh < stale / 5, f"lookups did not get the index plan back: {stale * 1000:.2f} -> {fresh * 1000:.2f} ms"
