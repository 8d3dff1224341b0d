"""The example receiving application (examples/receiver) end to end: an Entra-style
initial SCIM sync, group changes, deactivations, a deletion and a JIT login through the
SAML gateway with the test IdP's signed response; the app backfills from the App API,
then follows by signed webhooks, and its tables equal Provisio's directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from provisio_lib import webhook_store
from saml_idp import entra_attributes
from saml_setup import add_connection, code_of, post_acs, sp_login, start_gateway
from tests.conftest import eventually, make_tenant, with_database
from tests.integration.receiver_support import (
    new_secret,
    provisio_snapshot,
    receiver_app,
    receiver_snapshot,
    signed,
)
from tests.integration.scim_helpers import ENTERPRISE, GROUP, USER, bearer, patch_body, scim_client
from tests.integration.test_app_api import app_client, new_key
from tests.integration.webhook_support import acli, running_dispatcher

pytestmark = pytest.mark.integration

TENANT = "t"


def event(
    type_: str, seq: int, data: dict[str, Any], *, resource_id: str | None = None, id_: str | None = None
) -> dict[str, Any]:
    """An event as the feed and the webhooks carry it (docs/app-integration.md)."""
    return {
        "id": id_ or str(uuid.uuid4()),
        "type": type_,
        "tenant": TENANT,
        "tenant_id": str(uuid.UUID(int=1)),
        "sequence": f"{seq:032x}",
        "occurred_at": "2026-12-02T10:00:00Z",
        "source": {"kind": "scim", "label": "entra"},
        "correlation_id": "c",
        "resource_type": type_.split(".")[0].title(),
        "resource_id": resource_id or data.get("id"),
        "data": data,
    }


def user(uid: str, name: str, **kw: Any) -> dict[str, Any]:
    return {"id": uid, "user_name": name, "active": True, "emails": [], "external_id": None, **kw}


# --------------------------------------------------------------------------- the app alone


async def test_signatures_idempotency_and_per_resource_order(empty_database_url):
    secret, rotated = new_secret(), new_secret()
    u, g, v = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    async with receiver_app(empty_database_url, [secret, rotated]) as app:

        async def post(ev: dict[str, Any], key: str = secret, **kw: Any) -> Any:
            body, headers = signed(ev, key, **kw)
            return await app.post("/webhooks/provisio", data=body, headers=headers)

        created = event("user.created", 10, user(u, "ann@x.test", given_name="Ann"))
        r = await post(created)
        assert r.status == 200 and (await r.json())["applied"] is True
        # A redelivery (same id) is answered 2xx and changes nothing.
        r = await post(created)
        assert r.status == 200 and (await r.json())["applied"] is False
        # The second secret of a rotation verifies as well.
        assert (await post(event("user.updated", 30, user(u, "ann@x.test", given_name="Anna")), rotated)).status == 200
        # An older change of the same user arriving late does not overwrite the newer one.
        assert (await post(event("user.updated", 20, user(u, "ann@x.test", given_name="Old")))).status == 200
        snap = await receiver_snapshot(empty_database_url, TENANT)
        assert snap["users"][u][4] == "Anna"

        # Refused: another secret, a forged body, no or malformed headers, a stale timestamp.
        ev = event("user.updated", 40, user(u, "ann@x.test", given_name="Mallory"))
        assert (await post(ev, new_secret())).status == 401
        body, headers = signed(ev, secret)
        assert (
            await app.post("/webhooks/provisio", data=body.replace(b"Mallory", b"Eve"), headers=headers)
        ).status == 401
        assert (await app.post("/webhooks/provisio", data=body)).status == 401
        for bad in ("garbage", "v1,@@@", "v2,abc"):
            r = await app.post("/webhooks/provisio", data=body, headers={**headers, "webhook-signature": bad})
            assert r.status == 401, bad
        assert (await post(ev, timestamp=datetime.now(UTC) - timedelta(minutes=10))).status == 401
        assert (await receiver_snapshot(empty_database_url, TENANT))["users"][u][4] == "Anna"
        # The ping of `provisio webhook test`.
        r = await post({"id": str(uuid.uuid4()), "type": "webhook.test", "data": {}})
        assert r.status == 200 and (await r.json())["ok"] is True

        # Memberships per source: removing the SCIM one leaves the JIT one.
        group = {"id": g, "display_name": "Sales", "external_id": "oid-1"}
        assert (await post(event("group.created", 50, group))).status == 200
        for seq, kind, source in ((51, "added", "scim"), (52, "added", "jit"), (53, "removed", "scim")):
            data = {"group": {"id": g}, "user": {"id": u}, "source": source}
            assert (await post(event(f"group.member_{kind}", seq, data, resource_id=g))).status == 200
        assert (await receiver_snapshot(empty_database_url, TENANT))["members"] == {(g, u)}
        data = {"group": {**group, "display_name": "Sales EU"}, "user": {"id": u}, "source": "jit"}
        assert (await post(event("group.member_removed", 54, data, resource_id=g))).status == 200
        snap = await receiver_snapshot(empty_database_url, TENANT)
        assert snap["members"] == set() and snap["groups"][g][0] == "Sales EU"

        # A deletion is final: an older update or membership arriving after it changes nothing.
        await post(event("user.created", 60, user(v, "bob@x.test")))
        await post(event("user.deleted", 70, {"id": v, "user_name": "bob@x.test"}))
        await post(event("user.updated", 65, user(v, "bob@x.test", given_name="Zombie")))
        data = {"group": {"id": g}, "user": {"id": v}, "source": "scim"}
        await post(event("group.member_added", 66, data, resource_id=g))
        snap = await receiver_snapshot(empty_database_url, TENANT)
        assert v not in snap["users"] and snap["members"] == set()
        # sso.login carries the user after the login; an unknown type is recorded, ignored.
        login = {"user_id": u, "user": user(u, "ann@x.test", given_name="Ann SSO"), "created": False, "updated": True}
        assert (await post(event("sso.login", 80, login, resource_id=u))).status == 200
        assert (await post(event("user.teleported", 81, {"id": u}))).status == 200
        snap = await receiver_snapshot(empty_database_url, TENANT)
        assert snap["users"][u][4] == "Ann SSO"
        assert (await post({"id": str(uuid.uuid4()), "type": "user.created"})).status == 400
        # Its database gone: 503, not applied, so Provisio sends it again later.
        from examples.receiver.app import POOL

        await app.app[POOL].close()
        r = await post(event("user.updated", 90, user(u, "ann@x.test", given_name="Later")))
        assert r.status == 503

    conn = await asyncpg.connect(empty_database_url)
    try:
        # Each event applied once, duplicates and refusals never recorded.
        assert await conn.fetchval("SELECT count(*) FROM applied_events") == 14
    finally:
        await conn.close()


async def test_a_backfill_copy_never_overwrites_a_newer_event(empty_database_url):
    """The backfill gives every row the cursor noted before it; events after that cursor
    win whichever is applied first, and a removal's tombstone keeps a stale copy out."""
    from examples.receiver.app import apply_event, put_membership, put_user

    secret = new_secret()
    u, g = str(uuid.uuid4()), str(uuid.uuid4())
    async with receiver_app(empty_database_url, [secret]):
        pass  # creates the schema
    conn = await asyncpg.connect(empty_database_url)
    try:
        cursor = f"{100:032x}"
        await apply_event(conn, event("user.updated", 150, user(u, "ann@x.test", given_name="New")))
        await put_user(conn, TENANT, user(u, "ann@x.test", given_name="Copied"), cursor)
        data = {"group": {"id": g}, "user": {"id": u}, "source": "scim"}
        await apply_event(conn, event("group.member_removed", 160, data, resource_id=g))
        await put_membership(conn, TENANT, g, u, "scim", True, cursor)
        await put_membership(conn, TENANT, g, str(uuid.uuid4()), "scim", True, cursor)
        snap = await receiver_snapshot(empty_database_url, TENANT)
        assert snap["users"][u][4] == "New" and len(snap["members"]) == 1 and (g, u) not in snap["members"]
    finally:
        await conn.close()


