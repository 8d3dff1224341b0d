"""Webhooks end to end: the dispatcher (in process) delivering to real HTTP receivers on
loopback, SCIM writes through the gateway and the provisioner, the `provisio webhook`
CLI as a subprocess, mail through aiosmtpd and the auditor."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from provisio_lib import events_feed, webhook_store
from tests.conftest import eventually, make_tenant
from tests.integration.scim_helpers import USER, bearer, patch_body, scim_client

from .webhook_support import acli, cli, receiver, running_dispatcher

pytestmark = pytest.mark.integration


async def add(pool, tenant_id, url, name=None, types=None) -> tuple[str, str]:
    name = name or f"ep-{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as conn:
        secret = await webhook_store.add_endpoint(conn, name, tenant_id, url, types)
    return name, secret


async def create_user(s, tenant, user_name: str) -> str:
    r = await s.post("/scim/v2/Users", json={"schemas": [USER], "userName": user_name}, headers=bearer(tenant.token))
    assert r.status == 201, await r.text()
    return (await r.json())["id"]


async def rename(s, tenant, uid: str, given: str) -> None:
    r = await s.patch(
        f"/scim/v2/Users/{uid}",
        json=patch_body({"op": "replace", "path": "name.givenName", "value": given}),
        headers=bearer(tenant.token),
    )
    assert r.status == 200, await r.text()


async def delivery_rows(pool, name: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT d.* FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
           WHERE w.name = $1 ORDER BY d.id""",
        name,
    )
    return [dict(r) for r in rows]


# --------------------------------------------------------------------------- delivery


async def test_a_scim_write_reaches_the_receiver_signed_as_the_events_api_has_it(
    service_env, pool, tenant, provisioner
):
    async with receiver() as rx, running_dispatcher() as dispatcher:
        name, secret = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            uid = await create_user(s, tenant, "ann@x.test")
        await eventually(lambda: _n(rx, 1), timeout=10)
        got = rx.delivered[0]
        # Standard Webhooks' own verifier accepts it; a wrong secret does not.
        event = Webhook(secret).verify(got.body, got.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["webhook-id"] == event["id"]
        assert event["type"] == "user.created" and event["resource_id"] == uid
        # The body is the event exactly as GET /api/v1/events returns it.
        feed = await events_feed.read_events(pool, [tenant.id], None, 10)
        assert [event] == [e for e in feed if e["id"] == event["id"]]
        assert event["tenant"] == tenant.name and event["data"]["user_name"] == "ann@x.test"
        rows = await eventually(lambda: _delivered(pool, name, 1))
        assert rows[0]["attempts"] == 1 and rows[0]["last_status"] == 200

        # The dispatcher's metrics: results, latency, and backlog/lag per endpoint.
        import aiohttp

        async def metrics():
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{dispatcher.health.port}/metrics") as r,
            ):
                text = await r.text()
            return text if f'provisio_webhook_backlog{{endpoint="{name}"}} 0.0' in text else None

        text = await eventually(metrics, timeout=10)
        assert 'provisio_webhook_deliveries_total{result="delivered"}' in text
        assert "provisio_webhook_event_age_seconds_count" in text
        assert f'provisio_webhook_lag_seconds{{endpoint="{name}"}} 0.0' in text


async def _n(rx, n: int) -> bool:
    return len(rx.delivered) >= n


async def _delivered(pool, name, n):
    rows = [r for r in await delivery_rows(pool, name) if r["status"] == "delivered"]
    return rows if len(rows) >= n else None


