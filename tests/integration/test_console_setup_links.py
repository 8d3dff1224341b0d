"""Support staff's setup-link pages of the console (/tenants/<tenant>/setup-links), without
a browser, against the real console app and Postgres: the states a link can be in and
what its session did, creating a link (its URL shown once, and opening the /setup wizard
in another client), revoking one (its session ends, the link is refused), the support
role refused, another tenant's link id not found, CSRF, and the audit rows (kind staff,
by account id)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from provisio_lib.admin import setup_links
from tests.conftest import make_tenant
from tests.console_support import console_on_port, csrf_token, form_token, login, make_staff

pytestmark = pytest.mark.integration

_URL = re.compile(r'<code id="setup-url">([^<]+)</code>')


async def new_link(pool: Any, tid: uuid.UUID, scopes: list[str] | None = None) -> tuple[setup_links.SetupLink, str]:
    async with pool.acquire() as conn:
        return await setup_links.create(
            conn, tid, scopes=scopes or ["sso", "scim"], ttl=timedelta(days=1), actor="cli:test"
        )


async def open_in(client: TestClient | aiohttp.ClientSession, url: str) -> str:
    """Open a setup link as the customer's browser does (its page, then the button);
    returns the setup overview's URL it was sent on to."""
    page = await client.get(url)
    assert page.status == 200, await page.text()
    r = await client.post(url, data={"form_token": form_token(await page.text())}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/setup", (r.status, await r.text())
    return str(r.headers["Location"])


def row_of(html: str, prefix: str) -> str:
    """The table row of the link with this prefix."""
    start = html.index(f"<code>{prefix}…</code>")
    return html[html.rindex("<tr", 0, start) : html.index("</tr>", start)]


def row_of_tenant(html: str, name: str) -> str:
    """The tenants page's row of this tenant."""
    start = html.index(f">{name}</a></th>")
    return html[start : html.index("</tr>", start)]


async def test_the_list_shows_each_state_and_what_the_session_did(service_env, pool):
    t = await make_tenant(pool)
    other = await make_tenant(pool)
    await make_staff(pool, "sam@example.com", "support")
    unused, unused_token = await new_link(pool, t.id, ["sso"])
    in_use, in_use_token = await new_link(pool, t.id)
    used, used_token = await new_link(pool, t.id, ["scim"])
    expired, _ = await new_link(pool, t.id)
    revoked, _ = await new_link(pool, t.id)
    elsewhere, _ = await new_link(pool, other.id)
    async with console_on_port() as staff, console_on_port() as customer, console_on_port() as earlier:
        # One session opened and made a SCIM token; another opened and then its link expired.
        await open_in(customer, f"/setup/open/{in_use_token}")
        csrf = csrf_token(await (await customer.get("/setup/scim")).text())
        r = await customer.post("/setup/scim/token", data={"csrf_token": csrf})
        assert r.status == 200 and "prv_" in await r.text()
        await open_in(earlier, f"/setup/open/{used_token}")
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE setup_links SET expires_at = now() - interval '1 second' WHERE id = ANY($1::uuid[])",
                [used.id, expired.id],
            )
            await setup_links.revoke(conn, str(revoked.id), actor="cli:test")

        await login(staff, "sam@example.com")
        tenants = await (await staff.get("/tenants")).text()
        assert f'href="/tenants/{t.name}/setup-links"' in tenants
        assert "2 live</span>" in row_of_tenant(tenants, t.name)  # unused and in use
        page = await staff.get(f"/tenants/{t.name}/setup-links")
        html = await page.text()
        assert page.status == 200, html
        for token in (unused_token, in_use_token, used_token):
            assert token not in html and token[12:] not in html  # the prefix only, never the secret
        assert elsewhere.prefix not in html  # another tenant's link
        states = {link.prefix: row_of(html, link.prefix) for link in (unused, in_use, used, expired, revoked)}
        assert '<td class="state">unused' in states[unused.prefix]
        assert '<td class="state">in use' in states[in_use.prefix]
        assert '<td class="state">used' in states[used.prefix] and "session ended" in states[used.prefix]
        assert '<td class="state">expired' in states[expired.prefix] and "never opened" in states[expired.prefix]
        assert '<td class="state">revoked' in states[revoked.prefix]
        assert "<td>sso</td>" in states[unused.prefix] and "<td>sso, scim</td>" in states[in_use.prefix]
        assert "cli:test" in states[unused.prefix]
        # What the session did, from the audit trail (its redeeming left out).
        assert "scim_token.create × 1" in states[in_use.prefix]
        assert "setup_link.redeem" not in html
        assert f"connection=setup%3A{in_use.prefix}" in states[in_use.prefix]
        assert "nothing yet" in states[used.prefix]
        # Support staff see the list, not the actions.
        assert "Only admins can create or revoke setup links." in html
        assert "/revoke" not in html and "Create the link" not in html


