"""`provisio dev`: the whole stack in one terminal, for a newcomer's machine.

Where PROVISIO_DATABASE_URL / PROVISIO_REDIS_URL are unset it starts embedded servers
with their data under ``data_dir`` (kept across restarts), applies migrations, seeds a
demo tenant, then runs the four services as child processes and stops them all on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import typer

from provisio_lib import db
from provisio_lib.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedUnavailable, free_port
from provisio_lib.redis_client import connect_redis
from provisio_lib.tokens import generate_token, hash_token
from provisio_lib.topology import Topology, ensure_groups

from .context import CliError

SERVICE_MODULES = ("provisioner", "auditor", "scim_gateway", "saml_gateway", "console")
DEMO_TENANT = "demo"
DEV_REDIS_PORT = 16379


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def _prepare(dsn: str, redis_url: str, seed: bool) -> str | None:
    conn = await db.connect(dsn)
    try:
        await db.migrate(conn)
        token = None
        if seed:
            tid = await conn.fetchval("SELECT id FROM tenants WHERE name = $1", DEMO_TENANT)
            if tid is None:
                tid = uuid.uuid4()
                await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", tid, DEMO_TENANT)
            # A fresh token per run: tokens are stored hashed, so an old one cannot be shown.
            await conn.execute(
                "UPDATE scim_tokens SET revoked_at = now() WHERE tenant_id = $1 AND label = 'dev' AND revoked_at IS NULL",
                tid,
            )
            token = generate_token()
            await conn.execute(
                "INSERT INTO scim_tokens (id, tenant_id, label, token_hash) VALUES ($1, $2, 'dev', $3)",
                uuid.uuid4(), tid, hash_token(token),
            )
    finally:
        await conn.close()
    r = connect_redis(redis_url)
    try:
        await ensure_groups(r, Topology(prefix=os.environ.get("PROVISIO_REDIS_PREFIX", "provisio")))
    finally:
        await r.aclose()
    return token


def _pump(name: str, proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        sys.stdout.write(f"{name:>13} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def run_dev(data_dir: str, *, seed: bool) -> None:
    base = Path(data_dir).resolve()
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    env = dict(os.environ)
    try:
        _run(base, env, started, seed=seed)
    except EmbeddedUnavailable as err:
        raise CliError(str(err)) from None
    finally:
        for server in reversed(started):
            typer.echo(f"stopping embedded {type(server).__name__.removeprefix('Embedded')} ...")
            server.stop()


def _run(base: Path, env: dict[str, str], started: list[EmbeddedPostgres | EmbeddedRedis], *, seed: bool) -> None:
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
    try:
        token = asyncio.run(_prepare(env["PROVISIO_DATABASE_URL"], env["PROVISIO_REDIS_URL"], seed))
    except (OSError, db.SchemaError) as err:
        raise CliError(f"cannot prepare the database: {err}") from None

    env.setdefault("PROVISIO_LOG_FORMAT", "console")
    scim_port = env.get("PROVISIO_SCIM_PORT", "8081")
    saml_port = env.get("PROVISIO_SAML_PORT", "8082")
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    for module in SERVICE_MODULES:
        # Own session: Ctrl-C reaches only `provisio dev`, which stops the services
        # first (SIGTERM, graceful) and the embedded servers after them.
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append((module, proc))
        threading.Thread(target=_pump, args=(module, proc), daemon=True).start()

    typer.echo("")
    typer.echo("Provisio is running (Ctrl-C stops everything):")
    typer.echo(f"  SCIM base URL : http://127.0.0.1:{scim_port}/scim/v2")
    typer.echo(f"  SAML gateway  : http://127.0.0.1:{saml_port}  (per connection: /saml/{DEMO_TENANT}/<connection>/metadata, /login, /acs)")
    typer.echo(f"  Console       : http://127.0.0.1:{env.get('PROVISIO_CONSOLE_PORT', '8084')}  (staff accounts: provisio staff add EMAIL --role admin)")
    typer.echo(f"  Postgres      : {'embedded, ' + str(base / 'postgres') if any(isinstance(s, EmbeddedPostgres) for s in started) else 'PROVISIO_DATABASE_URL'}")
    typer.echo(f"  Redis         : {env['PROVISIO_REDIS_URL'] if any(isinstance(s, EmbeddedRedis) for s in started) else 'PROVISIO_REDIS_URL'}")
    if token:
        typer.echo(f"  Tenant        : {DEMO_TENANT}")
        typer.echo(f"  SCIM token    : {token}")
        typer.echo(f"  Try: curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{scim_port}/scim/v2/Users")
    typer.echo("")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            for name, proc in procs:
                if proc.poll() is not None:
                    typer.echo(f"{name} exited with code {proc.returncode}; stopping the stack", err=True)
                    stop.set()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
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