async def test_order_per_resource_holds_under_retries_and_other_resources_proceed(
    service_env, pool, tenant, provisioner
):
    failed_once: set[str] = set()
    ann_id: dict[str, str] = {}

    def behaviour(rx, got):
        ev = got.event
        if ev["type"] == "user.created" and ev["data"]["user_name"] == "ann@x.test" and ev["id"] not in failed_once:
            failed_once.add(ev["id"])
            return web.Response(status=503, text="busy, try later")
        return web.Response(text="ok")

    async with receiver(behaviour) as rx, running_dispatcher(webhook_backoff_base_s=1.5, webhook_backoff_max_s=2):
        name, _ = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            ann_id["id"] = await create_user(s, tenant, "ann@x.test")
            bob = await create_user(s, tenant, "bob@x.test")
            await rename(s, tenant, ann_id["id"], "Anna")
            await rename(s, tenant, bob, "Bobby")
        await eventually(lambda: _n(rx, 4), timeout=15)
    ann = ann_id["id"]
    seen = [(r.event["resource_id"], r.event["type"]) for r in rx.requests]
    ok = [(r.event["resource_id"], r.event["type"]) for r in rx.delivered]
    # Ann's creation failed once and went again; her update never went before it.
    assert seen.count((ann, "user.created")) == 2
    assert ok.index((ann, "user.created")) < ok.index((ann, "user.updated"))
    first_ann_update = seen.index((ann, "user.updated"))
    assert first_ann_update > max(i for i, x in enumerate(seen) if x == (ann, "user.created"))
    # Bob did not wait for Ann's retry.
    assert ok.index((bob, "user.updated")) < ok.index((ann, "user.created"))
    rows = await delivery_rows(pool, name)
    assert {r["status"] for r in rows} == {"delivered"}
    assert sorted(r["attempts"] for r in rows) == [1, 1, 1, 2]


# --------------------------------------------------------------------------- CLI


async def test_cli_add_list_test_rotate_remove(service_env, pool):
    env = service_env
    assert (await acli("tenant", "create", "acme", env=env)).returncode == 0
    async with receiver(lambda rx, got: web.Response(text="pong from the app " + "x" * 2000)) as rx:
        made = await acli("webhook", "add", "acme", rx.url, "--events", "user.*", "--name", "acme-hooks", env=env)
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("whsec_") and "acme-hooks" in made.stdout

        dup = await acli("webhook", "add", "acme", rx.url, "--name", "acme-hooks", env=env)
        assert dup.returncode == 1 and "already named 'acme-hooks'" in dup.stderr
        usage = await acli("webhook", "add", rx.url, env=env)
        assert usage.returncode == 1 and "give a tenant and a URL" in usage.stderr
        usage = await acli("webhook", "add", "acme", rx.url, "--all-tenants", env=env)
        assert usage.returncode == 1 and "only the URL" in usage.stderr
        bad = await acli("webhook", "add", "acme", rx.url, "--events", "user.%", env=env)
        assert bad.returncode == 1 and "--events" in bad.stderr
        every = await acli("webhook", "add", "--all-tenants", rx.url, "--name", "ops", env=env)
        assert every.returncode == 0 and "every tenant" in every.stdout

        listed = await acli("webhook", "list", "--json", env=env)
        rows = {r["name"]: r for r in map(json.loads, listed.stdout.splitlines())}
        assert rows["acme-hooks"]["tenant"] == "acme" and rows["acme-hooks"]["events"] == "user.*"
        assert rows["acme-hooks"]["status"] == "active" and rows["ops"]["tenant"] == "*"
        assert secret not in listed.stdout

        tested = await acli("webhook", "test", "acme-hooks", env=env)
        assert tested.returncode == 0, tested.stderr
        assert f"{rx.url} answered HTTP 200" in tested.stdout and "pong from the app" in tested.stdout
        assert len(tested.stdout) < 1500  # an excerpt, not the whole answer
        ping = rx.requests[-1]
        event = Webhook(secret).verify(ping.body, ping.headers)
        assert event["type"] == "webhook.test" and event["tenant"] == "acme"
        assert ping.headers["webhook-id"] == event["id"]

        rotated = await acli("webhook", "rotate-secret", "acme-hooks", "--overlap", "1h", env=env)
        assert rotated.returncode == 0, rotated.stderr
        new_secret = rotated.stdout.strip().splitlines()[-1]
        assert new_secret.startswith("whsec_") and new_secret != secret
        assert (await acli("webhook", "test", "acme-hooks", env=env)).returncode == 0
        ping = rx.requests[-1]
        assert len(ping.headers["webhook-signature"].split(" ")) == 2
        Webhook(secret).verify(ping.body, ping.headers)  # receivers with the old secret keep working
        Webhook(new_secret).verify(ping.body, ping.headers)
        listed = await acli("webhook", "list", "--json", env=env)
        assert json.loads(listed.stdout.splitlines()[0])["rotation_overlap_until"]

        attempts = await acli("webhook", "deliveries", "acme", "--json", env=env)
        rows = [json.loads(line) for line in attempts.stdout.splitlines()]
        assert len(rows) == 2 and {r["event_type"] for r in rows} == {"webhook.test"}
        assert all(r["status"] == 200 and r["delivery"] == "test" and r["latency_ms"] >= 0 for r in rows)
        assert rows[0]["excerpt"].startswith("pong from the app") and len(rows[0]["excerpt"]) < 600

    # The receiver is gone: the test says so and fails.
    down = await acli("webhook", "test", "acme-hooks", env=env)
    assert down.returncode == 1 and "no answer" in down.stdout and "connection failed" in down.stdout
    assert (await acli("webhook", "remove", "acme-hooks", env=env)).returncode == 0
    again = await acli("webhook", "remove", "acme-hooks", env=env)
    assert again.returncode == 1 and "no webhook endpoint named 'acme-hooks'" in again.stderr


