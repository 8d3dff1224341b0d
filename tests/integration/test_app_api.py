"""The transactional outbox and the App API, against real Postgres, Redis, the provisioner
and the SCIM gateway, with the App API served over HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog.testing
from aiohttp.test_utils import TestClient, TestServer

from app_api.app import FeedSignal, create_app, prune_events
from app_api.settings import AppApiSettings
from provisio_lib import api_keys, events_feed
from provisio_lib.code_exchange import code_key
from provisio_lib.contract import Command, CreateUser, JitLogin, Source, UserData
from provisio_lib.outcomes import publish_command
from provisio_lib.settings import load_settings
from provisio_lib.tokens import hash_token
from provisioner import store
from provisioner.events import EventSpec
from tests.conftest import eventually, make_tenant, running_provisioner
from tests.integration.scim_helpers import GROUP, USER, bearer, patch_body, scim_client

pytestmark = pytest.mark.integration

SCIM = Source(kind="scim", id="tok", label="entra")


@asynccontextmanager
async def app_client(**overrides: Any) -> AsyncIterator[TestClient]:
    """The App API on this test's database and prefix; fails the test on any 500."""
    settings = load_settings(AppApiSettings, **{"app_api_key_cache_s": 0, **overrides})
    with structlog.testing.capture_logs() as logs:
        async with TestClient(TestServer(create_app(settings))) as client:
            yield client
    unhandled = [e for e in logs if e.get("event") == "unhandled_error"]
    assert not unhandled, f"requests hit the catch-all 500 handler: {unhandled}"


async def new_key(pool, tenant_id=None, name=None) -> dict[str, str]:
    async with pool.acquire() as conn:
        key = await api_keys.create_key(conn, name or f"k-{uuid.uuid4().hex[:8]}", tenant_id)
    return {"Authorization": f"Bearer {key}"}


async def all_events(c, h, n: int, **params) -> list[dict[str, Any]]:
    """Follow the feed page by page (long-polling) until ``n`` events came, then check
    that nothing more follows. An event becomes visible once every transaction with a
    lower xid has ended, so on a busy server it may take a moment (docs/events.md)."""
    out, after = [], ""
    deadline = asyncio.get_running_loop().time() + 60
    while len(out) < n:
        assert asyncio.get_running_loop().time() < deadline, f"only {len(out)} of {n} events: {out}"
        r = await c.get("/api/v1/events", params={"after": after, "limit": "3", "wait": "2", **params}, headers=h)
        assert r.status == 200, await r.text()
        body = await r.json()
        out.extend(body["data"])
        if body["data"]:
            assert body["next_cursor"] == body["data"][-1]["sequence"]
        after = body["next_cursor"]
    r = await c.get("/api/v1/events", params={"after": after, **params}, headers=h)
    assert (await r.json())["data"] == []
    return out


def cmd(tenant, payload, **kw):
    return Command(
        tenant_id=tenant.id,
        source=SCIM,
        correlation_id=kw.pop("cid", "c-" + uuid.uuid4().hex[:6]),
        payload=payload,
        **kw,
    )


def create(tenant, name):
    return cmd(tenant, CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=name)))


# --------------------------------------------------------------------------- events per type