# --------------------------------------------------------------------------- end to end

ENTRA_GROUP_OIDS = [str(uuid.uuid4()) for _ in range(3)]


async def entra_initial_sync(s: Any, token: str) -> tuple[list[str], list[str]]:
    """What Entra's first provisioning cycle sends: users (enterprise extension), then
    groups without members, then members added by PATCH (Microsoft's SCIM tutorial)."""
    h = bearer(token)
    users = []
    for i in range(6):
        r = await s.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": [USER, ENTERPRISE],
                "externalId": str(uuid.uuid4()),
                "userName": f"user{i}@contoso.test",
                "active": True,
                "displayName": f"User {i}",
                "emails": [{"primary": True, "type": "work", "value": f"user{i}@contoso.test"}],
                "name": {"formatted": f"User {i}", "familyName": f"Family{i}", "givenName": f"Given{i}"},
                ENTERPRISE: {"department": "Sales" if i % 2 else "Ops"},
            },
        )
        assert r.status == 201, await r.text()
        users.append((await r.json())["id"])
    groups = []
    for oid, name in zip(ENTRA_GROUP_OIDS, ("Sales", "Ops", "Admins"), strict=True):
        r = await s.post(
            "/scim/v2/Groups",
            headers=h,
            json={"schemas": [GROUP], "externalId": oid, "displayName": name, "members": []},
        )
        assert r.status == 201, await r.text()
        groups.append((await r.json())["id"])
    for gid, members in zip(groups, (users[1::2], users[0::2], users[:1]), strict=True):
        ops = [{"op": "Add", "path": "members", "value": [{"$ref": None, "value": m} for m in members]}]
        r = await s.patch(f"/scim/v2/Groups/{gid}", headers=h, json=patch_body(*ops))
        assert r.status in (200, 204), await r.text()
    return users, groups


