"""`provisio dev` starts the whole stack, serves SCIM end to end, and stops cleanly."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from email.message import EmailMessage

import aiohttp
import aiosmtplib
import pytest

from provisio_cli import dev
from provisio_lib import db
from provisio_lib.embedded import free_port
from provisio_lib.tokens import hash_token

pytestmark = pytest.mark.integration

BANNER_END = re.compile(r"^\s*export PROVISIO_SAML_PUBLIC_URL=")


def _dev_env(service_env, tmp_path, **extra):
    env = {
        **os.environ,
        **service_env,
        "PROVISIO_DEV_DIR": str(tmp_path),
        "PROVISIO_LOG_FORMAT": "json",
        "PROVISIO_SCIM_PORT": str(free_port()),
        "PROVISIO_SAML_PORT": str(free_port()),
        "PROVISIO_APP_API_PORT": str(free_port()),
        "PROVISIO_CONSOLE_PORT": str(free_port()),
    }
    # The older shared name, 0: `provisio dev` gives each worker its own free health port.
    env["PROVISIO_HEALTH_PORT"] = "0"
    for name in (
        "PROVISIO_PROVISIONER_HEALTH_PORT",
        "PROVISIO_AUDITOR_HEALTH_PORT",
        "PROVISIO_DISPATCHER_HEALTH_PORT",
        "PROVISIO_WEBHOOK_ALLOW_PRIVATE",
        "PROVISIO_SMTP_HOST",
        "PROVISIO_SAML_PUBLIC_URL",
    ):
        env.pop(name, None)
    env.update(extra)
    return env


def _start(env):
    return subprocess.Popen(
        [sys.executable, "-m", "provisio_cli", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _read_banner(proc, lines):
    """Lines up to the banner's last export line (or the end of the output)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if BANNER_END.match(line):
            break
    return "".join(lines)


def _stop(proc, lines):
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does to the foreground group
    out, _ = proc.communicate(timeout=40)
    lines.append(out)
    return "".join(lines)


def _cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def _create_user(scim, token, name):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{scim}/scim/v2/Users", json=body, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