async def test_scim_changes_become_events_in_order_with_state_and_changes(service_env, pool, tenant, provisioner):
    async with scim_client() as s, app_client() as c:
        h = bearer(tenant.token)
        r = await s.post(
            "/scim/v2/Users",
            json={"schemas": [USER], "userName": "ann@x.test", "name": {"givenName": "Ann"}},
            headers={**h, "X-Correlation-Id": "corr-ann"},
        )
        ann = (await r.json())["id"]
        r = await s.post("/scim/v2/Users", json={"schemas": [USER], "userName": "bob@x.test"}, headers=h)
        bob = (await r.json())["id"]
        await s.patch(
            f"/scim/v2/Users/{ann}",
            json=patch_body({"op": "replace", "path": "name.givenName", "value": "Anna"}),
            headers=h,
        )
        await s.patch(
            f"/scim/v2/Users/{ann}", json=patch_body({"op": "replace", "path": "active", "value": False}), headers=h
        )
        await s.patch(
            f"/scim/v2/Users/{ann}", json=patch_body({"op": "replace", "path": "active", "value": True}), headers=h
        )
        r = await s.post(
            "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Sales", "members": [{"value": ann}]}, headers=h
        )
        g = (await r.json())["id"]
        await s.patch(
            f"/scim/v2/Groups/{g}",
            json=patch_body({"op": "add", "path": "members", "value": [{"value": bob}]}),
            headers=h,
        )
        await s.patch(
            f"/scim/v2/Groups/{g}",
            json=patch_body({"op": "replace", "path": "displayName", "value": "Sales EU"}),
            headers=h,
        )
        await s.patch(
            f"/scim/v2/Groups/{g}", json=patch_body({"op": "remove", "path": f'members[value eq "{ann}"]'}), headers=h
        )
        # A PATCH that changes nothing makes no event.
        await s.patch(
            f"/scim/v2/Users/{bob}", json=patch_body({"op": "replace", "path": "active", "value": True}), headers=h
        )
        assert (await s.delete(f"/scim/v2/Groups/{g}", headers=h)).status == 204
        assert (await s.delete(f"/scim/v2/Users/{bob}", headers=h)).status == 204

        key = await new_key(pool, tenant.id)
        events = await all_events(c, key, 12, tenant=tenant.name)
        assert [(e["type"], e["resource_id"]) for e in events] == [
            ("user.created", ann),
            ("user.created", bob),
            ("user.updated", ann),
            ("user.deactivated", ann),
            ("user.reactivated", ann),
            ("group.created", g),
            ("group.member_added", g),
            ("group.member_added", g),
            ("group.updated", g),
            ("group.member_removed", g),
            ("group.deleted", g),
            ("user.deleted", bob),
        ]
        seqs = [e["sequence"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert len({e["id"] for e in events}) == len(events)
        for e in events:
            assert e["tenant"] == tenant.name and e["tenant_id"] == str(tenant.id)
            assert e["source"] == {"kind": "scim", "label": tenant.token_label}
            assert e["occurred_at"].endswith("Z")
        created, updated, deactivated = events[0], events[2], events[3]
        assert created["correlation_id"] == "corr-ann"
        assert created["data"]["user_name"] == "ann@x.test" and created["data"]["given_name"] == "Ann"
        assert updated["changes"]["given_name"] == {"before": "Ann", "after": "Anna"}
        assert updated["data"]["given_name"] == "Anna" and updated["data"]["version"] == 2
        assert deactivated["data"]["active"] is False and deactivated["changes"]["active"] == {
            "before": True,
            "after": False,
        }
        added = [e["data"] for e in events if e["type"] == "group.member_added"]
        assert [a["user"]["id"] for a in added] == [ann, bob] and added[0]["group"]["display_name"] == "Sales"
        assert events[9]["data"]["user"]["id"] == ann
        assert events[8]["changes"]["display_name"] == {"before": "Sales", "after": "Sales EU"}
        assert events[10]["data"] == {"id": g, "display_name": "Sales EU"}
        assert events[11]["data"] == {"id": bob, "user_name": "bob@x.test"}

        # The event's state is the directory's: same shape, same values.
        r = await c.get(f"/api/v1/tenants/{tenant.name}/users/{ann}", headers=key)
        assert r.status == 200
        assert await r.json() == {**events[4]["data"], "groups": []}

        # types filter
        r = await c.get("/api/v1/events", params={"types": "group.member_*,user.deleted"}, headers=key)
        assert r.status == 400  # a pattern is a type prefix and .*, not an arbitrary glob
        filtered = await all_events(c, key, 7, types="group.*,user.deleted")
        assert [e["type"] for e in filtered] == [
            "group.created",
            "group.member_added",
            "group.member_added",
            "group.updated",
            "group.member_removed",
            "group.deleted",
            "user.deleted",
        ]


async def test_jit_logins_make_sso_login_and_resource_events(service_env, pool, tenant, provisioner, waiter):
    conn_id = uuid.uuid4()  # a real connection row: the provisioner reads its settings and links to it
    await pool.execute(
        """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata)
           VALUES ($1, $2, 'okta-prod', 'okta', 'https://idp.test/', '<md/>')""",
        conn_id,
        tenant.id,
    )

    def login(**kw):
        return Command(
            tenant_id=tenant.id,
            source=Source(kind="saml", id=str(conn_id), label="okta-prod"),
            correlation_id="c-" + uuid.uuid4().hex[:6],
            payload=JitLogin(connection_id=conn_id, connection_name="okta-prod", mode="sync", name_id="n", **kw),
        )

    first = await waiter.submit(login(user_name="jo@x.test", given_name="Jo", groups=("Eng",)), 10)
    uid = str(first.resource_id)
    await waiter.submit(login(user_name="jo@x.test", given_name="Joanna", groups=("Eng",)), 10)
    await waiter.submit(login(user_name="jo@x.test", given_name="Joanna", groups=("Eng",)), 10)  # nothing changes
    async with app_client() as c:
        events = await all_events(c, await new_key(pool), 7)
    assert [e["type"] for e in events] == [
        "user.created",
        "group.created",
        "group.member_added",
        "sso.login",
        "user.updated",
        "sso.login",
        "sso.login",
    ]
    assert all(e["source"] == {"kind": "saml", "label": "okta-prod"} for e in events)
    logins = [e["data"] for e in events if e["type"] == "sso.login"]
    assert [(d["created"], d["updated"]) for d in logins] == [(True, False), (False, True), (False, False)]
    assert all(d["user_id"] == uid and d["connection"] == {"id": str(conn_id), "name": "okta-prod"} for d in logins)
    assert logins[1]["user"]["given_name"] == "Joanna"
    assert events[1]["data"]["display_name"] == "Eng" and events[1]["data"]["created_by"] == "jit"
    assert events[2]["data"]["user"]["id"] == uid and events[2]["data"]["source"] == "jit"
    assert events[4]["changes"]["given_name"] == {"before": "Jo", "after": "Joanna"}


# --------------------------------------------------------------------------- exactly the committed changes


async def test_a_rolled_back_batch_leaves_no_event_and_a_redelivery_none_twice(
    service_env, pool, tenant, redis, topology, waiter
):
    # Published before the provisioner starts, so they arrive as one batch; the duplicate
    # userName makes the batch's one-statement path fail and roll back, and the careful
    # path applies the others one by one.
    cmds = [create(tenant, f"u{i}@x.test") for i in range(4)] + [create(tenant, "U1@X.test")]
    for c_ in cmds:
        await publish_command(redis, topology, c_)
    async with running_provisioner() as app:

        async def done():
            async with pool.acquire() as conn:
                return await conn.fetchval("SELECT count(*) FROM inbox WHERE tenant_id = $1", tenant.id) == 5

        await eventually(done, timeout=30)
        assert app.context.get("provisioner").paths["careful"] >= 1
        again = await waiter.submit(cmds[0], 10)  # redelivered: answered from the inbox
        assert again.redelivered
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT type, resource_id FROM events WHERE tenant_id = $1 ORDER BY xid, id", tenant.id)
    assert [(r["type"], r["resource_id"]) for r in rows] == [("user.created", c_.payload.user_id) for c_ in cmds[:4]]


async def test_concurrent_commits_become_visible_in_cursor_order_only(pool, tenant):
    """A later transaction committing first stays invisible until the earlier one ends."""

    async def write(conn, n):
        cid = uuid.uuid4()
        outcome = json.dumps(
            {
                "completed_at": "2026-01-01T00:00:00+00:00",
                "source": {"kind": "scim", "label": "t"},
                "correlation_id": f"c{n}",
                "resource": {"n": n},
                "changes": {},
            }
        )
        await store.record_outcomes(
            conn, [(cid, tenant.id, "user.create", outcome)], [(1, EventSpec("user.created", "User", uuid.uuid4()))]
        )

    early, late = await pool.acquire(), await pool.acquire()
    try:
        t1, t2 = early.transaction(), late.transaction()
        await t1.start()
        await write(early, 1)  # takes the lower xid
        await t2.start()
        await write(late, 2)
        await t2.commit()  # the later one commits first
        assert await events_feed.read_events(pool, [tenant.id], None, 10) == []
        await t1.commit()
        seen = await eventually(lambda: events_feed.read_events(pool, [tenant.id], None, 10), timeout=60)
        assert [e["data"]["n"] for e in seen] == [1, 2]
    finally:
        await pool.release(early)
        await pool.release(late)


async def test_a_batch_waiting_for_anothers_resource_has_no_xid_so_the_feed_keeps_commit_order(pool, tenant):
    """Two batches change user Y; the second also changes X (locked first in id order).
    Had it taken X's row lock (and so an xid) before queueing on Y, its change to Y,
    committed second, would sort first in the feed. It queues on Y's advisory lock
    instead, holding no xid, and is ordered after the batch it waited for."""
    x, y = sorted([uuid.uuid4(), uuid.uuid4()])
    async with pool.acquire() as conn:
        for uid in (x, y):
            await conn.execute(
                "INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, $3)", uid, tenant.id, f"{uid}@x"
            )

    async def write(conn, label):
        outcome = json.dumps(
            {
                "completed_at": "2026-01-01T00:00:00+00:00",
                "source": {"kind": "scim", "label": "t"},
                "correlation_id": label,
                "resource": {"who": label},
                "changes": {},
            }
        )
        await store.record_outcomes(
            conn, [(uuid.uuid4(), tenant.id, "user.replace", outcome)], [(1, EventSpec("user.updated", "User", y))]
        )

    first, second = await pool.acquire(), await pool.acquire()
    try:
        t1, t2 = first.transaction(), second.transaction()
        await t1.start()
        await store.lock_in_order(first, [y], [])
        second_pid = await second.fetchval("SELECT pg_backend_pid()")
        await t2.start()
        waiting = asyncio.create_task(store.lock_in_order(second, [x, y], []))

        async def queued():
            return await pool.fetchrow(
                "SELECT wait_event_type, backend_xid FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                second_pid,
            )

        row = await eventually(queued, timeout=30)
        assert row["backend_xid"] is None  # no xid while it waits: it cannot sort before `first`
        await write(first, "first")
        await t1.commit()
        await waiting
        await write(second, "second")
        await t2.commit()
    finally:
        await pool.release(first)
        await pool.release(second)

    async def both():
        evs = await events_feed.read_events(pool, [tenant.id], None, 10)
        return evs if len(evs) == 2 else None

    assert [e["data"]["who"] for e in await eventually(both, timeout=60)] == ["first", "second"]


async def test_a_reader_polling_during_concurrent_load_sees_every_event_once_in_order(
    service_env, pool, redis, topology
):
    """Two provisioners apply one tenant's commands (the tenant's partition is shared,
    so both take batches of it) while other transactions commit out of order; a reader
    follows the feed over HTTP the whole time."""
    tenant = await make_tenant(pool)
    n_cmds, n_tx = 120, 20
    stop = asyncio.Event()
    seen: list[dict[str, Any]] = []
    key = await new_key(pool, tenant.id)

    async def follow(c):
        after = ""
        while True:
            r = await c.get("/api/v1/events", params={"after": after, "limit": "7", "wait": "0.2"}, headers=key)
            body = await r.json()
            seen.extend(body["data"])
            after = body["next_cursor"]
            if stop.is_set() and len(seen) >= n_cmds + n_tx and not body["data"]:
                return

    async def out_of_order_writer(i):
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            outcome = json.dumps(
                {
                    "completed_at": "2026-01-01T00:00:00+00:00",
                    "source": {"kind": "scim", "label": "t"},
                    "correlation_id": f"w{i}",
                    "resource": {"w": i},
                    "changes": {},
                }
            )
            await store.record_outcomes(
                conn,
                [(uuid.uuid4(), tenant.id, "user.create", outcome)],
                [(1, EventSpec("user.created", "User", uuid.uuid4()))],
            )
            await asyncio.sleep(0.3 * ((i * 7) % 5) / 5)  # commit in a scrambled order
            await tx.commit()

    async with app_client() as c, running_provisioner() as _p1, running_provisioner() as _p2:
        reader = asyncio.create_task(follow(c))
        for i in range(n_cmds):
            await publish_command(redis, topology, create(tenant, f"load{i}@x.test"))
        await asyncio.gather(*(out_of_order_writer(i) for i in range(n_tx)))

        async def all_applied():
            async with pool.acquire() as conn:
                return (
                    await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant.id) == n_cmds + n_tx
                )

        await eventually(all_applied, timeout=60)
        stop.set()
        await asyncio.wait_for(reader, 90)
    ids = [e["id"] for e in seen]
    assert len(ids) == n_cmds + n_tx and len(set(ids)) == len(ids)
    seqs = [e["sequence"] for e in seen]
    assert seqs == sorted(seqs)


# --------------------------------------------------------------------------- long-poll, retention


async def test_the_feed_served_as_postgres_rendered_text_equals_the_webhook_rendering(service_env, pool, tenant):
    """The App API splices events rendered to JSON by Postgres (read_events_text); the
    dispatcher signs events_feed.event_json's rendering. Both must be the same document,
    keys in the same order, for every shape a row can take: whole-second and fractional
    timestamps, no changes, no resource, a source without a label, text that needs
    escaping, and a tenant removed since (its id stands for its name)."""
    gone = uuid.uuid4()
    rows = [
        (
            tenant.id,
            "user.created",
            "2026-01-02T03:04:05+00:00",
            {"kind": "scim", "id": "t1", "label": "entra"},
            {
                "userName": 'a"b\\c\u00e9\u2028\n',
                "n": 1.5,
                "big": 2**62,
                "none": None,
                "nested": {"z": [1, {"y": True}]},
            },
            None,
            "User",
            uuid.uuid4(),
        ),
        (
            tenant.id,
            "user.updated",
            "2026-01-02T03:04:05.000123+00:00",
            {"kind": "sso"},
            {"active": False},
            {"active": {"before": True, "after": False}},
            None,
            None,
        ),
        (gone, "group.deleted", "1999-12-31T23:59:59.999999+00:00", {}, {}, {}, "Group", uuid.uuid4()),
    ]
    async with pool.acquire() as conn:
        for tid, typ, at, src, data, changes, rtype, rid in rows:
            await conn.execute(
                """INSERT INTO events (tenant_id, type, occurred_at, source, correlation_id, command_id,
                                       resource_type, resource_id, data, changes)
                   VALUES ($1, $2, $3::text::timestamptz, $4, $5, $6, $7, $8, $9, $10)""",
                tid,
                typ,
                at,
                src,
                'c-\u00fc"1',
                uuid.uuid4(),
                rtype,
                rid,
                data,
                changes,
            )
    tenants = [tenant.id, gone]
    texts, last = await eventually(lambda: _full(events_feed.read_events_text(pool, tenants, None, 10), 3), timeout=60)
    dicts = await events_feed.read_events(pool, tenants, None, 10)
    parsed = [json.loads(t) for t in texts]
    assert parsed == dicts
    for got, want in zip(parsed, dicts, strict=True):
        assert list(got) == list(want)
        assert list(got["data"]) == list(want["data"])
    assert [e["occurred_at"] for e in parsed] == [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.000123Z",
        "1999-12-31T23:59:59.999999Z",
    ]
    assert parsed[2]["tenant"] == str(gone) and "changes" not in parsed[0] and parsed[2]["changes"] == {}
    assert parsed[1]["source"] == {"kind": "sso", "label": None} and parsed[1]["resource_id"] is None
    assert last == parsed[-1]["sequence"]

    async with app_client() as c:
        h = await new_key(pool)
        r = await c.get("/api/v1/events", params={"tenant": tenant.name, "limit": "10"}, headers=h)
        assert r.status == 200 and r.content_type == "application/json"
        body = await r.json()
        assert body == {"data": dicts[:2], "next_cursor": dicts[1]["sequence"]}
        r = await c.get("/api/v1/events", params={"tenant": tenant.name, "after": dicts[1]["sequence"]}, headers=h)
        assert await r.json() == {"data": [], "next_cursor": dicts[1]["sequence"]}


async def _full(read, n):
    got = await read
    return got if len(got[0]) == n else None


async def test_a_long_poll_returns_when_an_event_arrives(service_env, pool, tenant, provisioner, waiter):
    key = await new_key(pool, tenant.id)
    async with app_client(app_api_max_wait_s=60) as c:
        r = await c.get("/api/v1/events", params={"wait": "0"}, headers=key)
        body = await r.json()
        assert body == {"data": [], "next_cursor": ""}
        poll = asyncio.create_task(c.get("/api/v1/events", params={"wait": "60"}, headers=key))
        await asyncio.sleep(0.3)
        assert not poll.done()
        made = await waiter.submit(create(tenant, "late@x.test"), 10)
        # Far below the 60 s asked for: the request was woken by the event, not its timeout.
        r = await asyncio.wait_for(poll, 50)
        body = await r.json()
        assert [e["resource_id"] for e in body["data"]] == [str(made.resource_id)]
        # From that cursor, nothing new (and wait=0 answers at once).
        r = await c.get("/api/v1/events", params={"after": body["next_cursor"]}, headers=key)
        assert await r.json() == {"data": [], "next_cursor": body["next_cursor"]}


async def test_a_tenants_signal_wakes_only_its_long_polls_and_those_of_every_tenant(redis, topology):
    """The provisioner publishes the tenant id after it commits events: long-polls of
    another tenant are not woken (they would only re-query for nothing); waiters for
    every tenant are; the re-checks after a signal wake the tenant again; the tick wakes
    everyone."""
    signal = FeedSignal(redis, topology.events_channel())
    signal.TICK_S = 3600.0  # no tick during the first part
    signal.start()
    a, b = uuid.uuid4(), uuid.uuid4()
    try:
        await asyncio.sleep(0.2)  # subscribed
        ev_a, ev_b, ev_all = signal.current([a]), signal.current([b]), signal.current(None)
        assert signal.current([a]) is ev_a
        await redis.publish(topology.events_channel(), str(b))
        await asyncio.wait_for(ev_b.wait(), 5)
        await asyncio.wait_for(ev_all.wait(), 5)
        await asyncio.sleep(0.5)  # past every re-check of b
        assert not ev_a.is_set()
        # After firing, a new waiter of b gets a new event; b's re-checks have passed.
        ev_b2 = signal.current([b])
        assert ev_b2 is not ev_b and not ev_b2.is_set()
        # A signal for a is followed by re-checks of a: a waiter registered just after the
        # signal (its query ran too early to see the event) is woken again.
        await redis.publish(topology.events_channel(), str(a))
        await asyncio.wait_for(ev_a.wait(), 5)
        late = signal.current([a])
        await asyncio.wait_for(late.wait(), 2)
        assert not ev_b2.is_set()
    finally:
        await signal.stop()
    # The tick wakes every waiter, whoever signalled.
    ticking = FeedSignal(redis, topology.events_channel())
    ticking.TICK_S = 0.2
    ticking.start()
    try:
        waiters = [ticking.current([uuid.uuid4()]) for _ in range(3)] + [ticking.current(None)]
        await asyncio.wait_for(asyncio.gather(*(w.wait() for w in waiters)), 5)
    finally:
        await ticking.stop()


async def test_after_latest_starts_at_the_newest_event_for_a_backfill(service_env, pool, tenant, provisioner, waiter):
    """``after=latest``: the cursor an application notes before its backfill."""
    other = await make_tenant(pool)
    key, key_all = await new_key(pool, tenant.id), await new_key(pool)
    async with app_client() as c:
        # Empty feed: "latest" is the start, and a later event is still ahead of it.
        r = await c.get("/api/v1/events", params={"after": "latest"}, headers=key)
        assert await r.json() == {"data": [], "next_cursor": ""}
        for i in range(3):
            await waiter.submit(create(tenant, f"old{i}@x.test"), 10)
        await waiter.submit(create(other, "other@x.test"), 10)
        ours = await all_events(c, key, 3)
        r = await c.get("/api/v1/events", params={"after": "latest", "tenant": tenant.name}, headers=key)
        assert await r.json() == {"data": [], "next_cursor": ours[-1]["sequence"]}
        # Every tenant of the key: the other tenant's newer event is the head.
        r = await c.get("/api/v1/events", params={"after": "latest"}, headers=key_all)
        head = (await r.json())["next_cursor"]
        assert head > ours[-1]["sequence"]
        # A long-poll from "latest" wakes for the next event only.
        poll = asyncio.create_task(c.get("/api/v1/events", params={"after": "latest", "wait": "30"}, headers=key))
        await asyncio.sleep(0.3)
        made = await waiter.submit(create(tenant, "new@x.test"), 10)
        body = await (await asyncio.wait_for(poll, 25)).json()
        assert [e["resource_id"] for e in body["data"]] == [str(made.resource_id)]


async def test_retention_prunes_old_events_and_the_feed_starts_at_the_oldest_kept(
    service_env, pool, tenant, provisioner, waiter
):
    for i in range(5):
        await waiter.submit(create(tenant, f"r{i}@x.test"), 10)
    async with pool.acquire() as conn:
        ids = [
            r["id"] for r in await conn.fetch("SELECT id FROM events WHERE tenant_id = $1 ORDER BY xid, id", tenant.id)
        ]
        await conn.execute(
            "UPDATE events SET created_at = now() - interval '40 days' WHERE id = ANY($1::bigint[])", ids[:3]
        )
    assert await prune_events(pool, 30) == 3
    assert await prune_events(pool, 30) == 0
    async with pool.acquire() as conn:
        assert [r["id"] for r in await conn.fetch("SELECT id FROM events ORDER BY xid, id")] == ids[3:]
    async with app_client() as c:
        events = await all_events(c, await new_key(pool), 2)
    assert [e["data"]["user_name"] for e in events] == ["r3@x.test", "r4@x.test"]


# --------------------------------------------------------------------------- directory


async def test_directory_pages_are_stable_under_concurrent_inserts(service_env, pool, tenant, provisioner, waiter):
    first = [await waiter.submit(create(tenant, f"p{i:02d}@x.test"), 10) for i in range(23)]
    key = await new_key(pool, tenant.id)
    async with app_client() as c:
        seen, cursor, i = [], None, 0
        while True:
            params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
            r = await c.get(f"/api/v1/tenants/{tenant.name}/users", params=params, headers=key)
            assert r.status == 200
            body = await r.json()
            seen.extend(u["id"] for u in body["data"])
            # Writes between pages: new users, and an update of one already listed.
            await waiter.submit(create(tenant, f"new{i}@x.test"), 10)
            i += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen))
        assert {str(o.resource_id) for o in first} <= set(seen)
        # updated_after: only what changed since
        r = await c.get(f"/api/v1/tenants/{tenant.name}/users", params={"limit": "1000"}, headers=key)
        everyone = (await r.json())["data"]
        mark = max(u["updated_at"] for u in everyone)
        await waiter.submit(create(tenant, "after-mark@x.test"), 10)
        r = await c.get(f"/api/v1/tenants/{tenant.id}/users", params={"updated_after": mark}, headers=key)
        assert [u["user_name"] for u in (await r.json())["data"]] == ["after-mark@x.test"]
        r = await c.get(f"/api/v1/tenants/{tenant.name}/users", params={"cursor": "garbage!"}, headers=key)
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_cursor"
        r = await c.get(f"/api/v1/tenants/{tenant.name}/users", params={"limit": "0"}, headers=key)
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_parameter"


