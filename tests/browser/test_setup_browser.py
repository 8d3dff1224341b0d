"""Self-serve setup in a real browser (issue 14): a used and an expired setup link
refused; the wizard's pages; and a setup link end to end — open it, upload the test
IdP's metadata, test sign-in through the test IdP's real signed response (SAML gateway
and provisioner running), switch the connection on, create a SCIM token and make a real
SCIM call with it. Screenshots of each page go to the screenshots folder
(PROVISIO_SCREENSHOTS=docs/console refreshes the ones docs/console.md shows)."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from provisio_lib.admin import setup_links
from provisio_lib.settings import load_settings
from saml_gateway.app import create_app as create_gateway
from saml_gateway.settings import SamlSettings
from saml_idp_server import IdpServer
from tests.conftest import eventually, make_tenant, running_provisioner
from tests.console_support import console_on_port, free_port
from tests.integration.audit_support import running_auditor
from tests.integration.scim_helpers import USER, bearer, scim_client

from .conftest import shot

pytestmark = pytest.mark.integration


async def link(pool: Any, tid: uuid.UUID, scopes: tuple[str, ...] = ("sso", "scim")) -> str:
    async with pool.acquire() as conn:
        _l, token = await setup_links.create(conn, tid, scopes=list(scopes), ttl=timedelta(days=1), actor="cli:test")
    return token


@asynccontextmanager
async def gateway() -> AsyncIterator[str]:
    """The SAML gateway on a real loopback port whose URL is its public URL."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = load_settings(SamlSettings, saml_public_url=public, saml_connection_cache_s=0)
    server = TestServer(create_gateway(settings), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield public
    finally:
        await server.close()


async def test_a_used_and_an_expired_link_are_refused(service_env, pool, page):
    t = await make_tenant(pool, f"acme-{uuid.uuid4().hex[:6]}")
    used, expired = await link(pool, t.id), await link(pool, t.id)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE setup_links SET redeemed_at = now(), session_hash = 'x'::bytea WHERE token_hash = $1",
            setup_links._hash(used),
        )
        await conn.execute(
            "UPDATE setup_links SET expires_at = now() - interval '1 minute' WHERE token_hash = $1",
            setup_links._hash(expired),
        )
    async with console_on_port() as client:
        base = str(client.make_url("")).rstrip("/")
        resp = await page.goto(f"{base}/setup/open/{used}")
        assert resp.status == 410
        assert "opened already" in await page.get_by_role("alert").inner_text()
        await shot(page, "setup-link-used")
        resp = await page.goto(f"{base}/setup/open/{expired}")
        assert resp.status == 410
        assert "has expired" in await page.get_by_role("alert").inner_text()
        await shot(page, "setup-link-expired")
        resp = await page.goto(f"{base}/setup")
        assert resp.status == 401  # no setup session in this browser
    assert not [e for e in page.console_errors if "Content Security Policy" in e], page.console_errors


