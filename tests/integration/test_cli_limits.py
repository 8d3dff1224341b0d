"""`provisio tenant policy TENANT --rate-limit N` (issue 13 §2: the per-tenant limit
could not be set from the CLI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import make_tenant
from tests.integration.scim_helpers import bearer, scim_client

pytestmark = pytest.mark.integration


def cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def env(service_env):
    return {**os.environ, **service_env}


async def test_rate_limit_is_set_shown_and_applied(env, pool):
    t = await make_tenant(pool, "ratey")
    done = cli("tenant", "policy", "ratey", "--rate-limit", "1", "--immutable-user-name", env=env)
    assert done.returncode == 0, done.stderr
    row = await pool.fetchrow("SELECT rate_limit_per_s, immutable_user_name FROM tenants WHERE id = $1", t.id)
    assert (row["rate_limit_per_s"], row["immutable_user_name"]) == (1, True)
    assert '"rate_limit": "1"' in cli("tenant", "list", "--json", env=env).stdout

    async with scim_client(scim_rate_limit_per_s=10_000) as c:  # the tenant's own limit wins
        statuses = [(await c.get("/scim/v2/Users", headers=bearer(t.token))).status for _ in range(4)]
        assert statuses[:2] == [200, 200] and 429 in statuses

    # other flags leave the limit alone; 'default' clears it; 0 is unlimited
    assert cli("tenant", "policy", "ratey", "--deprovision", "deactivate", env=env).returncode == 0
    assert await pool.fetchval("SELECT rate_limit_per_s FROM tenants WHERE id = $1", t.id) == 1
    assert cli("tenant", "policy", "ratey", "--rate-limit", "default", env=env).returncode == 0
    assert await pool.fetchval("SELECT rate_limit_per_s FROM tenants WHERE id = $1", t.id) is None
    assert '"rate_limit": "default"' in cli("tenant", "list", "--json", env=env).stdout
    assert cli("tenant", "policy", "ratey", "--rate-limit", "0", env=env).returncode == 0
    assert await pool.fetchval("SELECT rate_limit_per_s FROM tenants WHERE id = $1", t.id) == 0


def test_a_bad_rate_limit_is_one_clear_line(env):
    for bad in ("fast", "-1", "1.5"):
        r = cli("tenant", "policy", "whoever", "--rate-limit", bad, env=env)
        assert r.returncode == 1
        assert r.stderr.startswith("error: --rate-limit must be"), r.stderr
        assert "Traceback" not in r.stderr
