"""`provisio dev`: the whole stack in one terminal, for a newcomer's machine.

Where PROVISIO_DATABASE_URL / PROVISIO_REDIS_URL are unset it starts embedded servers
with their data under ``data_dir`` (kept across restarts), applies migrations, seeds a
demo tenant, runs a mail catcher for the auditor, then runs the services of
:data:`SERVICES` as child processes. The banner comes once every service answers its
``/readyz``; the stack's URLs go to ``data_dir/dev.env`` (see :mod:`.devstack`), where
the CLI finds them. Ctrl-C stops everything (exit 0); a service that dies stops
everything too, and `provisio dev` exits 1 naming it and its port setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from provisio_lib import db
from provisio_lib.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedUnavailable, free_port
from provisio_lib.redis_client import connect_redis
from provisio_lib.tokens import generate_token, hash_token
from provisio_lib.topology import Topology, ensure_groups

from . import devstack
from .context import CliError

DEMO_TENANT = "demo"
DEV_REDIS_PORT = 16379
DEV_SMTP_PORT = 1025
READY_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class DevService:
    """One process of the stack. ``port_var`` names the setting of the port it answers
    ``/readyz`` on (its own listener, or its health listener for a worker); ``fallback_var``
    an older name the service still reads. ``banner``/``url``: its line in the banner."""

    module: str
    port_var: str
    default_port: int
    fallback_var: str | None = None
    banner: str | None = None
    url: str | None = None


# The stack, in start order. A new service is one more entry here.
SERVICES: tuple[DevService, ...] = (
    DevService("provisioner", "PROVISIO_PROVISIONER_HEALTH_PORT", 9101, fallback_var="PROVISIO_HEALTH_PORT"),
    DevService("auditor", "PROVISIO_AUDITOR_HEALTH_PORT", 9102, fallback_var="PROVISIO_HEALTH_PORT"),
    DevService("webhook_dispatcher", "PROVISIO_DISPATCHER_HEALTH_PORT", 9103, fallback_var="PROVISIO_HEALTH_PORT"),
    DevService(
        "scim_gateway", "PROVISIO_SCIM_PORT", 8081, banner="SCIM base URL", url="http://127.0.0.1:{port}/scim/v2"
    ),
    DevService(
        "saml_gateway",
        "PROVISIO_SAML_PORT",
        8082,
        banner="SAML gateway",
        url="http://127.0.0.1:{port}  (per connection: /saml/" + DEMO_TENANT + "/<connection>/metadata, /login, /acs)",
    ),
    DevService(
        "app_api",
        "PROVISIO_APP_API_PORT",
        8083,
        banner="App API",
        url="http://127.0.0.1:{port}/api/v1  (key: provisio api-key create --name dev)",
    ),
    DevService(
        "console",
        "PROVISIO_CONSOLE_PORT",
        8084,
        banner="Console",
        url="http://127.0.0.1:{port}  (staff accounts: provisio staff add EMAIL --role admin)",
    ),
)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def service_ports(env: dict[str, str]) -> dict[str, int]:
    """Each service's port from its own setting, else the older shared one, else the
    default; 0 ("any free port") becomes a real free port, so readiness can be asked.
    The chosen port is written back under the service's own name."""
    ports = {}
    for svc in SERVICES:
        raw = env.get(svc.port_var) or (env.get(svc.fallback_var) if svc.fallback_var else None)
        try:
            port = int(raw) if raw else svc.default_port
        except ValueError:
            raise CliError(f"{svc.port_var} is invalid: {raw!r} is not a port number") from None
        port = port or free_port()
        env[svc.port_var] = str(port)
        ports[svc.module] = port
    clash = [p for p in ports.values() if list(ports.values()).count(p) > 1]
    if clash:
        names = ", ".join(f"{s.port_var}={ports[s.module]}" for s in SERVICES if ports[s.module] in clash)
        raise CliError(f"two services would listen on the same port ({names}); give each its own")
    return ports


def derive_urls(env: dict[str, str], ports: dict[str, int]) -> None:
    """SP URLs follow PROVISIO_SAML_PORT unless PROVISIO_SAML_PUBLIC_URL says otherwise: in
    dev the gateway is reached on 127.0.0.1 at that port (metadata said 8082 before)."""
    if not env.get("PROVISIO_SAML_PUBLIC_URL"):
        env["PROVISIO_SAML_PUBLIC_URL"] = f"http://127.0.0.1:{ports['saml_gateway']}"
    # A developer's webhook receiver runs on this machine: loopback URLs are allowed in
    # dev (never private or link-local ones); the CLI gets the same value via dev.env.
    env.setdefault("PROVISIO_WEBHOOK_ALLOW_PRIVATE", "loopback")
    # The console's setup page shows the SCIM base URL (the gateway's own default, made explicit).
    if not env.get("PROVISIO_SCIM_PUBLIC_URL") and "scim_gateway" in ports:
        env["PROVISIO_SCIM_PUBLIC_URL"] = f"http://127.0.0.1:{ports['scim_gateway']}"


