"""The staff console's setup-link pages in a real browser: an admin creates a link from
the tenant's row, copies it with the copy button, the customer opens it in another
browser context (its own cookies) and starts setup; the admin sees it in use, revokes
it after the confirmation page, and the customer's session ends and the link is
refused. Screenshots go to the screenshots folder (PROVISIO_SCREENSHOTS=docs/console
refreshes the ones docs/console.md shows)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from provisio_lib.admin import setup_links
from tests.conftest import make_tenant
from tests.console_support import console_on_port, make_staff

from .conftest import shot
from .test_console_browser import sign_in

pytestmark = pytest.mark.integration


async def test_an_admin_creates_a_link_the_customer_opens_it_then_it_is_revoked(service_env, pool, page):
    t = await make_tenant(pool, f"acme-{uuid.uuid4().hex[:6]}")
    await make_staff(pool, "ada@example.com", "admin")
    async with pool.acquire() as conn:  # older links made at the terminal: one left to expire, one revoked
        old, _ = await setup_links.create(conn, t.id, scopes=["sso"], ttl=timedelta(days=1), actor="cli:ops")
        await conn.execute("UPDATE setup_links SET expires_at = now() - interval '1 hour' WHERE id = $1", old.id)
        gone, _ = await setup_links.create(conn, t.id, scopes=["sso", "scim"], ttl=timedelta(days=7), actor="cli:ops")
        await setup_links.revoke(conn, gone.prefix, actor="cli:ops")
    async with console_on_port() as client:
        base = str(client.make_url("")).rstrip("/")
        await sign_in(page, base, "ada@example.com")
        await page.locator("tbody tr", has_text=t.name).get_by_role("link", name="Setup links").click()
        await page.wait_for_load_state()
        assert await page.get_by_role("heading", level=1).inner_text() == f"Setup links of {t.name}"
        assert "expired" in await page.locator("tbody tr", has_text=old.prefix).inner_text()

        await page.get_by_label("Single sign-on (SSO)").uncheck()
        await page.get_by_label("Expires after").fill("2d")
        await page.get_by_role("button", name="Create the link").click()
        await page.wait_for_load_state()
        url = await page.locator("#setup-url").inner_text()
        assert url.startswith(f"{base}/setup/open/psl_")
        copy = page.get_by_role("button", name="Copy the setup link")
        assert await copy.is_visible()  # console.js shows the copy button
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await copy.click()
        copied = await page.evaluate("navigator.clipboard.readText()")
        assert copied == url
        await shot(page, "setup-link-created")
        prefix = url.rsplit("/", 1)[1][:12]

        # The customer: another browser context, so none of the staff member's cookies.
        customer = await page.context.browser.new_context()
        try:
            theirs = await customer.new_page()
            await theirs.goto(copied)
            assert await theirs.get_by_role("heading", level=1).inner_text() == f"Set up Provisio for {t.name}"
            await theirs.get_by_role("button", name="Start setup in this browser").click()
            assert theirs.url == f"{base}/setup"
            setup_nav = theirs.get_by_role("navigation", name="Setup")
            assert await setup_nav.get_by_role("link", name="Single sign-on (SAML)").count() == 0  # SCIM only
            await setup_nav.get_by_role("link", name="Provisioning (SCIM)").click()
            await theirs.get_by_role("button", name="Create a SCIM token").click()
            assert (await theirs.locator("#new-token").inner_text()).startswith("prv_")

            await page.get_by_role("link", name=f"Back to the setup links of {t.name}").click()
            await page.wait_for_load_state()
            row = page.locator("tbody tr", has_text=prefix)
            text = await row.inner_text()
            assert "in use" in text and "staff:ada@example.com" in text
            assert "scim_token.create × 1" in text  # what its session did, from the audit trail
            await shot(page, "setup-links")
            await row.get_by_role("link", name=f"Revoke {prefix}").click()
            await page.wait_for_load_state()
            await page.get_by_label(f"Yes, revoke {prefix}…").check()
            await shot(page, "setup-link-revoke")
            await page.get_by_role("button", name="Revoke").click()
            await page.wait_for_load_state()
            assert "The setup link is revoked" in await page.get_by_role("status").inner_text()
            assert "revoked" in await page.locator("tbody tr", has_text=prefix).inner_text()

            resp = await theirs.goto(f"{base}/setup")
            assert resp is not None and resp.status == 401
            assert "setup session has ended" in await theirs.get_by_role("alert").inner_text()
            resp = await theirs.goto(copied)
            assert resp is not None and resp.status == 410
            assert "was revoked" in await theirs.get_by_role("alert").inner_text()
        finally:
            await customer.close()
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE operation = 'setup_link.revoke' AND source_kind = 'staff'")
    assert row["source_label"] == "ada@example.com" and any(prefix in n for n in row["notes"])
    assert not [e for e in page.console_errors if "Content Security Policy" in e], page.console_errors