async def test_groups_members_and_one_resource(service_env, pool, tenant, provisioner):
    key = await new_key(pool, tenant.id)
    async with scim_client() as s, app_client() as c:
        h = bearer(tenant.token)
        ids = []
        for n in ("m1@x.test", "m2@x.test", "m3@x.test"):
            ids.append(
                (await (await s.post("/scim/v2/Users", json={"schemas": [USER], "userName": n}, headers=h)).json())[
                    "id"
                ]
            )
        r = await s.post(
            "/scim/v2/Groups",
            json={
                "schemas": [GROUP],
                "displayName": "Ops",
                "externalId": "ops-1",
                "members": [{"value": i} for i in ids[:2]],
            },
            headers=h,
        )
        g = (await r.json())["id"]
        await s.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Empty"}, headers=h)
        r = await c.get(f"/api/v1/tenants/{tenant.name}/groups", headers=key)
        body = await r.json()
        assert [(x["display_name"], x["member_count"]) for x in body["data"]] == [("Ops", 2), ("Empty", 0)]
        assert body["next_cursor"] is None
        r = await c.get(f"/api/v1/tenants/{tenant.name}/groups/{g}", headers=key)
        assert (await r.json())["external_id"] == "ops-1"
        r = await c.get(f"/api/v1/tenants/{tenant.name}/groups/{g}/members", params={"limit": "1"}, headers=key)
        page = await r.json()
        assert [u["id"] for u in page["data"]] == ids[:1] and page["next_cursor"]
        assert page["data"][0]["membership_sources"] == ["scim"]
        r = await c.get(
            f"/api/v1/tenants/{tenant.name}/groups/{g}/members", params={"cursor": page["next_cursor"]}, headers=key
        )
        assert [u["id"] for u in (await r.json())["data"]] == ids[1:2]
        r = await c.get(f"/api/v1/tenants/{tenant.name}/users/{ids[0]}", headers=key)
        assert [x["display_name"] for x in (await r.json())["groups"]] == ["Ops"]
        for path in (
            f"users/{uuid.uuid4()}",
            "users/not-a-uuid",
            f"groups/{uuid.uuid4()}",
            f"groups/{uuid.uuid4()}/members",
        ):
            r = await c.get(f"/api/v1/tenants/{tenant.name}/{path}", headers=key)
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


