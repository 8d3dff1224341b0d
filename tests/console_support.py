"""Helpers for the console's tests (tests/integration/test_console*.py, tests/browser)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog.testing
from aiohttp.test_utils import TestClient, TestServer

from console.app import create_app
from console.settings import ConsoleSettings
from provisio_lib.admin import staff as staff_admin
from provisio_lib.settings import load_settings

PASSWORD = "correct horse battery staple"
_FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@asynccontextmanager
async def console_client(**overrides: Any) -> AsyncIterator[TestClient]:
    """The console on this test's database and Redis prefix (``service_env`` must be
    active), on a real loopback port. Fails the test if a request hit the 500 handler."""
    settings = load_settings(ConsoleSettings, **{"console_secret_key": "k" * 40, **overrides})
    app = create_app(settings)
    with structlog.testing.capture_logs() as logs:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client
    unhandled = [e for e in logs if e.get("event") == "unhandled_error"]
    assert not unhandled, f"requests hit the catch-all 500 handler: {unhandled}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def console_on_port(**overrides: Any) -> AsyncIterator[TestClient]:
    """The console on a loopback port known in advance, that port's URL its public URL
    (where setup links point and a test sign-in returns to)."""
    port = free_port()
    settings = load_settings(
        ConsoleSettings,
        **{"console_secret_key": "k" * 40, "console_public_url": f"http://127.0.0.1:{port}", **overrides},
    )
    with structlog.testing.capture_logs() as logs:
        async with TestClient(TestServer(create_app(settings), host="127.0.0.1", port=port)) as client:
            try:
                yield client
            except AssertionError:
                unhandled = [e for e in logs if e.get("event") == "unhandled_error"]
                if unhandled:  # the traceback behind a 500 the test saw
                    raise AssertionError(f"requests hit the catch-all 500 handler: {unhandled}") from None
                raise
    unhandled = [e for e in logs if e.get("event") == "unhandled_error"]
    assert not unhandled, f"requests hit the catch-all 500 handler: {unhandled}"


async def make_staff(pool: asyncpg.Pool, email: str, role: str, password: str = PASSWORD) -> staff_admin.Staff:
    """An account with its password set through its one-time link (the real path)."""
    async with pool.acquire() as conn:
        _s, token = await staff_admin.add(conn, email, role)
        return await staff_admin.set_password(conn, token, password)


def form_token(html: str) -> str:
    m = _FORM_TOKEN.search(html)
    assert m, "no form_token in the page"
    return m.group(1)


def csrf_token(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "no csrf_token in the page"
    return m.group(1)


async def login(client: TestClient, email: str, password: str = PASSWORD, code: str = "") -> Any:
    page = await client.get("/login")
    token = form_token(await page.text())
    return await client.post(
        "/login", data={"form_token": token, "email": email, "password": password, "code": code}, allow_redirects=False
    )