async def test_an_admin_creates_a_link_shown_once_that_opens_the_setup_wizard(service_env, pool):
    t = await make_tenant(pool)
    staff = await make_staff(pool, "ada@example.com", "admin")
    async with console_on_port() as client:
        await login(client, "ada@example.com")
        page = await client.get(f"/tenants/{t.name}/setup-links")
        html = await page.text()
        assert "No setup links yet." in html and "Create the link" in html
        csrf = csrf_token(html)
        # The CLI's limits: scopes sso/scim, at least one; 1 minute to 30 days.
        for data, message in (
            ({"scope": "sso", "expires": "90d"}, "between 1m and 30d"),
            ({"scope": "sso", "expires": "30s"}, "bad --expires"),
            ({"expires": "7d"}, "bad --scope"),
            ({"scope": "ldap", "expires": "7d"}, "bad --scope"),
        ):
            r = await client.post(f"/tenants/{t.name}/setup-links", data={"csrf_token": csrf, **data})
            assert r.status == 400, data
            assert message in await r.text(), data
        assert await pool.fetchval("SELECT count(*) FROM setup_links") == 0

        form = aiohttp.FormData({"csrf_token": csrf, "expires": "2h"})
        form.add_field("scope", "sso")
        form.add_field("scope", "scim")
        r = await client.post(f"/tenants/{t.name}/setup-links", data=form, allow_redirects=False)
        html = await r.text()
        assert r.status == 200, html  # the answer itself, never a redirect carrying the URL
        assert r.headers["Cache-Control"] == "no-store"
        m = _URL.search(html)
        assert m, html
        url = m.group(1)
        base = str(client.make_url("")).rstrip("/")
        assert re.fullmatch(re.escape(base) + r"/setup/open/psl_[A-Za-z0-9_-]{43}", url), url
        assert f'data-copy="{url}"' in html and "shown only this once" in html
        token = url.rsplit("/", 1)[1]
        row = await pool.fetchrow("SELECT * FROM setup_links WHERE tenant_id = $1", t.id)
        assert row["prefix"] == token[:12] and sorted(row["scopes"]) == ["scim", "sso"]
        assert 7190 < (row["expires_at"] - row["created_at"]).total_seconds() < 7210
        assert row["created_by"] == str(staff.id)  # the account id, as the audit trail's source id
        listed = await (await client.get(f"/tenants/{t.name}/setup-links")).text()
        assert token not in listed and token[12:] not in listed  # never again
        assert "staff:ada@example.com" in row_of(listed, token[:12])

        # The URL itself, in the customer's browser: another client with its own cookies.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            await open_in(browser, url)
            overview = await browser.get(base + "/setup")
            assert overview.status == 200 and t.name in await overview.text()
            again = await browser.get(url)
            assert again.status == 410  # once
        listed = await (await client.get(f"/tenants/{t.name}/setup-links")).text()
        assert '<td class="state">in use' in row_of(listed, token[:12])
    audit = await pool.fetchrow(
        "SELECT * FROM audit_log WHERE tenant_id = $1 AND operation = 'setup_link.create'", t.id
    )
    assert audit["source_kind"] == "staff" and audit["source_id"] == str(staff.id)
    assert audit["source_label"] == "ada@example.com"
    assert any(token[:12] in n for n in audit["notes"]) and not any(token in n for n in audit["notes"])