@pytest.mark.parametrize(
    ("url", "allow", "message"),
    [
        ("http://169.254.169.254/latest/meta-data/", "private", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "private", "link-local"),
        ("http://10.0.0.5/hook", "loopback", "private"),
        ("http://[fd00::1]/hook", "loopback", "private"),
        ("http://127.0.0.1:9/hook", "none", "loopback"),
        ("http://localhost:9/hook", "none", "loopback"),  # a name: judged where it resolves
        ("http://2130706433/hook", "none", "loopback"),  # 127.0.0.1 as a decimal number
        ("http://0.0.0.0:9/", "private", "unspecified"),
        ("http://224.0.0.1/", "private", "multicast"),
        ("ftp://example.com/", "none", "only http"),
    ],
)
def test_cli_refuses_urls_that_reach_internal_addresses(service_env, url, allow, message):
    assert cli("tenant", "create", "acme", env=service_env).returncode == 0
    r = cli("webhook", "add", "acme", url, env={**service_env, "PROVISIO_WEBHOOK_ALLOW_PRIVATE": allow})
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith("error: refused URL") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# --------------------------------------------------------------------------- retries, dead letters, replay


async def test_dead_letter_after_the_horizon_releases_the_resource_and_replay_resends(
    service_env, pool, tenant, provisioner
):
    broken = {"on": True}

    def behaviour(rx, got):
        ev = got.event
        if broken["on"] and ev["type"] == "user.created" and ev["data"]["user_name"] == "ann@x.test":
            return web.Response(status=500, text="ann breaks us: " + "y" * 5000)
        return web.Response(text="ok")

    async with (
        receiver(behaviour) as rx,
        running_dispatcher(webhook_retry_horizon=1.5, webhook_backoff_base_s=0.2, webhook_backoff_max_s=0.4),
    ):
        name, secret = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            ann = await create_user(s, tenant, "ann@x.test")
            await rename(s, tenant, ann, "Anna")
        # Ann's creation is retried until the horizon, then dead; her update then goes.
        await eventually(lambda: _n(rx, 1), timeout=15)
        ok = [(r.event["resource_id"], r.event["type"]) for r in rx.delivered]
        assert ok == [(ann, "user.updated")]
        dead = await eventually(lambda: _status(pool, name, "dead"))  # recorded just after the update went
        assert len(dead) == 1 and dead[0]["attempts"] >= 2 and dead[0]["last_status"] == 500
        tries = [r for r in rx.requests if r.event["type"] == "user.created"]
        assert len(tries) == dead[0]["attempts"]
        assert len({r.headers["webhook-id"] for r in tries}) == 1  # the same id each time: idempotency key
        dead_event = tries[0].event["id"]

        failed = await acli("webhook", "deliveries", tenant.name, "--failed", "--json", env=service_env)
        assert failed.returncode == 0, failed.stderr
        rows = [json.loads(line) for line in failed.stdout.splitlines()]
        assert rows and {r["delivery"] for r in rows} == {"dead"} and {r["status"] for r in rows} == {500}
        assert rows[0]["event_id"] == dead_event and rows[0]["excerpt"].startswith("ann breaks us")
        assert len(rows[0]["excerpt"]) < 600  # an excerpt only
        every = await acli("webhook", "deliveries", tenant.name, "--json", env=service_env)
        assert len(every.stdout.splitlines()) == len(rows) + 1  # and the update's 200

        # The receiver is fixed: replay the dead letter.
        broken["on"] = False
        r = await acli("webhook", "replay", name, "--event", dead_event, env=service_env)
        assert r.returncode == 0 and "queued 1 delivery" in r.stdout, r.stderr
        await eventually(lambda: _n(rx, 2), timeout=10)
        again = rx.delivered[-1]
        assert Webhook(secret).verify(again.body, again.headers)["id"] == dead_event

        # Replay everything from the start of the feed: both events, in order.
        r = await acli("webhook", "replay", name, "--from", "0", env=service_env)
        assert r.returncode == 0 and "queued 2 deliveries" in r.stdout, r.stderr
        await eventually(lambda: _n(rx, 4), timeout=10)
        assert [e["type"] for e in rx.events()[-2:]] == ["user.created", "user.updated"]
        # From a cursor: only what follows it.
        r = await acli("webhook", "replay", name, "--from", rx.delivered[-2].event["sequence"], env=service_env)
        assert r.returncode == 0 and "queued 1 delivery" in r.stdout, r.stderr
        await eventually(lambda: _n(rx, 5), timeout=10)
        assert rx.events()[-1]["type"] == "user.updated"

        r = await acli("webhook", "replay", name, "--dead", env=service_env)
        assert r.returncode == 0 and "queued 1 delivery" in r.stdout  # the dead one, once more
        await eventually(lambda: _n(rx, 6), timeout=10)
        for args, message in [
            (("--event", "nope"), "not an event id"),
            (("--event", str(uuid.uuid4())), "no event"),
            (("--from", "zz"), "--from"),
            ((), "give one of"),
            (("--dead", "--event", dead_event), "give one of"),
        ]:
            bad = await acli("webhook", "replay", name, *args, env=service_env)
            assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


