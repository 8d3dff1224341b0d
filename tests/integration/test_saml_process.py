"""`python -m saml_gateway` as a process: starts, is ready, stops cleanly on SIGTERM;
bad settings or an unmigrated database are one line on stderr."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serves_and_stops_on_sigterm(service_env: dict[str, str]) -> None:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        **service_env,
        "PROVISIO_SAML_PORT": str(port),
        "PROVISIO_SAML_HOST": "127.0.0.1",
        "PROVISIO_SAML_METRICS_PORT": str(metrics_port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "saml_gateway"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        ready = False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            ready = True
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assert ready, proc.stderr.read1().decode() if proc.stderr else ""
            async with http.get(f"http://127.0.0.1:{port}/saml/nope/nope/metadata") as resp:
                assert resp.status == 404
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 404  # public port: no metrics
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert "provisio_http_requests" in await resp.text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_settings_and_unmigrated_database(service_env: dict[str, str], empty_database_url: str) -> None:
    env = {**os.environ, **service_env}
    bad = subprocess.run(
        [sys.executable, "-m", "saml_gateway"],
        env={**env, "PROVISIO_SAML_CLOCK_SKEW_S": "-1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: PROVISIO_SAML_CLOCK_SKEW_S is invalid")
    assert "Traceback" not in bad.stderr
    empty = subprocess.run(
        [sys.executable, "-m", "saml_gateway"],
        env={**env, "PROVISIO_DATABASE_URL": empty_database_url, "PROVISIO_SAML_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert empty.returncode == 1 and "Traceback" not in empty.stderr
    assert empty.stderr.strip().splitlines()[-1].startswith("error: database is missing migration")