async def test_an_admin_revokes_a_link_after_confirming_and_its_session_ends(service_env, pool):
    t = await make_tenant(pool)
    staff = await make_staff(pool, "ada@example.com", "admin")
    link, token = await new_link(pool, t.id)
    async with console_on_port() as client, console_on_port() as customer, console_on_port() as latecomer:
        await open_in(customer, f"/setup/open/{token}")
        assert (await customer.get("/setup")).status == 200
        await login(client, "ada@example.com")
        listed = await (await client.get(f"/tenants/{t.name}/setup-links")).text()
        revoke_url = f"/tenants/{t.name}/setup-links/{link.id}/revoke"
        assert f'href="{revoke_url}"' in row_of(listed, link.prefix)
        page = await client.get(revoke_url)
        html = await page.text()
        assert page.status == 200 and link.prefix in html and "setup session" in html and "ends at once" in html
        csrf = csrf_token(html)
        # Without ticking the box: refused, nothing revoked.
        r = await client.post(revoke_url, data={"csrf_token": csrf})
        assert r.status == 400 and "Tick the box" in await r.text()
        assert await pool.fetchval("SELECT revoked_at FROM setup_links WHERE id = $1", link.id) is None
        assert (await customer.get("/setup")).status == 200
        r = await client.post(revoke_url, data={"csrf_token": csrf, "confirm": "yes"}, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == f"/tenants/{t.name}/setup-links?notice=link-revoked"
        shown = await (await client.get(r.headers["Location"])).text()
        assert "The setup link is revoked" in shown
        assert '<td class="state">revoked' in row_of(shown, link.prefix) and revoke_url not in shown
        # The session opened with it has ended, and the link is refused.
        ended = await customer.get("/setup")
        assert ended.status == 401 and "setup session has ended" in await ended.text()
        refused = await latecomer.get(f"/setup/open/{token}")
        assert refused.status == 410 and "was revoked" in await refused.text()
        # Revoking it again changes nothing and writes no second audit row.
        r = await client.post(revoke_url, data={"csrf_token": csrf, "confirm": "yes"}, allow_redirects=False)
        assert r.headers["Location"].endswith("?notice=link-revoked-already")
    rows = await pool.fetch("SELECT * FROM audit_log WHERE operation = 'setup_link.revoke'")
    assert len(rows) == 1
    assert rows[0]["source_kind"] == "staff" and rows[0]["source_id"] == str(staff.id)
    assert rows[0]["source_label"] == "ada@example.com" and rows[0]["tenant_id"] == t.id
    assert any(link.prefix in n for n in rows[0]["notes"])


async def test_support_staff_see_links_but_cannot_create_or_revoke(service_env, pool):
    t = await make_tenant(pool)
    await make_staff(pool, "sam@example.com", "support")
    link, _token = await new_link(pool, t.id)
    async with console_on_port() as client:
        await login(client, "sam@example.com")
        page = await client.get(f"/tenants/{t.name}/setup-links")
        html = await page.text()
        assert page.status == 200 and link.prefix in html
        csrf = csrf_token(html)  # the sign-out form's: a valid token of this session
        r = await client.post(
            f"/tenants/{t.name}/setup-links", data={"csrf_token": csrf, "scope": "sso", "expires": "1d"}
        )
        assert r.status == 403 and "Only admins can create or revoke setup links" in await r.text()
        revoke_url = f"/tenants/{t.name}/setup-links/{link.id}/revoke"
        assert (await client.get(revoke_url)).status == 403
        r = await client.post(revoke_url, data={"csrf_token": csrf, "confirm": "yes"})
        assert r.status == 403
    assert await pool.fetchval("SELECT count(*) FROM setup_links") == 1
    assert await pool.fetchval("SELECT revoked_at FROM setup_links WHERE id = $1", link.id) is None
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE source_kind = 'staff'") == 0


async def test_another_tenants_link_id_is_not_found_and_never_revoked(service_env, pool):
    a = await make_tenant(pool)
    b = await make_tenant(pool)
    await make_staff(pool, "ada@example.com", "admin")
    theirs, _ = await new_link(pool, b.id)
    mine, _ = await new_link(pool, a.id)
    async with console_on_port() as client:
        await login(client, "ada@example.com")
        csrf = csrf_token(await (await client.get(f"/tenants/{a.name}/setup-links")).text())
        crossed = f"/tenants/{a.name}/setup-links/{theirs.id}/revoke"
        r = await client.get(crossed)
        assert r.status == 404 and "no setup link" in await r.text()
        r = await client.post(crossed, data={"csrf_token": csrf, "confirm": "yes"}, allow_redirects=False)
        assert r.status == 404
        # Its prefix in place of the id is no way round either.
        r = await client.post(
            f"/tenants/{a.name}/setup-links/{theirs.prefix}/revoke", data={"csrf_token": csrf, "confirm": "yes"}
        )
        assert r.status == 404
        for url in (
            "/tenants/no-such-tenant/setup-links",
            f"/tenants/no-such-tenant/setup-links/{mine.id}/revoke",
            f"/tenants/{a.name}/setup-links/{uuid.uuid4()}/revoke",
            f"/tenants/{a.name}/setup-links/not-a-uuid/revoke",
        ):
            r = await client.get(url)
            assert r.status == 404, url
            assert "Not found" in await r.text(), url
        # The other tenant's own URL does show it.
        assert theirs.prefix in await (await client.get(f"/tenants/{b.name}/setup-links")).text()
    assert await pool.fetchval("SELECT count(*) FROM setup_links WHERE revoked_at IS NOT NULL") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE source_kind = 'staff'") == 0


async def test_posts_without_the_sessions_csrf_token_are_refused(service_env, pool):
    t = await make_tenant(pool)
    await make_staff(pool, "ada@example.com", "admin")
    link, _ = await new_link(pool, t.id)
    async with console_on_port() as client:
        await login(client, "ada@example.com")
        revoke_url = f"/tenants/{t.name}/setup-links/{link.id}/revoke"
        for data in ({}, {"csrf_token": "forged"}):
            r = await client.post(f"/tenants/{t.name}/setup-links", data={**data, "scope": "sso", "expires": "1d"})
            assert r.status == 403 and "CSRF" in await r.text()
            r = await client.post(revoke_url, data={**data, "confirm": "yes"})
            assert r.status == 403 and "CSRF" in await r.text()
    assert await pool.fetchval("SELECT count(*) FROM setup_links") == 1
    assert await pool.fetchval("SELECT revoked_at FROM setup_links WHERE id = $1", link.id) is None
    # Signed out: a POST is refused before anything else.
    async with console_on_port() as client:
        r = await client.post(f"/tenants/{t.name}/setup-links", data={"scope": "sso", "expires": "1d"})
        assert r.status == 401