async def test_an_other_tenants_event_cannot_be_replayed_to_an_endpoint(service_env, pool, tenant, provisioner):
    other = await make_tenant(pool)
    async with receiver() as rx, running_dispatcher():
        name, _ = await add(pool, tenant.id, rx.url)
        await add(pool, other.id, rx.url)
        async with scim_client() as s:
            await create_user(s, other, "eve@other.test")
        await eventually(lambda: _n(rx, 1), timeout=10)
        theirs = rx.delivered[0].event
        assert theirs["tenant_id"] == str(other.id)
        r = await acli("webhook", "replay", name, "--event", theirs["id"], env=service_env)
        assert r.returncode == 1 and "no event" in r.stderr
        r = await acli("webhook", "replay", name, "--from", "0", env=service_env)
        assert r.returncode == 0 and "queued 0 deliveries" in r.stdout
        await asyncio.sleep(0.5)
        assert len(rx.requests) == 1


# --------------------------------------------------------------------------- SSRF at delivery time


async def test_delivery_refuses_internal_addresses_whatever_the_stored_url(service_env, pool, tenant, provisioner):
    """The address is checked again on every connection: a URL added while allowed, or a
    name that resolves elsewhere now (DNS rebinding), is refused when the setting says so."""
    async with receiver() as rx, running_dispatcher(webhook_allow_private="none", webhook_retry_horizon=600):
        literal, _ = await add(pool, tenant.id, rx.url)
        by_name, _ = await add(pool, tenant.id, f"http://localhost:{rx.port}/hooks")
        mapped, _ = await add(pool, tenant.id, f"http://[::ffff:127.0.0.1]:{rx.port}/hooks")
        async with scim_client() as s:
            await create_user(s, tenant, "ann@x.test")

        async def attempted():
            rows = await pool.fetch(
                """SELECT w.name, a.error, a.ok FROM webhook_attempts a JOIN webhook_endpoints w ON w.id = a.endpoint_id"""
            )
            return rows if {r["name"] for r in rows} == {literal, by_name, mapped} else None

        rows = await eventually(attempted, timeout=15)
    assert rx.requests == []
    errors = {r["name"]: r["error"] for r in rows}
    assert not any(r["ok"] for r in rows)
    assert errors[literal].startswith("refused:") and "loopback" in errors[literal]
    assert errors[mapped].startswith("refused:") and "loopback" in errors[mapped]
    assert "loopback" in errors[by_name] and "connection failed" in errors[by_name]


