"""A test login in a real browser (issue 14): Chromium follows the gateway's test-mode
login URL to the test IdP (tests/saml_idp_server.py, over HTTP), whose auto-submitting
form POSTs a real signed response to the ACS; the gateway verifies it, asks the
provisioner for a dry run and sends the browser back to the page that started the test,
which shows the result. Nothing is provisioned."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from html import escape
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from provisio_lib.admin import sso_test
from provisio_lib.settings import load_settings
from saml_gateway.app import create_app
from saml_gateway.settings import SamlSettings
from saml_idp_server import IdpServer
from saml_setup import add_connection
from tests.conftest import make_tenant, running_provisioner

from .conftest import shot

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def gateway_server() -> AsyncIterator[str]:
    """The SAML gateway on a real loopback port whose URL is its public URL."""
    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    settings = load_settings(SamlSettings, saml_public_url=public, saml_connection_cache_s=0)
    server = TestServer(create_app(settings), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield public
    finally:
        await server.close()


@asynccontextmanager
async def result_page(pool: Any, tenant_id: uuid.UUID) -> AsyncIterator[str]:
    """A stand-in for the console's setup page: shows a test's result by its id."""

    async def show(request: web.Request) -> web.Response:
        async with pool.acquire() as conn:
            r = await sso_test.get_result(conn, tenant_id, uuid.UUID(request.query["test"]))
        if r is None:
            raise web.HTTPNotFound()
        rows = "".join(
            f"<li class={'ok' if c.ok else 'failed'}>{escape(c.name)} {escape(c.reason or '')}</li>" for c in r.checks
        )
        p = r.preview
        body = (
            f"<h1>Test login: <span id=status>{r.status}</span></h1>"
            f"<p id=issuer>{escape(r.received.issuer or '') if r.received else ''}</p>"
            f"<p id=nameid>{escape(r.received.name_id or '') if r.received else ''}</p>"
            f"<p id=action>{p.action if p else ''}</p>"
            f"<p id=groups>{escape(', '.join(sorted(p.groups_added))) if p else ''}</p>"
            f"<ul>{rows}</ul>"
        )
        return web.Response(text=f"<!doctype html><title>Test login</title>{body}", content_type="text/html")

    app = web.Application()
    app.router.add_get("/setup/t/sso", show)
    port = _free_port()
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.close()


@pytest.mark.parametrize("encrypt", [False, True])
async def test_test_login_round_trip_in_a_browser(service_env, pool, topology, page, encrypt):
    t = await make_tenant(pool, f"acme-{uuid.uuid4().hex[:6]}")
    async with (
        IdpServer(preset="entra") as idp,
        gateway_server() as public,
        result_page(pool, t.id) as console,
        running_provisioner(),
    ):
        idp.user.encrypt = encrypt
        await add_connection(pool, t.id, "entra", jit="sync", idp=idp.idp)
        await pool.execute("UPDATE sso_connections SET enabled = false WHERE tenant_id = $1", t.id)
        urls = sso_test.TestLoginSettings(saml_public_url=public, console_public_url=console)
        async with pool.acquire() as conn:
            start = await sso_test.start_test(
                conn, t.id, "entra", return_to="/setup/t/sso", actor="admin@acme.test", settings=urls
            )
        await page.goto(start.login_url)
        await page.wait_for_url(f"{console}/setup/t/sso?test={start.test_id}")
        assert await page.locator("#status").inner_text() == "passed"
        assert await page.locator("#issuer").inner_text() == idp.idp.entity_id
        assert await page.locator("#nameid").inner_text() == "alice@acme.test"
        assert await page.locator("#action").inner_text() == "create"
        assert await page.locator("#groups").inner_text() == "Engineering, Sales"
        assert await page.locator("li.failed").count() == 0
        await shot(page, f"test-login-result{'-encrypted' if encrypt else ''}")
        assert idp.requests and idp.requests[0]["relay_state"] == f"provisio-test:{start.test_id}"
        assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", t.id) == 0

        # A real login through the same IdP is refused while the connection is disabled.
        await page.goto(f"{public}/saml/{t.name}/entra/login")
        assert "not enabled yet" in await page.content()


# ------------------------------------------------------------------ through the setup wizard

RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"


@asynccontextmanager
async def console_server(saml_public_url: str) -> AsyncIterator[str]:
    """The web console on a real loopback port whose URL is its public URL (where a test
    sign-in returns to)."""
    from console.app import create_app as create_console
    from console.settings import ConsoleSettings

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    settings = load_settings(
        ConsoleSettings, console_secret_key="k" * 40, console_public_url=base, saml_public_url=saml_public_url
    )
    server = TestServer(create_console(settings), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield base
    finally:
        await server.close()


async def test_setup_link_test_sign_in_enable_then_real_sign_in(service_env, pool, topology, page, tmp_path):
    """The customer's admin, alone: opens the setup link, uploads the IdP's metadata,
    tests (a weak signature first: refused, with why; the connection cannot be switched
    on), fixes the IdP, tests again (passed: what a real sign-in would do), switches the
    connection on, and a real sign-in then creates the user."""
    from provisio_lib.admin import setup_links

    t = await make_tenant(pool, f"acme-{uuid.uuid4().hex[:6]}")
    async with pool.acquire() as conn:
        _, token = await setup_links.create(conn, t.id, scopes=["sso"], ttl=timedelta(days=1), actor="cli:test")
    async with (
        IdpServer(preset="entra") as idp,
        gateway_server() as public,
        console_server(public) as console,
        running_provisioner(),
    ):
        metadata = tmp_path / "idp-metadata.xml"
        metadata.write_text(idp.idp.metadata())
        await page.goto(f"{console}/setup/open/{token}")
        if not page.url.endswith("/setup"):  # a landing page whose button spends the link
            await page.locator("button[type=submit]").first.click()
            await page.wait_for_url(f"{console}/setup")
        await page.goto(f"{console}/setup/sso/new?idp=entra&name=entra")
        await page.set_input_files("#metadata_file", str(metadata))
        await page.get_by_label("sync: also update").check()
        await page.get_by_role("button", name="Save the connection").click()
        await page.wait_for_url(f"{console}/setup/sso/entra?notice=created")
        assert await pool.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", t.id) is False

        # 1. The IdP signs with RSA-SHA1: the test fails, saying which check and why.
        idp.user.response_kw = {"sign_alg": RSA_SHA1, "digest_alg": SHA1}
        await page.get_by_role("button", name="Test sign-in").click()
        await page.wait_for_url(f"{console}/setup/sso/entra/result?test=*")
        assert "failed" in await page.get_by_role("heading", level=1).inner_text()
        assert "RSA-SHA1" in await page.get_by_role("alert").inner_text()
        assert idp.idp.entity_id in await page.content()  # what was received, though refused
        await shot(page, "setup-sso-test-failed")
        await page.goto(f"{console}/setup/sso/entra")
        await page.get_by_role("button", name="Switch on").click()
        assert "no successful test login" in await page.content()
        assert await pool.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", t.id) is False

        # 2. Fixed at the IdP: the test passes and shows what a real sign-in would do.
        idp.user.response_kw = {}
        await page.goto(f"{console}/setup/sso/entra")
        await page.get_by_role("button", name="Test sign-in").click()
        await page.wait_for_url(f"{console}/setup/sso/entra/result?test=*")
        assert "passed" in await page.get_by_role("heading", level=1).inner_text()
        text = await page.content()
        assert "Create a new user" in text and "alice@acme.test" in text
        assert "Engineering, Sales" in text or "Sales, Engineering" in text
        await shot(page, "setup-sso-test-passed")
        assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", t.id) == 0

        # 3. Switched on; a real sign-in through the same IdP now creates the user.
        await page.get_by_role("button", name="Switch the connection on").click()
        await page.wait_for_url(f"{console}/setup/sso/entra?notice=enabled")
        assert await pool.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", t.id) is True
        await page.goto(f"{public}/saml/{t.name}/entra/login")
        await page.wait_for_load_state()
        assert "Signed in" in await page.content()
        assert await pool.fetchval("SELECT user_name FROM users WHERE tenant_id = $1", t.id) == "alice@acme.test"
