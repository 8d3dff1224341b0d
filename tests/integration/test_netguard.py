"""The pinned resolver (provisio_lib.netguard) against a real HTTP server on 127.0.0.1,
reached by the name ``localhost`` through the machine's own resolver: the name is
resolved, vetted by the setting, and connected to on the vetted address; where the
setting forbids that address the server never sees a connection. Both callers (webhook
delivery, the console's metadata download) go through it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from provisio_lib import netguard_http, webhook_http, webhooks
from provisio_lib.admin import connections
from provisio_lib.admin.errors import AdminError

pytestmark = pytest.mark.integration


@dataclass
class Server:
    port: int
    # Where each request arrived: the server socket's own address, i.e. the address the
    # client dialled.
    seen: list[tuple[str, int]] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"http://localhost:{self.port}{path}"


@asynccontextmanager
async def server() -> AsyncIterator[Server]:
    app = web.Application()
    srv: Server | None = None

    async def handle(request: web.Request) -> web.Response:
        assert srv is not None and request.transport is not None
        srv.seen.append(tuple(request.transport.get_extra_info("sockname")[:2]))
        return web.Response(text="<md/>")

    app.router.add_route("*", "/{tail:.*}", handle)
    async with TestServer(app, host="127.0.0.1") as ts:
        assert ts.port is not None
        srv = Server(ts.port)
        yield srv


class Refused(OSError):
    pass


def refused(host: str, addresses: list[str]) -> OSError:
    return Refused(f"{host} resolves to {', '.join(addresses)}")


async def test_a_name_is_contacted_on_the_address_it_was_vetted_for():
    resolved: list[str] = []
    trace = aiohttp.TraceConfig()

    async def on_resolve(_session, _ctx, params) -> None:
        resolved.append(params.host)

    trace.on_dns_resolvehost_start.append(on_resolve)
    async with server() as srv:
        resolver = netguard_http.PinnedResolver("loopback", refused)
        vetted = [r["host"] for r in await resolver.resolve("localhost", srv.port, socket.AF_INET)]
        assert vetted == ["127.0.0.1"]  # /etc/hosts: localhost is 127.0.0.1 (and ::1 where IPv6 is up)
        connector = aiohttp.TCPConnector(resolver=resolver, family=socket.AF_INET)
        async with (
            aiohttp.ClientSession(connector=connector, trust_env=False, trace_configs=[trace]) as session,
            session.get(srv.url("/pinned")) as resp,
        ):
            assert resp.status == 200 and await resp.text() == "<md/>"
    assert resolved == ["localhost"]  # the name went through the pinned resolver ...
    assert srv.seen == [("127.0.0.1", srv.port)]  # ... and was dialled on the vetted address


async def test_the_same_name_under_none_never_reaches_the_server():
    async with server() as srv:
        connector = aiohttp.TCPConnector(resolver=netguard_http.PinnedResolver("none", refused))
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            with pytest.raises(aiohttp.ClientConnectorError) as err:
                await session.get(srv.url())
    assert isinstance(err.value.os_error, Refused) and str(err.value.os_error) == "localhost resolves to 127.0.0.1"
    assert srv.seen == []


def webhook_settings(allow: str) -> webhook_http.WebhookClientSettings:
    return webhook_http.WebhookClientSettings(
        database_url="postgresql://unused/x", redis_url="redis://unused/0", webhook_allow_private=allow
    )


async def deliver(url: str, allow: str) -> webhook_http.Answer:
    event = webhooks.test_event("ep", "acme", None, datetime.now(UTC))
    settings = webhook_settings(allow)
    async with webhook_http.make_session(settings) as session:
        return await webhook_http.post_event(session, url, event, [webhooks.new_secret()], settings)


async def test_webhook_delivery_by_name_goes_through_the_pinned_resolver():
    async with server() as srv:
        refused_answer = await deliver(srv.url("/hook"), "none")
        assert srv.seen == []
        delivered = await deliver(srv.url("/hook"), "loopback")
        assert srv.seen == [("127.0.0.1", srv.port)]
    assert not refused_answer.ok and refused_answer.status is None
    assert (refused_answer.error or "").startswith(
        "connection failed: localhost resolves to a loopback address (127.0.0.1), which webhooks may not reach"
    ), refused_answer.error
    assert delivered.ok and delivered.status == 200 and delivered.error is None, delivered


async def test_console_metadata_download_by_name_goes_through_the_pinned_resolver():
    async with server() as srv:
        with pytest.raises(AdminError, match=r"'localhost' resolves to 127\.0\.0\.1, a private or local address"):
            await connections.fetch_metadata(srv.url("/md"))
        assert srv.seen == []
        assert await connections.fetch_metadata(srv.url("/md"), allow_private=True) == b"<md/>"
        assert srv.seen == [("127.0.0.1", srv.port)]
