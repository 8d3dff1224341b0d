"""Auth, limits and bad input: always a SCIM Error body, never a 5xx."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest

from tests.integration.scim_helpers import SCIM, USER, bearer, patch_body, scim_client

pytestmark = pytest.mark.integration

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


async def error_of(r, status, scim_type=None):
    assert r.status == status, await r.text()
    assert r.content_type == "application/scim+json"
    body = await r.json()
    assert body["schemas"] == [ERROR]
    assert body["status"] == str(status)
    assert body["detail"]
    if scim_type:
        assert body.get("scimType") == scim_type
    return body


async def test_missing_wrong_and_revoked_tokens_are_401(service_env, tenant, pool):
    async with scim_client(scim_token_cache_s=0) as c:
        for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer "}, bearer("prv_wrong")):
            r = await c.get("/scim/v2/Users", headers=headers)
            await error_of(r, 401)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await c.get("/scim/v2/Users", headers=bearer(tenant.token))).status == 200
        await pool.execute("UPDATE scim_tokens SET revoked_at = now() WHERE tenant_id = $1", tenant.id)
        await error_of(await c.get("/scim/v2/Users", headers=bearer(tenant.token)), 401)
        # discovery is public (RFC 7644 §4)
        assert (await c.get("/scim/v2/ServiceProviderConfig")).status == 200


async def test_last_used_at_is_written_in_batches(service_env, tenant, pool):
    async with scim_client() as c:
        assert (await c.get("/scim/v2/Users", headers=bearer(tenant.token))).status == 200
        assert await pool.fetchval("SELECT last_used_at FROM scim_tokens WHERE tenant_id = $1", tenant.id) is None
    # flushed when the gateway stops (and every 30 s while it runs)
    assert await pool.fetchval("SELECT last_used_at FROM scim_tokens WHERE tenant_id = $1", tenant.id) is not None


async def test_bad_bodies_are_400(service_env, pool, tenant):
    async with scim_client() as c:
        h = bearer(tenant.token)
        await error_of(await c.post("/scim/v2/Users", data=b"{not json", headers=h), 400, "invalidSyntax")
        await error_of(await c.post("/scim/v2/Users", data=b"", headers=h), 400, "invalidSyntax")
        await error_of(await c.post("/scim/v2/Users", json=["a"], headers=h), 400, "invalidSyntax")
        await error_of(await c.post("/scim/v2/Users", json={"schemas": [USER]}, headers=h), 400, "invalidValue")
        await error_of(await c.post("/scim/v2/Users", json={"userName": ""}, headers=h), 400, "invalidValue")
        body = await error_of(
            await c.post("/scim/v2/Users", json={"userName": "a", "shoeSize": 44}, headers=h), 400, "invalidSyntax"
        )
        assert "shoeSize" in body["detail"]
        # An undeclared extension is stored by default (issue 13 §4), but must be an object;
        # a tenant that rejects undeclared extensions gets a 400 naming the URN.
        await error_of(
            await c.post("/scim/v2/Users", json={"userName": "a", "urn:example:ext:1.0:User": "x"}, headers=h),
            400,
            "invalidValue",
        )
        await pool.execute("UPDATE tenants SET scim_undeclared_extensions = 'reject' WHERE id = $1", tenant.id)
        async with scim_client(scim_token_cache_s=0) as strict:
            body = await error_of(
                await strict.post("/scim/v2/Users", json={"userName": "a", "urn:example:ext:1.0:User": {}}, headers=h),
                400,
                "invalidSyntax",
            )
            assert "urn:example:ext:1.0:User" in body["detail"]
        await error_of(
            await c.post("/scim/v2/Users", json={"userName": "a", "active": "maybe"}, headers=h), 400, "invalidValue"
        )
        await error_of(
            await c.post("/scim/v2/Users", json={"userName": "a", "emails": "x"}, headers=h), 400, "invalidValue"
        )
        await error_of(await c.post("/scim/v2/Users", json={"userName": "x" * 600}, headers=h), 400, "invalidValue")
        r = await c.post("/scim/v2/Users", data=b'{"userName": "a"}', headers={**h, "Content-Type": "text/plain"})
        await error_of(r, 415)
        await error_of(
            await c.patch(f"/scim/v2/Users/{uuid.uuid4()}", json={"Operations": []}, headers=h), 400, "invalidSyntax"
        )
        await error_of(await c.get("/scim/v2/Users", params={"count": "ten"}, headers=h), 400, "invalidValue")
        await error_of(await c.get("/scim/v2/Users", params={"sortOrder": "sideways"}, headers=h), 400, "invalidValue")


@pytest.mark.parametrize(
    "filter_text",
    ["userName eq", 'userName eq "a" and', "shoeSize gt 40", "((userName pr)", "userName eq 'single'", 'active gt "x"'],
)
async def test_bad_filters_are_400_invalid_filter(service_env, tenant, filter_text):
    async with scim_client() as c:
        r = await c.get("/scim/v2/Users", params={"filter": filter_text}, headers=bearer(tenant.token))
        await error_of(r, 400, "invalidFilter")


async def test_unknown_ids_routes_and_methods(service_env, tenant):
    async with scim_client() as c:
        h = bearer(tenant.token)
        await error_of(await c.get("/scim/v2/Users/010101001010101011001010101011", headers=h), 404)
        await error_of(await c.get(f"/scim/v2/Groups/{uuid.uuid4()}", headers=h), 404)
        await error_of(await c.get("/scim/v2/Nope", headers=h), 404)
        r = await c.request("PATCH", "/scim/v2/Users", headers=h)
        await error_of(r, 405)
        # Bulk is not offered (ServiceProviderConfig bulk.supported = false): no such endpoint
        await error_of(await c.post("/scim/v2/Bulk", json={}, headers=h), 404)
        await error_of(await c.get("/scim/v2/Schemas/urn:nope", headers=h), 404)


async def test_body_limit_is_413(service_env, tenant):
    async with scim_client(scim_max_body=2048) as c:
        big = json.dumps({"userName": "a", "displayName": "x" * 4096})
        await error_of(await c.post("/scim/v2/Users", data=big, headers=bearer(tenant.token)), 413)


async def test_rate_limit_is_429_with_retry_after(service_env, tenant):
    async with scim_client(scim_rate_limit_per_s=1, scim_rate_limit_burst=2) as c:
        h = bearer(tenant.token)
        statuses = [(await c.get("/scim/v2/Users", headers=h)).status for _ in range(3)]
        assert statuses[:2] == [200, 200]
        r = await c.get("/scim/v2/Users", headers=h)
        await error_of(r, 429)
        assert int(r.headers["Retry-After"]) >= 1


async def test_tenant_rate_limit_overrides_the_default(service_env, tenant, pool):
    await pool.execute("UPDATE tenants SET rate_limit_per_s = 1 WHERE id = $1", tenant.id)
    async with scim_client(scim_rate_limit_per_s=10_000) as c:
        h = bearer(tenant.token)
        statuses = [(await c.get("/scim/v2/Users", headers=h)).status for _ in range(4)]
        assert 429 in statuses


async def test_no_provisioner_answer_is_503_with_retry_after(service_env, tenant, pool):
    # no provisioner running: the command waits on its stream
    async with scim_client(scim_outcome_timeout_s=0.3) as c:
        r = await c.post("/scim/v2/Users", json={"userName": "late@x.com"}, headers=bearer(tenant.token))
        await error_of(r, 503)
        assert r.headers["Retry-After"] == "2"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_redis_down_is_503(service_env, tenant):
    async with scim_client(redis_url=f"redis://127.0.0.1:{_closed_port()}/0", scim_outcome_timeout_s=2) as c:
        h = bearer(tenant.token)
        # reads do not need Redis
        assert (await c.get("/scim/v2/Users", headers=h)).status == 200
        r = await c.post("/scim/v2/Users", json={"userName": "a@x.com"}, headers=h)
        await error_of(r, 503)
        assert "Retry-After" in r.headers


class _TcpProxy:
    """A plain TCP relay to Postgres that the test can cut: the real server, unreachable."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)  # host a directory: Postgres's Unix socket in it
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target
        if host.startswith("/"):
            up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