async def _prepare(dsn: str, redis_url: str, seed: bool, token_file: Path) -> tuple[str | None, str | None]:
    """Migrate, create the stream groups and (with seed) the demo tenant and its token.
    Returns (token, a note for the banner)."""
    conn = await db.connect(dsn)
    try:
        await db.migrate(conn)
        token, note = (await _demo_token(conn, token_file)) if seed else (None, None)
    finally:
        await conn.close()
    r = connect_redis(redis_url)
    try:
        await ensure_groups(r, Topology(prefix=os.environ.get("PROVISIO_REDIS_PREFIX", "provisio")))
    finally:
        await r.aclose()
    return token, note


async def _demo_token(conn: Any, token_file: Path) -> tuple[str, str | None]:
    """The demo token from the last run while the database still accepts it; else a new
    one (the previous 'dev' token revoked), said plainly."""
    tid = await conn.fetchval("SELECT id FROM tenants WHERE name = $1", DEMO_TENANT)
    if tid is None:
        tid = uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", tid, DEMO_TENANT)
    saved = token_file.read_text().strip() if token_file.is_file() else ""
    if saved and await conn.fetchval(
        "SELECT 1 FROM scim_tokens WHERE tenant_id = $1 AND token_hash = $2 AND revoked_at IS NULL",
        tid,
        hash_token(saved),
    ):
        return saved, None
    revoked = await conn.fetchval(
        "WITH r AS (UPDATE scim_tokens SET revoked_at = now() WHERE tenant_id = $1 AND label = 'dev'"
        " AND revoked_at IS NULL RETURNING 1) SELECT count(*) FROM r",
        tid,
    )
    token = generate_token()
    await conn.execute(
        "INSERT INTO scim_tokens (id, tenant_id, label, token_hash) VALUES ($1, $2, 'dev', $3)",
        uuid.uuid4(),
        tid,
        hash_token(token),
    )
    # Only the hash is in the database; the token itself stays here, readable by its owner.
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    note = None
    if saved or revoked:
        note = "this is a NEW demo token: the previous one no longer works"
    return token, note