# --------------------------------------------------------------------------- keys and errors


async def test_keys_are_scoped_revocable_and_errors_are_json(service_env, pool, provisioner, waiter):
    a, b = await make_tenant(pool), await make_tenant(pool)
    await waiter.submit(create(a, "a@x.test"), 10)
    made_b = await waiter.submit(create(b, "b@x.test"), 10)
    key_a = await new_key(pool, a.id, "key-a")
    key_all = await new_key(pool, None, "key-all")
    async with app_client() as c:
        for path in (
            f"/api/v1/tenants/{b.name}/users",
            f"/api/v1/tenants/{b.id}/users/{made_b.resource_id}",
            "/api/v1/tenants/no-such-tenant/users",
            f"/api/v1/tenants/{b.name}/groups",
        ):
            r = await c.get(path, headers=key_a)
            assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden", path
        r = await c.get("/api/v1/events", params={"tenant": b.name}, headers=key_a)
        assert r.status == 403
        # No tenant: a tenant's key sees only its own; an all-tenant key sees both.
        assert {e["tenant"] for e in await all_events(c, key_a, 1)} == {a.name}
        assert {e["tenant"] for e in await all_events(c, key_all, 2)} == {a.name, b.name}
        assert {e["tenant"] for e in await all_events(c, key_all, 1, tenant=b.name)} == {b.name}
        for name in ("no-such-tenant", "bad%00name", "x" * 300, "%C3%A9t%C3%A9"):
            r = await c.get(f"/api/v1/tenants/{name}/users", headers=key_all)
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found", name
        r = await c.get("/api/v1/events", params={"tenant": "nul\x00"}, headers=key_all)
        assert r.status == 404
        r = await c.get(f"/api/v1/tenants/{a.name}/users", headers=key_a)
        assert r.status == 200 and [u["user_name"] for u in (await r.json())["data"]] == ["a@x.test"]

        for headers in (
            {},
            {"Authorization": "Bearer prk_nope"},
            {"Authorization": "Basic eDp5"},
            {"Authorization": "Bearer " + tenant_token(a)},
        ):
            r = await c.get("/api/v1/events", headers=headers)
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        async with pool.acquire() as conn:
            assert await api_keys.revoke_key(conn, "key-a")
        r = await c.get(f"/api/v1/tenants/{a.name}/users", headers=key_a)
        assert r.status == 401

        r = await c.get("/api/v1/events", params={"after": "f" * 16 + "7" + "f" * 15}, headers=key_all)
        assert r.status == 200 and (await r.json())["data"] == []
        for params in (
            {"after": "nope"},
            {"after": "0" * 16 + "f" * 16},
            {"limit": "5000"},
            {"wait": "-1"},
            {"wait": "nan"},
            {"types": "'; drop"},
        ):
            r = await c.get("/api/v1/events", params=params, headers=key_all)
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_parameter", params
        r = await c.get("/api/v1/nothing", headers=key_all)
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        r = await c.delete("/api/v1/events", headers=key_all)
        assert r.status == 405 and "error" in await r.json()
        doc = await (await c.get("/api/v1/openapi.json")).json()
        assert doc["openapi"].startswith("3.") and "/api/v1/events" in doc["paths"]
        refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)))
        assert refs and refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])
        members = doc["paths"]["/api/v1/tenants/{tenant}/groups/{id}/members"]["get"]["responses"]["200"]
        assert "Member" in json.dumps(members)
        for probe in ("/healthz", "/readyz"):
            assert (await c.get(probe)).status == 200


