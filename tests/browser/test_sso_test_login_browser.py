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