async def test_the_example_app_mirrors_the_directory(
    service_env, pool, provisioner, topology, empty_database_url, monkeypatch
):
    import examples.receiver.app

    monkeypatch.setattr(examples.receiver.app, "PAGE_SIZE", 2)  # the backfill follows next_cursor
    tenant = await make_tenant(pool, name=f"contoso-{uuid.uuid4().hex[:6]}", deprovision="delete")
    port = _free_port()
    async with scim_client() as s, app_client() as api, running_dispatcher():
        users, groups = await entra_initial_sync(s, tenant.token)
        # The developer's steps: an API key, a webhook to the app, then the app's first start.
        key = await new_key(pool, tenant.id)
        async with pool.acquire() as conn:
            secret = await webhook_store.add_endpoint(
                conn, "example", tenant.id, f"http://127.0.0.1:{port}/webhooks/provisio", None
            )
        api_url = str(api.make_url("/")).rstrip("/")
        async with receiver_app(
            empty_database_url,
            [secret],
            api_url=api_url,
            api_key=key["Authorization"][7:],
            tenants=[tenant.name],
            port=port,
        ) as app:
            # First start: the backfill alone brings the initial sync.
            await eventually(lambda: _ready(app), timeout=30)
            assert await receiver_snapshot(empty_database_url, tenant.name) == await provisio_snapshot(
                api, key, tenant.name
            )
            # Then the changes reach the app as webhooks, from Provisio's dispatcher.
            h = bearer(tenant.token)
            # Group changes: a rename, a member removed, one added.
            await s.patch(
                f"/scim/v2/Groups/{groups[0]}",
                headers=h,
                json=patch_body({"op": "Replace", "path": "displayName", "value": "Sales EMEA"}),
            )
            await s.patch(
                f"/scim/v2/Groups/{groups[0]}",
                headers=h,
                json=patch_body({"op": "Remove", "path": "members", "value": [{"value": users[1]}]}),
            )
            await s.patch(
                f"/scim/v2/Groups/{groups[2]}",
                headers=h,
                json=patch_body({"op": "Add", "path": "members", "value": [{"value": users[5]}]}),
            )
            # Deactivations (Entra's path-less replace with a string boolean), an update,
            # a deletion, a group deleted.
            await s.patch(
                f"/scim/v2/Users/{users[2]}",
                headers=h,
                json=patch_body({"op": "Replace", "value": {"active": "False"}}),
            )
            await s.patch(
                f"/scim/v2/Users/{users[3]}",
                headers=h,
                json=patch_body({"op": "Replace", "path": "active", "value": False}),
            )
            await s.patch(
                f"/scim/v2/Users/{users[4]}",
                headers=h,
                json=patch_body({"op": "Replace", "path": "name.givenName", "value": "Renamed"}),
            )
            assert (await s.delete(f"/scim/v2/Users/{users[0]}", headers=h)).status == 204
            assert (await s.delete(f"/scim/v2/Groups/{groups[1]}", headers=h)).status == 204
            # A JIT login through the SAML gateway: a new user, a membership of a group
            # SCIM made (Entra object id) and a group JIT makes.
            gateway = await start_gateway()
            try:
                sso = await add_connection(pool, tenant.id, "entra", jit="sync")
                req = await sp_login(gateway, sso)
                claims = entra_attributes([ENTRA_GROUP_OIDS[2], str(uuid.uuid4())])
                resp = await post_acs(gateway, sso, sso.response(in_response_to=req, attributes=claims))
                code_of(resp)
            finally:
                await gateway.close()

            async def same() -> bool:
                mine = await receiver_snapshot(empty_database_url, tenant.name)
                return mine == await provisio_snapshot(api, key, tenant.name)

            await eventually(same, timeout=30, interval=0.3)
            theirs = await provisio_snapshot(api, key, tenant.name)
            # The test saw what it meant to: the JIT user, deactivations, the deletion.
            alice = [u for u, row in theirs["users"].items() if row[0] == "alice@acme.test"]
            assert len(alice) == 1 and (groups[2], alice[0]) in theirs["members"]
            assert theirs["users"][users[2]][2] is False and users[0] not in theirs["users"]
            assert len(theirs["groups"]) == 3  # Sales EMEA, Admins, the JIT group
        # Every event the app got, it got signed by the dispatcher, and applied once.
        conn = await asyncpg.connect(empty_database_url)
        try:
            applied = await conn.fetchval("SELECT count(*) FROM applied_events")
        finally:
            await conn.close()
        assert applied > 10


