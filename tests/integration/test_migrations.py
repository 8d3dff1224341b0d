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