async def test_setup_link_end_to_end(service_env, pool, topology, page, tmp_path):
    t = await make_tenant(pool, f"acme-{uuid.uuid4().hex[:6]}")
    async with (
        IdpServer(preset="entra") as idp,
        gateway() as public,
        running_provisioner(),
        running_auditor(),
        console_on_port(saml_public_url=public, scim_public_url="https://scim.acme.example") as client,
    ):
        base = str(client.make_url("")).rstrip("/")
        token = await link(pool, t.id)
        await page.goto(f"{base}/setup/open/{token}")
        await shot(page, "setup-link-start")
        await page.get_by_role("button", name="Start setup in this browser").click()
        assert page.url == f"{base}/setup"  # the capability URL left the address bar at once
        assert t.name in await page.get_by_role("heading", level=1).inner_text()
        await shot(page, "setup-overview")

        await page.get_by_role("link", name="Set up a new SSO connection").click()
        await page.get_by_label("Microsoft Entra ID").check()
        await shot(page, "setup-choose-idp")
        await page.get_by_role("button", name="Next").click()
        assert (
            await page.get_by_role("heading", level=1).inner_text() == "Set up single sign-on with Microsoft Entra ID"
        )
        acs = f"{public}/saml/{t.name}/entra/acs"
        assert await page.locator("#v-acs").inner_text() == acs
        copy = page.get_by_role("button", name="Copy ACS URL (reply URL, single sign-on URL)")
        assert await copy.is_visible()  # console.js shows the copy buttons
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await copy.click()
        assert await page.evaluate("navigator.clipboard.readText()") == acs
        await shot(page, "setup-sso-values")

        md = tmp_path / "entra-metadata.xml"
        md.write_text(idp.idp.metadata())
        await page.get_by_label("Upload the metadata file (XML)").check()
        await page.locator("#metadata_file").set_input_files(str(md))
        await page.get_by_label("email required").check()
        await page.locator("#s4-h").scroll_into_view_if_needed()
        await shot(page, "setup-sso-mapping")
        await page.get_by_role("button", name=re.compile("Save the connection")).click()
        assert page.url == f"{base}/setup/sso/entra?notice=created"
        assert await page.get_by_role("status").inner_text() == (
            "The connection is saved. It is switched off until a test sign-in passes: test it now."
        )
        await shot(page, "setup-sso-connection")
        assert not await pool.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", t.id)
        # Switching on before a test: refused with the reason.
        await page.get_by_role("button", name="Switch on").click()
        assert "test" in (await page.get_by_role("alert").inner_text()).lower()
        await page.go_back()

        # The test sign-in: console → gateway (test mode) → test IdP → signed response →
        # gateway → back to the console's result page. Nothing is provisioned.
        await page.goto(f"{base}/setup/sso/entra")
        await page.get_by_role("button", name="Test sign-in").click()
        await page.wait_for_url(re.compile(re.escape(f"{base}/setup/sso/entra/result?test=")))
        heading = await page.get_by_role("heading", level=1).inner_text()
        assert heading.endswith("passed"), heading + await page.content()
        content = await page.content()
        assert idp.idp.entity_id in content and "alice@acme.test" in content
        assert "Create a new user" in content and "Groups added: Sales, Engineering" in content
        assert await page.locator("td.bad").count() == 0  # every check passed
        await shot(page, "setup-test-result")
        assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", t.id) == 0

        await page.get_by_role("button", name="Switch the connection on").click()
        assert (
            await page.get_by_role("status").inner_text() == "The connection is on: your users can sign in through it."
        )
        assert await pool.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", t.id)

        # SCIM: a token shown once, then a real SCIM call with it.
        await page.get_by_role("navigation", name="Setup").get_by_role("link", name="Provisioning (SCIM)").click()
        await page.get_by_role("button", name="Create a SCIM token").click()
        scim_token = await page.locator("#new-token").inner_text()
        assert scim_token.startswith("prv_")
        await shot(page, "setup-scim-token")
        async with scim_client() as scim:
            r = await scim.post(
                "/scim/v2/Users",
                headers=bearer(scim_token),
                json={"schemas": [USER], "userName": "bob@acme.test", "emails": [{"value": "bob@acme.test"}]},
            )
            assert r.status == 201, await r.text()

        async def logged() -> bool:
            n = await pool.fetchval(
                "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND user_name = 'bob@acme.test'", t.id
            )
            return bool(n)

        await eventually(logged, timeout=15)
        await page.goto(f"{base}/setup/scim")
        await page.locator("#log-h").scroll_into_view_if_needed()
        assert "bob@acme.test" in await page.locator("#log-h + table").inner_text()
        await shot(page, "setup-scim-log")
    assert (
        await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1 AND user_name = 'bob@acme.test'", t.id)
        == 1
    )
    assert not [e for e in page.console_errors if "Content Security Policy" in e], page.console_errors