async def test_changes_made_during_the_backfill_are_caught_up(
    service_env, pool, provisioner, empty_database_url, monkeypatch
):
    """Users changed and deleted after the app copied them (and before it finished) are
    brought up to date by the feed from the cursor noted before the copy — no webhooks."""
    import examples.receiver.app as rx

    monkeypatch.setattr(rx, "PAGE_SIZE", 2)
    tenant = await make_tenant(pool, name=f"contoso-{uuid.uuid4().hex[:6]}", deprovision="delete")
    async with scim_client() as s, app_client() as api:
        users, _groups = await entra_initial_sync(s, tenant.token)
        key = await new_key(pool, tenant.id)
        h = bearer(tenant.token)

        class ChangingMidCopy(rx.AppApi):
            """The real API; when the app moves from copying users to groups, SCIM changes
            users it has already copied (a seam to place the race, nothing faked)."""

            changed = False
            noted = ""  # the cursor the app noted before its copy

            async def get(self, path: str, **params: str) -> dict[str, Any]:
                if path.endswith("/groups") and not self.changed:
                    self.changed = True
                    ops = patch_body({"op": "Replace", "path": "name.givenName", "value": "Changed mid-copy"})
                    assert (await s.patch(f"/scim/v2/Users/{users[1]}", headers=h, json=ops)).status == 200
                    ops = patch_body({"op": "Replace", "path": "active", "value": False})
                    assert (await s.patch(f"/scim/v2/Users/{users[2]}", headers=h, json=ops)).status == 200
                    assert (await s.delete(f"/scim/v2/Users/{users[3]}", headers=h)).status == 204
                    # The three events visible in the feed before the app reads it.
                    await eventually(lambda: self._visible(3), timeout=10)
                body = await super().get(path, **params)
                if params.get("after") == "latest":
                    self.noted = body["next_cursor"]
                return body

            async def _visible(self, n: int) -> bool:
                page = await super().get("/events", tenant=tenant.name, after=self.noted, limit="100")
                return len(page["data"]) >= n

        receiver_pool = await asyncpg.create_pool(empty_database_url, min_size=1, max_size=2)
        try:
            await receiver_pool.execute(rx.SCHEMA)
            settings = rx.Settings(
                api_url=str(api.make_url("/")).rstrip("/"),
                api_key=key["Authorization"][7:],
                webhook_secrets=[new_secret()],
                database_url=empty_database_url,
            )
            async with aiohttp.ClientSession() as http:
                caught_up = await rx.backfill(receiver_pool, ChangingMidCopy(http, settings), tenant.name)
        finally:
            await receiver_pool.close()
        assert caught_up == 3
        mine = await receiver_snapshot(empty_database_url, tenant.name)
        theirs = await provisio_snapshot(api, key, tenant.name)
        assert mine == theirs
        assert theirs["users"][users[1]][4] == "Changed mid-copy" and users[3] not in theirs["users"]


