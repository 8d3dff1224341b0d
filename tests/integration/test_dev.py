"""`provisio dev` starts the whole stack, serves SCIM end to end, and stops cleanly."""

import os
import re
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from provisio_lib.embedded import free_port

pytestmark = pytest.mark.integration


async def test_dev_runs_the_stack_and_stops_on_ctrl_c(service_env, tmp_path):
    scim, saml = free_port(), free_port()
    env = {**os.environ, **service_env, "PROVISIO_SCIM_PORT": str(scim), "PROVISIO_SAML_PORT": str(saml),
           "PROVISIO_DEV_DIR": str(tmp_path), "PROVISIO_LOG_FORMAT": "json"}
    # Workers' health listeners on free ports, so parallel stacks never clash.
    env["PROVISIO_HEALTH_PORT"] = "0"
    env["PROVISIO_CONSOLE_PORT"] = console = str(free_port())
    proc = subprocess.Popen([sys.executable, "-m", "provisio_cli", "dev"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        token = None
        while time.monotonic() < deadline and token is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"SCIM token\s*:\s*(\S+)", line)
            token = m.group(1) if m else None
        assert token, "".join(lines)
        assert f"http://127.0.0.1:{scim}/scim/v2" in "".join(lines)
        assert f"Console       : http://127.0.0.1:{console}" in "".join(lines)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
        body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "dev@demo.test"}
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # the gateway may still be binding its port (five services start)
                try:
                    async with http.post(f"http://127.0.0.1:{scim}/scim/v2/Users", json=body, headers=headers) as r:
                        status, created = r.status, await r.json(content_type=None)
                    break
                except aiohttp.ClientConnectionError:
                    time.sleep(0.1)
        assert status == 201, created
        assert created["userName"] == "dev@demo.test"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does to the foreground group
        out, _ = proc.communicate(timeout=40)
        lines.append(out)
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert "Traceback" not in text
    assert "provisioner_stopped" in text and "auditor_stopped" in text
