"""Helpers for the webhook tests (not a test module): a real HTTP receiver on loopback
and the dispatcher, in process, on the test's database and Redis prefix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from provisio_lib.settings import load_settings
from webhook_dispatcher.app import Dispatcher
from webhook_dispatcher.settings import DispatcherSettings


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


Behaviour = Callable[["Receiver", Received], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 recording every request; ``behaviour`` decides
    the answer (default 200 "ok")."""

    behaviour: Behaviour | None = None
    requests: list[Received] = field(default_factory=list)
    delivered: list[Received] = field(default_factory=list)  # answered 2xx
    port: int = 0
    current_request: web.Request | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(dict(request.headers), await request.read(), asyncio.get_running_loop().time())
        self.current_request = request  # for behaviours that stream their answer
        self.requests.append(got)
        answer: Any = self.behaviour(self, got) if self.behaviour else web.Response(text="ok")
        if asyncio.iscoroutine(answer):
            answer = await answer
        if 200 <= answer.status < 300:
            self.delivered.append(got)
        return answer

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def events(self, *, delivered_only: bool = True) -> list[dict[str, Any]]:
        return [r.event for r in (self.delivered if delivered_only else self.requests)]


@asynccontextmanager
async def receiver(behaviour: Behaviour | None = None) -> AsyncIterator[Receiver]:
    r = await Receiver(behaviour).start()
    try:
        yield r
    finally:
        await r.stop()


FAST = {
    "health_port": 0,
    "webhook_allow_private": "loopback",
    "webhook_poll_s": 0.2,
    "webhook_backoff_base_s": 0.2,
    "webhook_backoff_max_s": 1.0,
    "webhook_timeout_s": 3.0,
    "webhook_metrics_interval_s": 0.5,
}


@asynccontextmanager
async def running_dispatcher(**overrides: Any) -> AsyncIterator[Dispatcher]:
    """The dispatcher in process (``service_env`` must be active)."""
    settings = load_settings(DispatcherSettings, **{**FAST, **overrides})
    d = Dispatcher(settings)
    async with d.running():
        yield d


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PROVISIO_WEBHOOK_ALLOW_PRIVATE": "loopback", **env},
        timeout=timeout,
    )


async def acli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread: the test's event loop keeps serving the receiver meanwhile."""
    return await asyncio.to_thread(cli, *args, env=env, timeout=timeout)
