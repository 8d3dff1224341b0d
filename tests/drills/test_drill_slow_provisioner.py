"""Drill 6: the provisioner answers later than the gateway waits.

The SCIM gateway (a process, outcome wait 1 s) and a provisioner process that is paused
(SIGSTOP): creates are answered 503 + Retry-After, and the client (as Entra ID does)
retries while the provisioner is still paused: 503 again. When the provisioner resumes,
each user exists once: the first create applied, the retry's create refused as a duplicate
(recorded in the inbox, not applied). A retry after that is 409 ``uniqueness``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_tenant

from .support import Clock, wait_for

pytestmark = [pytest.mark.drills, pytest.mark.integration]

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_JSON = "application/scim+json"
USERS = 8


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": SCIM_JSON}


def user(i: int) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "userName": f"slow{i}@drill.test",
        "name": {"givenName": "Slow", "familyName": str(i)},
        "emails": [{"value": f"slow{i}@drill.test", "type": "work", "primary": True}],
        "active": True,
    }


async def test_slow_provisioner_503_then_applied_once_and_retry_is_409(procs, pool):
    clock = Clock()
    acme = await make_tenant(pool)
    worker = await procs.provisioner()
    _, base = await procs.scim_gateway(scim_outcome_timeout_s=1, scim_retry_after_s=3)
    worker.send(signal.SIGSTOP)
    clock.mark("provisioner paused")

    async with aiohttp.ClientSession(base_url=base, headers=headers(acme.token)) as http:

        async def post(i: int) -> tuple[int, str | None, dict[str, Any]]:
            async with http.post("/scim/v2/Users", json=user(i)) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.json(content_type=None)

        first = await asyncio.gather(*(post(i) for i in range(USERS)))
        assert [(s, ra) for s, ra, _ in first] == [(503, "3")] * USERS, first
        assert all("queued" in body["detail"] and body["status"] == "503" for _, _, body in first)
        clock.mark("503s")
        retried = await asyncio.gather(*(post(i) for i in range(USERS)))  # the IdP retries: still paused
        assert [s for s, _, _ in retried] == [503] * USERS

        async def inbox() -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval("SELECT count(*) FROM inbox WHERE tenant_id = $1", acme.id))

        assert await inbox() == 0  # really paused: nothing applied yet
        worker.send(signal.SIGCONT)
        await wait_for(lambda: _equals(inbox, 2 * USERS), 15, "both attempts of every create recorded")
        clock.mark("applied after resume")

        async with pool.acquire() as conn:
            users = await conn.fetch("SELECT user_name FROM users WHERE tenant_id = $1", acme.id)
            results = await conn.fetch(
                "SELECT outcome->>'result' AS result, outcome->'error'->>'code' AS code FROM inbox WHERE tenant_id = $1",
                acme.id,
            )
        assert sorted(r["user_name"] for r in users) == sorted(f"slow{i}@drill.test" for i in range(USERS))
        assert sorted((r["result"], r["code"]) for r in results) == sorted(
            [("applied", None)] * USERS + [("failed", "uniqueness")] * USERS
        )

        again = await asyncio.gather(*(post(i) for i in range(USERS)))  # the next retry: a clear 409
        assert [s for s, _, _ in again] == [409] * USERS
        assert all(body["scimType"] == "uniqueness" for _, _, body in again)
        for i in range(USERS):
            async with http.get("/scim/v2/Users", params={"filter": f'userName eq "slow{i}@drill.test"'}) as resp:
                listed = await resp.json(content_type=None)
            assert resp.status == 200 and listed["totalResults"] == 1
        async with http.post("/scim/v2/Users", json=user(USERS)) as resp:  # and a fresh create is fast again
            assert resp.status == 201
    print(f"drill 6: {clock}")


async def _equals(count: Any, n: int) -> bool:
    return await count() == n
