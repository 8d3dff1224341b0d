"""The gateways' caches keep what is in use when they are full: the least recently used
entry goes, never the whole cache. Before, a burst of unknown keys (tokens sprayed at
the SCIM API, connection names scanned on the SAML gateway) emptied them, and every
request in use went back to Postgres at once."""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from saml_idp import make_keypair
from saml_setup import add_connection

pytestmark = pytest.mark.integration


async def test_a_token_in_use_stays_cached_through_a_spray_of_unknown_tokens(
    pool: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scim_gateway import auth

    monkeypatch.setattr(auth, "_MAX_ENTRIES", 8)
    tokens = auth.TokenCache(pool, ttl_s=60)
    assert (await tokens.lookup(tenant.token)) is not None
    # Revoked now: a lookup that reaches Postgres says so, a cached one does not (60 s).
    await pool.execute("UPDATE scim_tokens SET revoked_at = now() WHERE tenant_id = $1", tenant.id)
    for i in range(40):
        assert await tokens.lookup(f"pst_unknown_{i}") is None
        if i % 4 == 0:
            assert await tokens.lookup(tenant.token) is not None, f"evicted after {i + 1} unknown tokens"
    # The cache still bounds itself, and still expires: a fresh cache sees the revocation.
    assert len(tokens._cache) <= 8
    assert await auth.TokenCache(pool, ttl_s=60).lookup(tenant.token) is None


async def test_a_connection_in_use_stays_cached_through_a_scan_of_unknown_names(
    pool: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from saml_gateway import app

    setup = await add_connection(pool, tenant.id, "entra")
    monkeypatch.setattr(app, "_MAX_CONNECTIONS", 8)
    registry = app.ConnectionRegistry(pool, ttl_s=60)
    assert (await registry.get(setup.tenant, "entra")) is not None
    # Removed now: a lookup that reaches Postgres says so, a cached one does not (60 s).
    await pool.execute("DELETE FROM sso_connections WHERE tenant_id = $1", tenant.id)
    for i in range(40):
        assert await registry.get(setup.tenant, f"scan-{i}") is None
        if i % 4 == 0:
            assert await registry.get(setup.tenant, "entra") is not None, f"evicted after {i + 1} unknown names"
    assert len(registry._cache) <= 8
    assert await app.ConnectionRegistry(pool, ttl_s=60).get(setup.tenant, "entra") is None


async def test_a_connection_lookup_expires_after_its_ttl(pool: Any, tenant: Any) -> None:
    from saml_gateway import app

    setup = await add_connection(pool, tenant.id, "entra")
    registry = app.ConnectionRegistry(pool, ttl_s=0)
    assert (await registry.get(setup.tenant, "entra")) is not None
    await pool.execute("DELETE FROM sso_connections WHERE tenant_id = $1", tenant.id)
    assert await registry.get(setup.tenant, "entra") is None


def test_the_signature_key_in_use_survives_a_burst_of_other_keys(tmp_path: Any) -> None:
    import xmlsec

    from saml_gateway.crypto import CryptoBackendXmlsecBinding

    pair = make_keypair(f"cache-{uuid.uuid4().hex[:6]}", str(tmp_path))
    binding = CryptoBackendXmlsecBinding(None)
    fmt = xmlsec.constants.KeyDataFormatCertPem
    common = binding._key(pair.cert_file, fmt)
    for i in range(600):
        # The same certificate with trailing blank lines: another file content each time.
        other = tmp_path / f"other-{i}.pem"
        other.write_bytes(pair.cert_pem + b"\n" * (i + 1))
        binding._key(str(other), fmt)
        if i % 50 == 0:
            assert binding._key(pair.cert_file, fmt) is common, f"evicted after {i + 1} other keys"
    assert binding._key(pair.cert_file, fmt) is common