async def _ready(app: Any) -> bool:
    return (await app.get("/healthz")).status == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_runs_as_a_script_with_its_own_settings(service_env, pool, tenant, _servers):
    """``python examples/receiver/app.py`` with RECEIVER_* settings (as bench/ starts it),
    creating its database on first start."""
    port = _free_port()
    name = f"receiver_{uuid.uuid4().hex[:10]}"
    database_url = with_database(_servers["postgres"], name)
    # The docs' steps: the webhook's secret is the last line `provisio webhook add` prints.
    added = await acli(
        "webhook", "add", tenant.name, f"http://127.0.0.1:{port}/webhooks/provisio", "--name", "rx", env=service_env
    )
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    async with app_client() as api:
        key = await new_key(pool, tenant.id)
        env = {
            **os.environ,
            "RECEIVER_API_URL": str(api.make_url("/")).rstrip("/"),
            "RECEIVER_API_KEY": key["Authorization"][7:],
            "RECEIVER_WEBHOOK_SECRET": secret,
            "RECEIVER_DATABASE_URL": database_url,
            "RECEIVER_TENANTS": tenant.name,
        }
        root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        proc = subprocess.Popen(
            [sys.executable, "examples/receiver/app.py", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            async with aiohttp.ClientSession() as http:

                async def ready() -> bool:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                            return r.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(ready, timeout=30, interval=0.2)
                ev = event("user.created", 1, user(str(uuid.uuid4()), "ann@x.test"))
                ev["tenant"] = tenant.name
                body, headers = signed(ev, secret)
                async with http.post(f"http://127.0.0.1:{port}/webhooks/provisio", data=body, headers=headers) as r:
                    assert r.status == 200
                async with http.get(f"http://127.0.0.1:{port}/tenants/{tenant.name}/users") as r:
                    assert [u["user_name"] for u in await r.json()] == ["ann@x.test"]
                async with http.get(f"http://127.0.0.1:{port}/stats", params={"tenant": tenant.name}) as r:
                    assert await r.json() == {"users": 1, "groups": 0, "memberships": 0, "applied_events": 1}
                # `provisio webhook test`: a signed ping the app answers 200.
                ping = await acli("webhook", "test", "rx", env=service_env)
                assert ping.returncode == 0 and "answered HTTP 200" in ping.stdout, ping.stdout + ping.stderr
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
            admin = await asyncpg.connect(_servers["postgres"])
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        assert "Traceback" not in err.decode(), err.decode()[-3000:]
    missing = subprocess.run(
        [sys.executable, "-m", "examples.receiver"], cwd=root, capture_output=True, text=True, timeout=30, env={}
    )
    assert missing.returncode == 2 and "missing: --api-key, --webhook-secret, --database-url" in missing.stderr