async def test_dev_runs_the_stack_and_stops_on_ctrl_c(service_env, tmp_path):
    env = _dev_env(service_env, tmp_path)
    scim, saml = env["PROVISIO_SCIM_PORT"], env["PROVISIO_SAML_PORT"]
    proc = _start(env)
    lines: list[str] = []
    try:
        banner = _read_banner(proc, lines)
        token = re.search(r"SCIM token\s*:\s*(\S+)", banner)
        assert token, banner
        token = token.group(1)
        assert f"http://127.0.0.1:{scim}/scim/v2" in banner
        assert f"http://127.0.0.1:{env['PROVISIO_APP_API_PORT']}/api/v1" in banner  # ready: the banner waits for it
        # The banner comes once the services answer: no waiting for a port here.
        status, created = await _create_user(scim, token, "dev@demo.test")
        assert status == 201, created
        assert created["userName"] == "dev@demo.test"

        # The exact export lines, and the same values in .provisio/dev.env for the CLI.
        assert f"export PROVISIO_SAML_PUBLIC_URL=http://127.0.0.1:{saml}" in banner
        assert "export PROVISIO_DATABASE_URL=" in banner and "export PROVISIO_REDIS_URL=" in banner
        stack = dict(line.split("=", 1) for line in (tmp_path / "dev.env").read_text().splitlines())
        assert stack["PROVISIO_DATABASE_URL"] == service_env["PROVISIO_DATABASE_URL"]
        assert stack["PROVISIO_SAML_PUBLIC_URL"] == f"http://127.0.0.1:{saml}"
        assert stack["PROVISIO_WEBHOOK_ALLOW_PRIVATE"] == "loopback"  # a receiver on this machine
        assert (tmp_path / "demo-token").read_text().strip() == token

        # The CLI with no PROVISIO_DATABASE_URL finds the running stack, and says so.
        cli_env = {k: v for k, v in env.items() if k not in ("PROVISIO_DATABASE_URL", "PROVISIO_REDIS_URL")}
        run = _cli(cli_env, "tenant", "list", "--json")
        assert run.returncode == 0, run.stderr
        assert '"name": "demo"' in run.stdout
        assert f"using the running `provisio dev` stack ({tmp_path / 'dev.env'})" in run.stderr

        # A second `provisio dev` sees the first and leaves it alone (its token still works).
        second = subprocess.run(
            [sys.executable, "-m", "provisio_cli", "dev"], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already running" in second.stderr and str(proc.pid) in second.stderr
        assert "Provisio is running" not in second.stdout
        status, _ = await _create_user(scim, token, "dev2@demo.test")
        assert status == 201

        # Mail goes to the catcher, which keeps each message as an .eml file.
        mail = re.search(r"Failure mail\s*:\s*(\S+)/\*\.eml \(a mail catcher on 127\.0\.0\.1:(\d+)\)", banner)
        assert mail, banner
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "provisio@localhost", "ops@demo.test", "caught"
        msg.set_content("hello")
        await aiosmtplib.send(msg, hostname="127.0.0.1", port=int(mail.group(2)), timeout=10)
        [eml] = list((tmp_path / "mail").glob("*.eml"))
        assert b"Subject: caught" in eml.read_bytes()
    finally:
        text = _stop(proc, lines)
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    assert "provisioner_stopped" in text and "auditor_stopped" in text
    assert "webhook_dispatcher_stopped" in text
    assert not (tmp_path / "dev.env").exists()

    # A restart keeps the demo token: what was given out still works.
    proc = _start(env)
    lines = []
    try:
        banner = _read_banner(proc, lines)
        assert f"SCIM token    : {token}" in banner, banner
        assert "NEW demo token" not in banner
        status, _ = await _create_user(scim, token, "dev3@demo.test")
        assert status == 201
    finally:
        text = _stop(proc, lines)
    assert proc.returncode == 0, text


async def test_demo_token_lost_means_a_new_one_said_plainly(database_url, tmp_path):
    conn = await db.connect(database_url)
    try:
        token_file = tmp_path / "demo-token"
        first, note = await dev._demo_token(conn, token_file)
        assert note is None
        assert await dev._demo_token(conn, token_file) == (first, None)
        token_file.unlink()
        second, note = await dev._demo_token(conn, token_file)
        assert second != first and "NEW demo token" in note and "no longer works" in note
        assert token_file.read_text().strip() == second
        # Only the hash is in the database; the old token is revoked.
        rows = await conn.fetch("SELECT token_hash, revoked_at FROM scim_tokens WHERE label = 'dev'")
        assert {bytes(r["token_hash"]): r["revoked_at"] is None for r in rows} == {
            hash_token(first): False,
            hash_token(second): True,
        }
    finally:
        await conn.close()


async def test_dev_exits_non_zero_naming_the_service_that_died(service_env, tmp_path):
    # The SAML gateway refuses this setting and exits at start.
    env = _dev_env(service_env, tmp_path, PROVISIO_SAML_CLOCK_SKEW_S="99999")
    run = subprocess.run(
        [sys.executable, "-m", "provisio_cli", "dev"], env=env, capture_output=True, text=True, timeout=120
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "error: saml_gateway exited with code 1 before it was up" in run.stderr
    assert "PROVISIO_SAML_PORT" in run.stderr
    assert "PROVISIO_SAML_CLOCK_SKEW_S is invalid" in out  # the service's own line, shown above
    assert "Provisio is running" not in out
    assert "Traceback" not in out


async def test_dev_names_the_setting_of_a_taken_port(service_env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _dev_env(service_env, tmp_path, PROVISIO_SCIM_PORT=str(port))
        run = subprocess.run(
            [sys.executable, "-m", "provisio_cli", "dev"], env=env, capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"port {port} (PROVISIO_SCIM_PORT, for scim_gateway) is in use" in run.stderr
    assert "starting" not in run.stdout  # nothing was started