def tenant_token(t) -> str:
    return t.token  # a SCIM token is not an API key


async def test_rate_limit_answers_429(service_env, pool, tenant):
    key = await new_key(pool, tenant.id)
    async with app_client(app_api_rate_limit_per_s=1) as c:
        statuses = [(await c.get(f"/api/v1/tenants/{tenant.name}/users", headers=key)).status for _ in range(5)]
        assert 429 in statuses
        r = await c.get(f"/api/v1/tenants/{tenant.name}/users", headers=key)
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "rate_limited"


async def test_saml_code_exchange_on_the_app_api(service_env, pool, tenant, redis, topology):
    conn_id, secret = uuid.uuid4(), "s3cret-app"
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata, app_secret_hash)
               VALUES ($1, $2, 'okta', 'okta', 'https://idp', '<x/>', $3)""",
            conn_id,
            tenant.id,
            hash_token(secret),
        )
    profile = {"user_id": str(uuid.uuid4()), "email": "x@y.test"}
    await redis.set(
        code_key(topology, "the-code"), json.dumps({"connection_id": str(conn_id), "profile": profile}), ex=60
    )
    async with app_client() as c:
        # A wrong secret gets the unknown code's answer (one answer: a code cannot be probed).
        r = await c.post("/api/v1/saml/token", data={"code": "the-code"}, headers={"Authorization": "Bearer wrong"})
        wrong = await r.json()
        assert r.status == 400 and wrong["error"]["code"] == "invalid_grant"
        r = await c.post(
            "/api/v1/saml/token", data={"code": "no-such-code"}, headers={"Authorization": f"Bearer {secret}"}
        )
        assert r.status == 400 and await r.json() == wrong
        r = await c.post("/api/v1/saml/token", json={"code": "the-code"}, headers={"Authorization": f"Bearer {secret}"})
        assert r.status == 200 and await r.json() == profile and r.headers["Cache-Control"] == "no-store"
        r = await c.post("/api/v1/saml/token", json={"code": "the-code"}, headers={"Authorization": f"Bearer {secret}"})
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_grant"
        r = await c.post(
            "/api/v1/saml/token",
            data=b"\xff\xfe",
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_request"


# --------------------------------------------------------------------------- CLI and process


def cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_api_key_cli_lifecycle(service_env):
    env = {**os.environ, **service_env}
    assert cli("tenant", "create", "acme", env=env).returncode == 0
    made = cli("api-key", "create", "--name", "backend", "--tenant", "acme", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("prk_") and len(key) > 40
    every = cli("api-key", "create", "--name", "ops", env=env)
    assert every.returncode == 0 and "every tenant" in every.stdout
    dup = cli("api-key", "create", "--name", "backend", env=env)
    assert dup.returncode == 1 and dup.stderr.strip() == "error: an active API key is already named 'backend'"
    bad = cli("api-key", "create", "--name", "no spaces", env=env)
    assert bad.returncode == 1 and "invalid key name" in bad.stderr and "Traceback" not in bad.stderr
    nope = cli("api-key", "create", "--name", "x", "--tenant", "nope", env=env)
    assert nope.returncode == 1 and "unknown tenant" in nope.stderr
    listed = cli("api-key", "list", "--json", env=env)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["tenant"], r["status"]) for r in rows] == [
        ("backend", "acme", "active"),
        ("ops", "*", "active"),
    ]
    assert key not in listed.stdout
    assert cli("api-key", "revoke", "backend", env=env).returncode == 0
    again = cli("api-key", "revoke", "backend", env=env)
    assert again.returncode == 1 and "no active API key" in again.stderr


def test_the_app_api_runs_as_its_own_process(service_env, tmp_path):
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **service_env, "PROVISIO_APP_API_PORT": str(port), "PROVISIO_APP_API_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app_api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/events", timeout=5)
        except urllib.error.HTTPError as err:
            assert err.code == 401 and json.loads(err.read())["error"]["code"] == "unauthorized"
    finally:
        proc.terminate()
        proc.wait(30)


async def test_the_curl_examples_of_the_docs_work(service_env, pool, provisioner, waiter):
    """Every ``curl … "$API/…"`` GET in docs/app-integration.md, placeholders filled in
    with real ids and cursors, answers 200 from the App API: the docs stay correct."""
    from pathlib import Path

    acme = await make_tenant(pool, name=f"acme-{uuid.uuid4().hex[:6]}")
    made = [await waiter.submit(create(acme, f"doc{i}@x.test"), 10) for i in range(3)]
    key = await new_key(pool, acme.id)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "app-integration.md").read_text()
    urls = re.findall(r'^curl (?!-X POST)[^\n]*"\$API(/[^"]+)"', doc, flags=re.M)
    assert len(urls) >= 10, urls
    async with scim_client() as s, app_client() as c:
        r = await s.post(
            "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Docs"}, headers=bearer(acme.token)
        )
        group = (await r.json())["id"]
        r = await c.get(f"/api/v1/tenants/{acme.name}/users", params={"limit": "1"}, headers=key)
        cursor = (await r.json())["next_cursor"]
        r = await c.get("/api/v1/events", params={"tenant": acme.name, "limit": "1"}, headers=key)
        sequence = (await r.json())["next_cursor"]
        for url in urls:
            filled = (
                url.replace("acme", acme.name)
                .replace("6f0c…", str(made[0].resource_id))
                .replace("1b2e…", group)
                .replace("MjAyNi0x...", cursor)
                .replace("000000000000a1b2000000000000c3d4", sequence)
                .replace("after=…", "after=")
                .replace("wait=25", "wait=0")
            )
            assert "…" not in filled and "..." not in filled, f"a placeholder the test does not know: {url}"
            r = await c.get("/api/v1" + filled, headers=key)
            assert r.status == 200, (url, await r.text())
