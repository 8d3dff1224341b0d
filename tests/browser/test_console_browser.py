"""The console in a real browser: login, audit search and the user page after a real
SCIM sync (gateway, provisioner and auditor running), the live tail, dead letters by
role, CSRF, session expiry, and a hostile displayName shown as text. Each test writes
screenshots to .provisio/screenshots/ (PROVISIO_SCREENSHOTS=docs/console refreshes
the ones docs/console.md shows)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from provisio_lib.contract import Command, CreateUser, Source, UserData, encode
from provisio_lib.topology import DATA_FIELD
from tests.conftest import eventually, make_tenant, running_provisioner
from tests.console_support import PASSWORD, console_client, make_staff
from tests.integration.audit_support import make_outcome, publish, running_auditor
from tests.integration.scim_helpers import GROUP, USER, bearer, patch_body, scim_client

from .conftest import shot

pytestmark = pytest.mark.integration
HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(1)>'


async def sign_in(page, base: str, email: str, password: str = PASSWORD) -> None:
    await page.goto(base + "/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state()


async def test_login_and_a_wrong_password(service_env, pool, page):
    await make_staff(pool, "ann@example.com", "support")
    await make_tenant(pool, "acme")
    async with console_client() as client:
        base = str(client.make_url("")).rstrip("/")
        await page.goto(base + "/tenants")
        assert page.url.endswith("/login")
        await shot(page, "login")
        await sign_in(page, base, "ann@example.com", "not my password at all")
        assert await page.get_by_role("alert").inner_text() == "Wrong email, password or one-time code."
        await shot(page, "login-wrong-password")
        await sign_in(page, base, "ann@example.com")
        assert page.url.endswith("/tenants")
        assert await page.get_by_role("heading", level=1).inner_text() == "Tenants"
        assert "ann@example.com (support)" in await page.locator(".who").inner_text()
        # Keyboard: the skip link is the first stop and moves focus to the content.
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.className") == "skip"
    # No script or style refused by the Content-Security-Policy (no inline code anywhere).
    assert not [e for e in page.console_errors if "Content Security Policy" in e], page.console_errors


async def test_audit_search_and_user_page_after_a_scim_sync(service_env, pool, redis, topology, page):
    t = await make_tenant(pool, "acme")
    await make_staff(pool, "ann@example.com", "support")
    async with running_provisioner(), running_auditor(), scim_client() as scim:
        h = bearer(t.token)
        r = await scim.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": [USER],
                "userName": "alice@acme.example",
                "displayName": HOSTILE,
                "name": {"givenName": "Alice", "familyName": "Liddell"},
                "emails": [{"value": "alice@acme.example", "primary": True}],
            },
        )
        assert r.status == 201, await r.text()
        uid = (await r.json())["id"]
        r = await scim.post(
            "/scim/v2/Groups",
            headers=h,
            json={"schemas": [GROUP], "displayName": "Engineering", "members": [{"value": uid}]},
        )
        assert r.status == 201, await r.text()
        r = await scim.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "replace", "path": "name.givenName", "value": "Alicia"}),
        )
        assert r.status == 200, await r.text()
        # The IdP creates her again: refused (uniqueness), recorded as a failure.
        r = await scim.post("/scim/v2/Users", headers=h, json={"schemas": [USER], "userName": "ALICE@acme.example"})
        assert r.status == 409, await r.text()

        async def audited():
            return await pool.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1", t.id) >= 4

        await eventually(audited, timeout=30)

    async with console_client() as client:
        base = str(client.make_url("")).rstrip("/")
        await sign_in(page, base, "ann@example.com")
        await shot(page, "tenants")
        row = page.locator("tbody tr", has_text="acme")
        assert "token test" in await row.inner_text()  # last SCIM call and its token
        await page.goto(base + "/audit")
        await page.get_by_label("Tenant").select_option("acme")
        await page.get_by_label("User (userName)").fill("alice@acme.example")
        await page.get_by_role("button", name="Search").click()
        await page.wait_for_load_state()
        rows = page.locator("table.results tbody tr")
        assert await rows.count() >= 3
        first = await rows.first.inner_text()
        assert "failed" in first and "uniqueness" in first  # newest first
        await shot(page, "audit-search")
        await page.get_by_label("Result").select_option("failed")
        await page.get_by_role("button", name="Search").click()
        await page.wait_for_load_state()
        assert await rows.count() == 1

        await rows.first.get_by_role("link", name="ALICE@acme.example").click()
        await page.wait_for_load_state()
        assert "Explain" in await page.get_by_role("heading", level=1).inner_text()
        groups = await page.locator("section", has=page.get_by_role("heading", name="Groups")).inner_text()
        assert "Engineering" in groups and "SCIM" in groups
        cells = page.locator("section tr", has_text="Engineering").locator("td")
        assert await cells.nth(2).inner_text() == "test"  # via the SCIM token that added her
        history = page.locator("ol.history > li")
        assert await history.count() >= 3
        assert "user.create" in await history.first.inner_text()  # oldest first
        assert "Alicia" in await page.locator("ol.history").inner_text()  # a change's after value
        failures = await page.locator("ul.failures").inner_text()
        assert "already exists in the tenant" in failures  # the digest's advice
        # The hostile displayName is shown as text, never run or parsed.
        state = await page.locator("table.kv").inner_text()
        assert HOSTILE in state
        assert await page.locator("main img").count() == 0
        assert page.dialogs == []
        await shot(page, "user")
        await page.locator("#groups-h").scroll_into_view_if_needed()
        await page.evaluate("window.scrollTo(0, document.getElementById('groups-h').offsetTop - 10)")
        await shot(page, "user-history")


async def test_live_tail_streams_new_outcomes(service_env, pool, redis, topology, page):
    t = await make_tenant(pool, "acme")
    await make_staff(pool, "ann@example.com", "support")
    async with console_client() as client:
        base = str(client.make_url("")).rstrip("/")
        await sign_in(page, base, "ann@example.com")
        await page.goto(base + "/audit/tail?tenant=acme")
        assert await page.get_by_role("heading", level=1).inner_text() == "Live tail"
        await page.wait_for_timeout(1500)  # the stream is connected and positioned at the end
        await publish(
            redis,
            topology,
            make_outcome(t.id, user="tail@acme.example", result="failed", code="policy", message=HOSTILE),
        )
        row = page.locator("#tail tbody tr").first
        await row.wait_for(timeout=15000)
        text = await row.inner_text()
        assert "tail@acme.example" in text and HOSTILE in text
        assert page.dialogs == []
        await shot(page, "live-tail")


async def test_dead_letter_replay_as_admin_and_refused_as_support(service_env, pool, redis, topology, page):
    t = await make_tenant(pool, "acme")
    cmd = Command(
        tenant_id=t.id,
        source=Source(kind="scim", id="tok", label="test"),
        correlation_id="cid-dead",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name="dead@acme.example")),
    )
    p = topology.partition_of(t.id)
    entry = await redis.xadd(
        topology.dead_letter_stream(p),
        {
            DATA_FIELD: encode(cmd),
            "error": "database refused: deadlock detected",
            "deliveries": "5",
            "failed_at": "2026-12-02T10:00:00+00:00",
        },
    )
    dl_id = f"{p}:{entry.decode()}"
    await make_staff(pool, "sam@example.com", "support")
    await make_staff(pool, "ada@example.com", "admin")
    async with console_client() as client:
        base = str(client.make_url("")).rstrip("/")
        await sign_in(page, base, "sam@example.com")
        await page.goto(base + "/dead-letters")
        assert "Only admins can replay or drop them." in await page.locator("main").inner_text()
        assert await page.get_by_role("link", name="Replay").count() == 0
        await page.goto(f"{base}/dead-letters/{dl_id}/replay")
        assert "Only admins can replay" in await page.get_by_role("alert").inner_text()
        await shot(page, "dead-letter-refused")
        assert await redis.xlen(topology.dead_letter_stream(p)) == 1

        await page.context.clear_cookies()
        await sign_in(page, base, "ada@example.com")
        await page.goto(base + "/dead-letters")
        await shot(page, "dead-letters")
        await page.get_by_role("link", name=dl_id).click()
        await page.wait_for_load_state()
        assert "dead@acme.example" in await page.locator("pre.body").inner_text()
        await page.get_by_role("link", name="Replay…").click()
        await page.wait_for_load_state()
        await shot(page, "dead-letter-confirm")
        await page.get_by_label(f"Yes, replay {dl_id}").check()
        await page.get_by_role("button", name="Replay").click()
        await page.wait_for_load_state()
        assert "was replayed" in await page.get_by_role("status").inner_text()
        assert await page.get_by_role("link", name=dl_id).count() == 0
    assert await redis.xlen(topology.dead_letter_stream(p)) == 0
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE source_kind = 'staff' AND operation = 'dlq.replay'")
    assert row["source_label"] == "ada@example.com"


async def test_csrf_refused_and_session_expiry(service_env, pool, page):
    await make_staff(pool, "ann@example.com", "support")
    async with console_client(console_session_idle_s=600) as client:
        base = str(client.make_url("")).rstrip("/")
        await sign_in(page, base, "ann@example.com")
        # A form whose token is not the session's (what a forged cross-site post carries).
        await page.locator("form.logout input[name=csrf_token]").evaluate("e => e.value = 'forged'")
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_load_state()
        assert "CSRF check failed" in await page.get_by_role("alert").inner_text()
        await shot(page, "csrf-refused")
        await page.goto(base + "/tenants")
        assert page.url.endswith("/tenants")  # still signed in: nothing happened

        await pool.execute("UPDATE staff_sessions SET last_seen_at = now() - interval '11 minutes'")
        await page.goto(base + "/audit")
        assert "/login" in page.url
        assert "Your session ended" in await page.get_by_role("status").inner_text()
        await shot(page, "session-expired")
    await asyncio.sleep(0)