async def test_no_redirect_is_followed_and_a_slow_answer_times_out(service_env, pool, tenant, provisioner):
    async def behaviour(rx, got):
        if got.event["data"]["user_name"] == "slow@x.test":
            await asyncio.sleep(5)
        return web.Response(status=307, headers={"Location": "http://169.254.169.254/"})

    async with (
        receiver(behaviour) as rx,
        running_dispatcher(
            webhook_timeout_s=0.5, webhook_retry_horizon=600, webhook_backoff_base_s=60, webhook_backoff_max_s=120
        ),
    ):
        name, _ = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            await create_user(s, tenant, "moved@x.test")
            await create_user(s, tenant, "slow@x.test")

        async def attempts():
            rows = await pool.fetch("SELECT status_code, error FROM webhook_attempts ORDER BY id")
            return rows if len(rows) == 2 else None

        rows = await eventually(attempts, timeout=15)
    assert len(rx.requests) == 2  # the redirect was not followed
    assert {(r["status_code"], r["error"]) for r in rows} == {(307, None), (None, "timeout after 0.5 s")}
    assert {r["status"] for r in await delivery_rows(pool, name)} == {"pending"}  # retried later


# --------------------------------------------------------------------------- isolation


async def test_a_slow_endpoint_does_not_delay_another(service_env, pool, provisioner):
    slow_t, fast_t = await make_tenant(pool), await make_tenant(pool)

    async def slow(rx, got):
        await asyncio.sleep(3)
        return web.Response(text="finally")

    async with receiver(slow) as slow_rx, receiver() as fast_rx, running_dispatcher(webhook_max_in_flight=2):
        await add(pool, slow_t.id, slow_rx.url)
        await add(pool, fast_t.id, fast_rx.url)
        async with scim_client() as s:
            for i in range(6):  # more than the slow endpoint's connection slots
                await create_user(s, slow_t, f"s{i}@slow.test")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for i in range(10):
                await create_user(s, fast_t, f"f{i}@fast.test")
            await eventually(lambda: _n(fast_rx, 10), timeout=10)
            elapsed = loop.time() - t0
        assert elapsed < 2.5, elapsed  # well before the slow receiver answered anything twice
        assert len(slow_rx.delivered) <= 2


# --------------------------------------------------------------------------- disabled endpoints


async def test_an_endpoint_failing_too_long_is_disabled_and_the_tenant_mailed(service_env, pool, provisioner):
    from .audit_support import SmtpServer, running_auditor, smtp_env

    acme = await make_tenant(pool, notify_emails=["ops@acme.example"])
    smtp = SmtpServer().start()
    healthy = {"on": False}

    def behaviour(rx, got):
        return web.Response(text="ok") if healthy["on"] else web.Response(status=502, text="bad gateway")

    try:
        async with (
            receiver(behaviour) as rx,
            running_auditor(**smtp_env(smtp.port)),
            running_dispatcher(webhook_disable_after=1.0, webhook_backoff_base_s=0.2, webhook_backoff_max_s=0.3),
        ):
            name, _ = await add(pool, acme.id, rx.url)
            async with scim_client() as s:
                await create_user(s, acme, "ann@acme.example")

            async def disabled():
                return await pool.fetchrow(
                    "SELECT status, disabled_reason, failing_since FROM webhook_endpoints WHERE name = $1 AND status = 'disabled'",
                    name,
                )

            row = await eventually(disabled, timeout=15)
            assert row["disabled_reason"] == "failing for 1s"

            async def mailed():
                return smtp.inbox.by_subject("was disabled")

            [mail] = await eventually(mailed, timeout=10)
            assert mail["To"] == "ops@acme.example"
            body = mail.get_payload(decode=True).decode()
            assert f"provisio webhook enable {name}" in body and "HTTP 502" in body and rx.url in body
            listed = await acli("webhook", "list", "--json", env=service_env)
            [shown] = [json.loads(line) for line in listed.stdout.splitlines()]
            assert shown["status"] == "disabled" and shown["pending"] == 1

            # Disabled: no more attempts, events wait.
            await asyncio.sleep(0.5)
            tries = len(rx.requests)
            async with scim_client() as s:
                await create_user(s, acme, "bob@acme.example")
            await asyncio.sleep(1.0)
            assert len(rx.requests) == tries

            healthy["on"] = True
            r = await acli("webhook", "enable", name, env=service_env)
            assert r.returncode == 0, r.stderr
            await eventually(lambda: _n(rx, 2), timeout=10)
            assert [e["data"]["user_name"] for e in rx.events()] == ["ann@acme.example", "bob@acme.example"]
            assert len(smtp.inbox.by_subject("was disabled")) == 1
    finally:
        smtp.stop()


