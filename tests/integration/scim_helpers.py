"""Shared helpers for the SCIM gateway integration tests (not a test module)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog.testing
from aiohttp.test_utils import TestClient, TestServer

from provisio_lib.settings import load_settings
from scim_gateway.app import create_app
from scim_gateway.settings import ScimSettings

SCIM = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PROVISIO = "urn:ietf:params:scim:schemas:extension:provisio:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@asynccontextmanager
async def scim_client(**overrides: Any) -> AsyncIterator[TestClient]:
    """The gateway on this test's database and Redis prefix (``service_env`` must be active).

    Fails the test if any request reached the catch-all 500 handler: every error a
    test provokes must be an explicit 4xx/503."""
    settings = load_settings(ScimSettings, **overrides)
    app = create_app(settings)
    with structlog.testing.capture_logs() as logs:
        async with TestClient(TestServer(app)) as client:
            yield client
    unhandled = [e for e in logs if e.get("event") == "unhandled_error"]
    assert not unhandled, f"requests hit the catch-all 500 handler: {unhandled}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": SCIM}


def patch_body(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(ops)}