class MailCatcher:
    """An SMTP server on loopback that writes each message it gets to ``folder`` as an
    .eml file (aiosmtpd's Controller runs it in its own thread)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self._seq = itertools.count(1)
        self._controller: Any = None

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's hook name)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = self.folder / f"{stamp}-{next(self._seq):04d}.eml"
        content = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        path.write_bytes(content)
        return "250 Message accepted for delivery"

    def start(self) -> None:
        try:
            from aiosmtpd.controller import Controller
        except ImportError:
            raise EmbeddedUnavailable("the mail catcher needs the dev extra: pip install 'provisio[dev]'") from None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def _pump(name: str, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        sys.stdout.write(f"{name:>13} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:  # noqa: S310 (loopback)
            return bool(resp.status == 200)
    except OSError:
        return False


def run_dev(data_dir: str, *, seed: bool) -> int:
    """Run the stack until Ctrl-C (0) or until a service dies (1)."""
    base = Path(data_dir).resolve()
    lock = devstack.StackLock(base)
    if not lock.acquire():
        pid = devstack.running_pid(base)
        env_file = base / devstack.ENV_FILE
        raise CliError(
            f"a Provisio dev stack is already running from {base} (pid {pid}); nothing was started. "
            f"Use it: the provisio CLI finds it by itself ({env_file}), the demo token is in "
            f"{base / devstack.TOKEN_FILE}. Or stop it first (Ctrl-C in its terminal)."
        )
    started: list[EmbeddedPostgres | EmbeddedRedis | MailCatcher] = []
    env = dict(os.environ)
    try:
        return _run(base, env, started, seed=seed)
    except EmbeddedUnavailable as err:
        raise CliError(str(err)) from None
    finally:
        for server in reversed(started):
            typer.echo(f"stopping {type(server).__name__.removeprefix('Embedded')} ...")
            server.stop()
        lock.release()


def _run(base: Path, env: dict[str, str], started: list[Any], *, seed: bool) -> int:
    ports = service_ports(env)
    busy = [s for s in SERVICES if not _port_free(ports[s.module])]
    if busy:
        raise CliError(
            "; ".join(
                f"port {ports[s.module]} ({s.port_var}, for {s.module}) is in use: stop what listens there "
                f"or set {s.port_var} to a free port"
                for s in busy
            )
        )
    derive_urls(env, ports)

    if not env.get("PROVISIO_DATABASE_URL"):
        pg = EmbeddedPostgres(base / "postgres")
        typer.echo(f"starting embedded Postgres (data in {pg.data_dir}) ...")
        env["PROVISIO_DATABASE_URL"] = pg.start()
        started.append(pg)
    if not env.get("PROVISIO_REDIS_URL"):
        port = DEV_REDIS_PORT if _port_free(DEV_REDIS_PORT) else free_port()
        rd = EmbeddedRedis(base / "redis", port=port)
        typer.echo(f"starting embedded Redis on 127.0.0.1:{port} (data in {rd.data_dir}) ...")
        env["PROVISIO_REDIS_URL"] = rd.start()
        started.append(rd)
    if env.get("PROVISIO_SMTP_HOST"):
        mail_note = f"sent to {env['PROVISIO_SMTP_HOST']}:{env.get('PROVISIO_SMTP_PORT') or 25} (PROVISIO_SMTP_HOST)"
    else:
        catcher = MailCatcher(base / devstack.MAIL_DIR, DEV_SMTP_PORT if _port_free(DEV_SMTP_PORT) else free_port())
        catcher.start()
        started.append(catcher)
        env.update(PROVISIO_SMTP_HOST="127.0.0.1", PROVISIO_SMTP_PORT=str(catcher.port))
        for name in ("PROVISIO_SMTP_TLS", "PROVISIO_SMTP_STARTTLS", "PROVISIO_SMTP_USER", "PROVISIO_SMTP_PASSWORD"):
            env.pop(name, None)
        mail_note = f"{catcher.folder}/*.eml (a mail catcher on 127.0.0.1:{catcher.port})"
    try:
        token, token_note = asyncio.run(
            _prepare(env["PROVISIO_DATABASE_URL"], env["PROVISIO_REDIS_URL"], seed, base / devstack.TOKEN_FILE)
        )
    except (OSError, db.SchemaError) as err:
        raise CliError(f"cannot prepare the database: {err}") from None

    env.setdefault("PROVISIO_LOG_FORMAT", "console")
    procs: list[tuple[DevService, subprocess.Popen[bytes]]] = []
    for svc in SERVICES:
        # Own session: Ctrl-C reaches only `provisio dev`, which stops the services
        # first (SIGTERM, graceful) and the embedded servers after them.
        proc = subprocess.Popen(
            [sys.executable, "-m", svc.module],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append((svc, proc))
        threading.Thread(target=_pump, args=(svc.module, proc), daemon=True).start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = 0
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop everything, exit 0
        code = _supervise(procs, ports, stop, lambda: _banner(base, env, ports, token, token_note, mail_note, started))
    typer.echo("stopping services ...")
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for _, proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return code


def _supervise(
    procs: list[tuple[DevService, subprocess.Popen[bytes]]], ports: dict[str, int], stop: threading.Event, on_ready: Any
) -> int:
    """Wait for every service's /readyz, then call ``on_ready``; return 1 as soon as a
    service exits (or is not up in time), 0 when asked to stop."""
    pending = {svc.module for svc, _ in procs}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not stop.is_set():
        for svc, proc in procs:
            if proc.poll() is not None:
                when = "before it was up" if svc.module in pending else "while running"
                typer.echo(
                    f"error: {svc.module} exited with code {proc.returncode} {when} (its last lines are above; "
                    f"it listens on port {ports[svc.module]}, set by {svc.port_var}: if that port is taken, "
                    "set it to a free one); stopping the stack",
                    err=True,
                )
                return 1
        if pending:
            pending = {m for m in pending if not _ready(ports[m])}
            if not pending:
                on_ready()
            elif time.monotonic() > deadline:
                typer.echo(
                    f"error: not ready after {READY_TIMEOUT_S:.0f} s: {', '.join(sorted(pending))} "
                    "(their /readyz does not answer 200; see the lines above); stopping the stack",
                    err=True,
                )
                return 1
        time.sleep(0.2)
    return 0


def _banner(
    base: Path,
    env: dict[str, str],
    ports: dict[str, int],
    token: str | None,
    token_note: str | None,
    mail_note: str,
    started: list[Any],
) -> None:
    shared = {k: env[k] for k in devstack.SHARED_VARS if env.get(k)}
    env_file = devstack.write_env(base, shared)
    embedded_pg = any(isinstance(s, EmbeddedPostgres) for s in started)
    embedded_rd = any(isinstance(s, EmbeddedRedis) for s in started)
    lines = ["", "Provisio is running (Ctrl-C stops everything):"]
    for svc in SERVICES:
        if svc.banner and svc.url:
            lines.append(f"  {svc.banner:<14}: {svc.url.format(port=ports[svc.module])}")
    lines.append(
        f"  {'Postgres':<14}: {'embedded, data in ' + str(base / 'postgres') if embedded_pg else 'PROVISIO_DATABASE_URL'}"
    )
    lines.append(
        f"  {'Redis':<14}: {('embedded, ' + env['PROVISIO_REDIS_URL']) if embedded_rd else 'PROVISIO_REDIS_URL'}"
    )
    lines.append(f"  {'Failure mail':<14}: {mail_note}")
    if token:
        lines.append(f"  {'Tenant':<14}: {DEMO_TENANT}")
        lines.append(f"  {'SCIM token':<14}: {token}  (kept in {base / devstack.TOKEN_FILE})")
        if token_note:
            lines.append(f"  {'':<14}  {token_note}")
        lines.append(
            f"  Try: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{ports['scim_gateway']}/scim/v2/Users"
        )
    lines.append(f"  The provisio CLI finds this stack by itself (from {env_file}); for other tools:")
    lines.extend(f"    {line}" for line in devstack.export_lines(shared))
    lines.append("")
    typer.echo("\n".join(lines))