async def test_two_dispatchers_keep_order_per_resource_through_random_failures(service_env, pool, tenant, provisioner):
    """Every event arrives; a resource's event is only ever sent once all its earlier
    events were answered 2xx, whichever dispatcher sends it."""
    import random

    rng = random.Random(12)
    log: list[tuple[str, str, bool]] = []  # (resource, sequence, answered 2xx), in arrival order

    def behaviour(rx, got):
        ev = got.event
        ok = rng.random() >= 0.3
        log.append((ev["resource_id"], ev["sequence"], ok))
        return web.Response(text="ok") if ok else web.Response(status=500, text="flaky")

    async with (
        receiver(behaviour) as rx,
        running_dispatcher(webhook_backoff_base_s=0.05, webhook_backoff_max_s=0.2),
        running_dispatcher(webhook_backoff_base_s=0.05, webhook_backoff_max_s=0.2),
    ):
        name, _ = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            users = [await create_user(s, tenant, f"u{i}@x.test") for i in range(4)]

            async def churn(uid: str) -> None:
                for k in range(6):
                    await rename(s, tenant, uid, f"n{k}")

            await asyncio.gather(*(churn(u) for u in users))

        async def visible():
            # Visible once every older writing transaction ended (docs/events.md).
            events = await events_feed.read_events(pool, [tenant.id], None, 1000)
            return events if len(events) == 4 * 7 else None

        feed = await eventually(visible, timeout=10)

        async def all_delivered():
            return {e["sequence"] for e in feed} <= {seq for _r, seq, ok in log if ok}

        await eventually(all_delivered, timeout=30)
    assert any(not ok for *_x, ok in log)  # failures did happen
    order: dict[str, list[str]] = {}
    for e in feed:
        order.setdefault(e["resource_id"], []).append(e["sequence"])
    done: set[str] = set()
    for resource, seq, ok in log:
        earlier = [e for e in order[resource] if e < seq]
        assert set(earlier) <= done, f"{seq} of {resource} sent before {set(earlier) - done} were delivered"
        if ok:
            done.add(seq)
    got = [r.event for r in rx.delivered]
    for uid in users:
        seqs = [e["sequence"] for e in got if e["resource_id"] == uid]
        assert seqs == sorted(seqs) == order[uid]
    assert {r["status"] for r in await delivery_rows(pool, name)} == {"delivered"}


async def test_removing_an_endpoint_mid_request_does_not_stall_the_others(service_env, pool, tenant, provisioner):
    import structlog.testing

    async def slow(rx, got):
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    with structlog.testing.capture_logs() as logs:
        async with receiver(slow) as slow_rx, receiver() as rx, running_dispatcher():
            doomed, _ = await add(pool, tenant.id, slow_rx.url)
            await add(pool, tenant.id, rx.url)
            async with scim_client() as s:
                await create_user(s, tenant, "a@x.test")
                await eventually(lambda: _requested(slow_rx, 1), timeout=10)
                r = await acli("webhook", "remove", doomed, env=service_env)
                assert r.returncode == 0, r.stderr
                await asyncio.sleep(1.5)  # the slow answer comes back for a removed endpoint
                await create_user(s, tenant, "b@x.test")
            await eventually(lambda: _n(rx, 2), timeout=10)
    assert not [e for e in logs if e["event"] in ("webhook_record_failed", "webhook_worker_error")], logs
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries") == 2


async def _requested(rx, n):
    return len(rx.requests) >= n


async def test_finished_deliveries_are_pruned_with_the_events(service_env, pool, tenant, provisioner):
    from datetime import UTC, datetime, timedelta

    async with receiver() as rx, running_dispatcher():
        name, _ = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            await create_user(s, tenant, "a@x.test")
            await create_user(s, tenant, "b@x.test")
        await eventually(lambda: _delivered(pool, name, 2))
    await pool.execute("UPDATE webhook_deliveries SET created_at = now() - interval '40 days'")
    # One still pending (e.g. an endpoint disabled): kept whatever its age.
    await pool.execute(
        "UPDATE webhook_deliveries SET status = 'pending' WHERE id = (SELECT min(id) FROM webhook_deliveries)"
    )
    assert await pool.fetchval("SELECT count(*) FROM webhook_attempts") == 2
    deleted = await webhook_store.prune(pool, datetime.now(UTC) - timedelta(days=30))
    assert deleted == 1
    assert [r["status"] for r in await delivery_rows(pool, name)] == ["pending"]
    assert await pool.fetchval("SELECT count(*) FROM webhook_attempts") == 1  # cascaded