async def test_postgres_down_is_503_for_reads(service_env, tenant, database_url):
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    # Where Postgres really is: a TCP host:port (CI, containers) or, for the embedded
    # server of a fresh clone, a socket folder in the query (?host=/dir&port=N).
    parts = urlsplit(database_url)
    query = parse_qs(parts.query)
    host = query.pop("host", [parts.hostname or "127.0.0.1"])[0]
    upstream_port = int(query.pop("port", [parts.port or 5432])[0])
    proxy = _TcpProxy(host, upstream_port)
    port = await proxy.start()
    proxied = urlunsplit(
        parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}", query=urlencode(query, doseq=True))
    )
    async with scim_client(database_url=proxied, db_pool_min=1, db_pool_max=2) as c:
        h = bearer(tenant.token)
        assert (await c.get("/scim/v2/Users", headers=h)).status == 200
        await proxy.cut()
        await asyncio.sleep(0.05)
        for path in (
            "/scim/v2/Users?filter=userName%20eq%20%22x%22",
            f"/scim/v2/Users/{uuid.uuid4()}",
            "/scim/v2/Groups",
        ):
            r = await c.get(path, headers=h)
            await error_of(r, 503)
            assert r.headers["Retry-After"] == "2"


async def test_scim_json_content_types_accepted(service_env, tenant, provisioner):
    async with scim_client() as c:
        for ctype in (SCIM, "application/scim+json; charset=utf-8", "application/json"):
            name = f"{uuid.uuid4().hex[:8]}@x.com"
            r = await c.post(
                "/scim/v2/Users",
                data=json.dumps({"userName": name}),
                headers={**bearer(tenant.token), "Content-Type": ctype},
            )
            assert r.status == 201, (ctype, await r.text())
        r = await c.patch(
            f"/scim/v2/Users/{uuid.uuid4()}",
            json=patch_body({"op": "add", "path": "title", "value": "x"}),
            headers=bearer(tenant.token),
        )
        await error_of(r, 404)


async def test_huge_paging_numbers_are_an_empty_page(service_env, tenant):
    # found by the schemathesis drill: a startIndex beyond int64 reached OFFSET (500)
    async with scim_client() as c:
        h = bearer(tenant.token)
        for params in (
            {"startIndex": "3391994155956415499742969438666752"},
            {"startIndex": "-99999999999999999999999"},
            {"count": "99999999999999999999999"},
            {"count": "-5"},
        ):
            r = await c.get("/scim/v2/Users", params=params, headers=h)
            assert r.status == 200, (params, await r.text())
            assert (await r.json())["Resources"] == []
        r = await c.post(
            "/scim/v2/Groups/.search",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "startIndex": 10**40,
                "count": 10**40,
            },
        )
        assert r.status == 200
