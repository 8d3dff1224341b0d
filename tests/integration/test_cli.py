import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def env(service_env):
    return {**os.environ, **service_env}


def test_tenant_and_token_lifecycle(env):
    assert cli("migrate", env=env).returncode == 0
    made = cli("tenant", "create", "acme", env=env)
    assert made.returncode == 0, made.stderr
    dup = cli("tenant", "create", "ACME", env=env)
    assert dup.returncode == 1 and dup.stderr.strip() == "error: tenant 'acme' already exists"
    assert "Traceback" not in dup.stderr

    tok = cli("scim-token", "create", "acme", "--name", "entra", env=env)
    assert tok.returncode == 0, tok.stderr
    token = tok.stdout.strip().splitlines()[-1]
    assert token.startswith("prv_") and len(token) > 40

    listed = cli("scim-token", "list", "acme", "--json", env=env)
    assert '"label": "entra"' in listed.stdout and token not in listed.stdout
    assert cli("scim-token", "revoke", "acme", "entra", env=env).returncode == 0
    again = cli("scim-token", "revoke", "acme", "entra", env=env)
    assert again.returncode == 1 and "no active token" in again.stderr

    tenants = cli("tenant", "list", "--json", env=env)
    assert '"name": "acme"' in tenants.stdout


def test_unknown_tenant_and_bad_settings_are_one_clear_line(env):
    unknown = cli("scim-token", "list", "nope", env=env)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "error: unknown tenant 'nope' (see `provisio tenant list`)"

    bad = cli("tenant", "list", env={**env, "PROVISIO_DATABASE_URL": "mysql://x"})
    assert bad.returncode == 1 and "PROVISIO_DATABASE_URL is invalid" in bad.stderr
    assert "Traceback" not in bad.stderr

    down = cli("tenant", "list", env={**env, "PROVISIO_DATABASE_URL": "postgresql://u@127.0.0.1:1/x"})
    assert down.returncode == 1 and "cannot connect to Postgres" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
