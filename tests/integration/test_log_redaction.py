"""Secrets never reach the logs, whatever carries them (issue 13 §5): a real gateway,
a malformed request on a raw socket, and the process's real log output (JSON lines)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys

import pytest
import structlog
from aiohttp.test_utils import TestServer

from provisio_lib.logging import configure_logging, get_logger
from provisio_lib.settings import load_settings
from scim_gateway.app import create_app
from scim_gateway.settings import ScimSettings

pytestmark = pytest.mark.integration

SCIM_TOKEN = "prv_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA"
APP_SECRET = "pas_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2Vj"


async def _raw(server: TestServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read(1024)
    writer.close()
    return answer


@pytest.fixture
def json_logs(monkeypatch):
    """The process's log set-up (``configure_logging``), writing to a buffer."""
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", "json", service="scim-gateway")
    try:
        yield buf
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        structlog.reset_defaults()


async def test_tokens_and_filter_values_never_reach_the_log(service_env, tenant, json_logs):
    app = create_app(load_settings(ScimSettings))
    async with TestServer(app) as server:
        # A control character in the header: aiohttp logs the whole header line at ERROR.
        r = await _raw(
            server,
            b"GET /scim/v2/Users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + SCIM_TOKEN.encode() + b"\x01\r\n\r\n",
        )
        assert r.startswith(b"HTTP/1.") and b" 400 " in r
        r = await _raw(
            server,
            b"POST /saml/token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + APP_SECRET.encode() + b"\x7f\r\n\r\n",
        )
        assert b" 400 " in r
        # "line too long": the request line (filter values) and a header value
        flt = b"userName%20eq%20%22alice.smith%40example.com%22%20or%20" * 200
        r = await _raw(server, b"GET /scim/v2/Users?filter=" + flt + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 4" in r[:13]
        r = await _raw(
            server,
            b"GET /scim/v2/Users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + APP_SECRET.encode() * 300
            + b"\r\n\r\n",
        )
        assert b" 4" in r[:13]
        # structlog events too: a value that is a token, under any key
        get_logger("probe").warning("probe", detail=f"client sent Bearer {SCIM_TOKEN}", note=APP_SECRET)
    out = json_logs.getvalue()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    errors = [e for e in lines if e.get("logger") == "aiohttp.server"]
    assert len(errors) >= 3, out  # the errors are still logged, only without the secrets
    assert any("[redacted]" in json.dumps(e) for e in errors)
    for secret in (
        SCIM_TOKEN,
        APP_SECRET,
        SCIM_TOKEN[4:20],
        APP_SECRET[4:20],
        "alice.smith",
        "alice.smith%40example.com",
    ):
        assert secret not in out, f"{secret!r} leaked into the log"
    probe = next(e for e in lines if e.get("event") == "probe")
    assert probe["detail"] == "client sent Bearer [redacted]" and probe["note"] == "pas_[redacted]"
