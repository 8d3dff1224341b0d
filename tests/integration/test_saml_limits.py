"""Per-source-address limits of the SAML gateway (issue 13 §2): the unauthenticated
login URL signed an AuthnRequest and stored a Redis key on every call, and /saml/token
let anyone guess codes and app secrets without limit."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from saml_setup import add_connection, code_of, exchange, page_is_clean, post_acs, start_gateway
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration


@pytest.fixture
async def acme(pool: Any) -> Any:
    return await make_tenant(pool, name=f"acme-{uuid.uuid4().hex[:6]}")


async def request_keys(redis: Any, topology: Any) -> int:
    return len([k async for k in redis.scan_iter(match=topology.key("saml", "req", "*"))])


async def test_the_login_url_is_limited_per_address_across_replicas(
    service_env: Any, topology: Any, pool: Any, acme: Any, redis: Any
) -> None:
    s = await add_connection(pool, acme.id, "okta", preset="okta")
    url = f"/saml/{s.tenant}/okta/login"
    gateway = await start_gateway(saml_login_per_min=3)
    replica = await start_gateway(saml_login_per_min=3)
    try:
        for _ in range(3):
            assert (await gateway.get(url, allow_redirects=False)).status == 302
        refused = await gateway.get(url, allow_redirects=False)
        assert refused.status == 429
        assert "text/html" in refused.headers["Content-Type"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 61
        page = await refused.text()
        assert "Too many sign-in attempts" in page and page_is_clean(page)
        # nothing was signed or stored for the refused call; the other replica knows too
        assert await request_keys(redis, topology) == 3
        assert (await replica.get(url, allow_redirects=False)).status == 429
        assert await request_keys(redis, topology) == 3
    finally:
        await gateway.close()
        await replica.close()


async def test_the_login_limit_reads_forwarded_for_only_from_trusted_proxies(
    service_env: Any, topology: Any, pool: Any, acme: Any
) -> None:
    s = await add_connection(pool, acme.id, "okta", preset="okta")
    url = f"/saml/{s.tenant}/okta/login"
    behind_proxy = await start_gateway(saml_login_per_min=1, trusted_proxies="127.0.0.0/8,::1")
    try:
        for client in ("203.0.113.1", "203.0.113.2"):  # two browsers behind one proxy
            r = await behind_proxy.get(url, allow_redirects=False, headers={"X-Forwarded-For": client})
            assert r.status == 302
        r = await behind_proxy.get(url, allow_redirects=False, headers={"X-Forwarded-For": "203.0.113.1"})
        assert r.status == 429
    finally:
        await behind_proxy.close()
    direct = await start_gateway(saml_login_per_min=1)
    try:
        statuses = [
            (await direct.get(url, allow_redirects=False, headers={"X-Forwarded-For": f"192.0.2.{i}"})).status
            for i in range(2)
        ]
        assert statuses == [302, 429]  # the header alone does not make a new address
    finally:
        await direct.close()


async def test_failed_code_exchanges_are_limited_per_address(
    service_env: Any, topology: Any, pool: Any, acme: Any, provisioner: Any, redis: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", allow_idp_initiated=True)
    gateway = await start_gateway(saml_failed_token_per_min=2)
    try:
        code = code_of(await post_acs(gateway, s, s.response()))
        for guess in ("guess-1", "guess-2"):
            r = await exchange(gateway, s, guess)
            assert r.status in (400, 401)
        r = await exchange(gateway, s, code)  # even the right code and secret, from this address
        assert r.status == 429
        assert r.content_type == "application/json"
        body = await r.json()
        assert body["error"] == "slow_down" and body["error_description"]
        assert 1 <= int(r.headers["Retry-After"]) <= 61
        assert r.headers["Cache-Control"] == "no-store"
        # the refused call did not look at (or burn) the code
        assert len([k async for k in redis.scan_iter(match=topology.key("saml", "code", "*"))]) == 1
    finally:
        await gateway.close()


async def test_successful_exchanges_do_not_count(
    service_env: Any, topology: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", allow_idp_initiated=True)
    gateway = await start_gateway(saml_failed_token_per_min=1)
    try:
        for _ in range(3):
            code = code_of(await post_acs(gateway, s, s.response()))
            assert (await exchange(gateway, s, code)).status == 200
    finally:
        await gateway.close()


# --------------------------------------------------------------------------- statement timeout


async def test_the_statement_timeout_is_set_on_every_pooled_connection(service_env: Any) -> None:
    from saml_gateway.app import POOL

    for overrides, expected in (({}, "5s"), ({"saml_statement_timeout_s": 1.5}, "1500ms")):
        gateway = await start_gateway(db_pool_min=3, db_pool_max=3, **overrides)
        try:
            pool = gateway.app[POOL]
            conns = [await pool.acquire() for _ in range(3)]
            try:
                assert [await c.fetchval("SHOW statement_timeout") for c in conns] == [expected] * 3
            finally:
                for c in conns:
                    await pool.release(c)
        finally:
            await gateway.close()


async def test_a_login_whose_query_times_out_gets_a_503_page(service_env: Any, pool: Any, acme: Any) -> None:
    """The test holds an ACCESS EXCLUSIVE lock on sso_connections, so the gateway's lookup
    of the connection waits until its statement is cancelled. Before: no timeout, the
    login (and its pooled connection) waited as long as the lock was held."""
    s = await add_connection(pool, acme.id, "okta", preset="okta")
    gateway = await start_gateway(saml_statement_timeout_s=0.3)
    try:
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("LOCK TABLE sso_connections IN ACCESS EXCLUSIVE MODE")
            try:
                for call in (
                    gateway.get(f"/saml/{s.tenant}/okta/login", allow_redirects=False),
                    post_acs(gateway, s, "<samlp:Response/>"),
                ):
                    r = await asyncio.wait_for(call, timeout=30)  # a hang guard: without a timeout it waits
                    assert r.status == 503
                    assert "text/html" in r.headers["Content-Type"] and r.headers["Retry-After"] == "5"
                    page = await r.text()
                    assert "Try again shortly" in page and page_is_clean(page)
            finally:
                await tx.rollback()
        # the lock gone, the same login works
        assert (await gateway.get(f"/saml/{s.tenant}/okta/login", allow_redirects=False)).status == 302
    finally:
        await gateway.close()