def test_the_dispatcher_runs_as_its_own_process(service_env):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **service_env, "PROVISIO_DISPATCHER_HEALTH_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhook_dispatcher"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "the dispatcher did not become ready"
                time.sleep(0.2)
        deadline = time.monotonic() + 15
        while True:  # the gauges are measured every few seconds
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                metrics = r.read().decode()
            if "provisio_webhook_endpoints{" in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert 'service="webhook-dispatcher"' in metrics
        assert 'provisio_webhook_endpoints{status="active"} 0.0' in metrics
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    assert b"webhook_dispatcher_stopped" in out and b"Traceback" not in out


def test_the_dispatcher_refuses_bad_settings_in_one_line(service_env):
    import os
    import subprocess
    import sys

    env = {**os.environ, **service_env, "PROVISIO_WEBHOOK_ALLOW_PRIVATE": "everything"}
    r = subprocess.run(
        [sys.executable, "-m", "webhook_dispatcher"], env=env, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 1
    assert r.stderr.startswith("error: PROVISIO_WEBHOOK_ALLOW_PRIVATE is invalid") and "Traceback" not in r.stderr
    env = {**os.environ, **service_env, "PROVISIO_WEBHOOK_RETRY_HORIZON": "soon"}
    r = subprocess.run(
        [sys.executable, "-m", "webhook_dispatcher"], env=env, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 1 and "PROVISIO_WEBHOOK_RETRY_HORIZON" in r.stderr and "Traceback" not in r.stderr


async def test_an_endless_answer_is_cut_at_the_size_limit(service_env, pool, tenant, provisioner):
    async def endless(rx, got):
        # Never-ending 2xx body: read until the size limit, not until the timeout.
        resp = web.StreamResponse(status=200)
        await resp.prepare(rx.current_request)
        try:
            while True:
                await resp.write(b"z" * 1024)
                await asyncio.sleep(0.005)
        except (ConnectionResetError, RuntimeError, OSError):
            pass
        return resp

    async with (
        receiver(endless) as rx,
        running_dispatcher(webhook_max_answer_bytes=4096, webhook_excerpt_bytes=100, webhook_timeout_s=3.0),
    ):
        name, _ = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            await create_user(s, tenant, "a@x.test")
        await eventually(lambda: _delivered(pool, name, 1), timeout=10)
    attempt = await pool.fetchrow("SELECT ok, status_code, latency_ms, excerpt FROM webhook_attempts")
    assert attempt["ok"] and attempt["status_code"] == 200
    assert attempt["latency_ms"] < 2000  # not the 3 s timeout
    assert attempt["excerpt"] == "z" * 100 + "…"


async def test_an_event_pruned_before_delivery_is_dead_lettered(service_env, pool, tenant, provisioner):
    async with receiver() as rx:
        name, _ = await add(pool, tenant.id, rx.url)
        endpoint_id = await pool.fetchval("SELECT id FROM webhook_endpoints WHERE name = $1", name)
        async with scim_client() as s:
            await create_user(s, tenant, "a@x.test")

        async def fanned():
            await webhook_store.fan_out(pool, endpoint_id)
            return await delivery_rows(pool, name)

        await eventually(fanned, timeout=10)
        await pool.execute("DELETE FROM events")  # retention passed while the endpoint waited
        async with running_dispatcher():
            rows = await eventually(
                lambda: _status(pool, name, "dead"),
                timeout=10,
            )
    assert rows[0]["last_error"] == "the event is no longer retained" and rows[0]["attempts"] == 0
    assert rx.requests == []


async def _status(pool, name, status):
    rows = [r for r in await delivery_rows(pool, name) if r["status"] == status]
    return rows or None


async def test_a_dispatcher_killed_mid_delivery_leaves_it_to_another(service_env, pool, tenant, provisioner):
    """SIGKILL between sending and recording: the lease runs out and another dispatcher
    sends it again (at least once, same webhook-id), the resource's next event after it."""
    import os
    import signal
    import subprocess
    import sys

    first = asyncio.Event()

    async def hang_first(rx, got):
        if len(rx.requests) == 1:
            first.set()
            await asyncio.sleep(8)
            return web.Response(status=599)  # nobody is listening any more
        return web.Response(text="ok")

    async with receiver(hang_first) as rx:
        name, _ = await add(pool, tenant.id, rx.url)
        env = {
            **os.environ,
            **service_env,
            "PROVISIO_DISPATCHER_HEALTH_PORT": "0",
            "PROVISIO_WEBHOOK_ALLOW_PRIVATE": "loopback",
            "PROVISIO_WEBHOOK_TIMEOUT_S": "2",
            "PROVISIO_WEBHOOK_POLL_S": "0.2",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook_dispatcher"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            async with scim_client() as s:
                ann = await create_user(s, tenant, "ann@x.test")
                await asyncio.wait_for(first.wait(), 30)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                await rename(s, tenant, ann, "Anna")
        finally:
            if proc.poll() is None:
                proc.kill()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with running_dispatcher(webhook_timeout_s=2):
            await eventually(lambda: _n(rx, 2), timeout=30)
        waited = loop.time() - t0
    types = [r.event["type"] for r in rx.delivered]
    assert types == ["user.created", "user.updated"]
    assert rx.requests[0].headers["webhook-id"] == rx.delivered[0].headers["webhook-id"]
    assert waited < 15  # the lease: timeout + 1 s + 5 s
    assert {r["status"] for r in await delivery_rows(pool, name)} == {"delivered"}


async def test_an_idle_tenants_endpoint_reads_only_its_own_tenants_events(service_env, pool, tenant):
    """Other tenants' events do not make a tenant's endpoint read anything: its fan-out
    probes events_tenant_idx for its own tenant after its cursor. It still finds its own
    events, and the endpoint for every tenant finds them all, in feed order."""
    other = await make_tenant(pool)
    await add(pool, tenant.id, "http://127.0.0.1:9/idle", name="idle")
    await add(pool, None, "http://127.0.0.1:9/all", name="all")
    ids = {r["name"]: r["id"] for r in await pool.fetch("SELECT id, name FROM webhook_endpoints")}
    async with pool.acquire() as conn:
        for _ in range(20):  # 20 transactions (xids) of 100 events, all the other tenant's
            await conn.execute(
                """INSERT INTO events (tenant_id, type, occurred_at, source, correlation_id, command_id, data)
                   SELECT $1, 'user.created', now(), '{}', 'c', gen_random_uuid(), '{}' FROM generate_series(1, 100)""",
                other.id,
            )
        await conn.execute("ANALYZE events")
        plan = await _explain(conn, webhook_store._FAN_OUT_TENANT, ids["idle"], 1000, tenant.id)
    assert _rows_read(plan, "events") == 0, json.dumps(plan, indent=1)
    assert await webhook_store.fan_out(pool, ids["idle"], tenant_id=tenant.id) == (0, 0)

    await pool.execute(
        """INSERT INTO events (tenant_id, type, occurred_at, source, correlation_id, command_id, data)
           VALUES ($1, 'user.created', now(), '{}', 'mine', gen_random_uuid(), '{}')""",
        tenant.id,
    )
    await eventually(lambda: _fanned(pool, ids["idle"], tenant.id), timeout=30)
    mine = await delivery_rows(pool, "idle")
    assert [r["tenant_id"] for r in mine] == [tenant.id]
    # The wrong tenant for an endpoint reads nothing and creates nothing.
    assert await webhook_store.fan_out(pool, ids["idle"], tenant_id=other.id) == (0, 0)
    # The endpoint for every tenant: everything, in feed order, in batches.
    while (await webhook_store.fan_out(pool, ids["all"], 700))[0]:
        pass
    rows = await delivery_rows(pool, "all")
    assert len(rows) == 2001
    assert [(r["event_xid"], r["event_row"]) for r in rows] == sorted((r["event_xid"], r["event_row"]) for r in rows)


async def _fanned(pool, endpoint_id, tenant_id):
    return (await webhook_store.fan_out(pool, endpoint_id, tenant_id=tenant_id))[1] or None


async def _explain(conn, sql, *args) -> Any:
    """EXPLAIN ANALYZE runs the statement: rolled back, so it changes nothing."""
    tr = conn.transaction()
    await tr.start()
    try:
        plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    finally:
        await tr.rollback()
    return json.loads(plan) if isinstance(plan, str) else plan


def _rows_read(plan: Any, relation: str) -> int:
    """Rows the plan's scans of ``relation`` produced or filtered away."""
    total = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal total
        if node.get("Relation Name") == relation:
            total += sum(
                node.get(k, 0) for k in ("Actual Rows", "Rows Removed by Filter", "Rows Removed by Index Recheck")
            )
        for child in node.get("Plans", ()):
            walk(child)

    for item in plan:
        walk(item["Plan"])
    return total
