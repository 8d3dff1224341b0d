"""`provisio sso enable|disable` as an operator runs them (a subprocess against the test
database): a connection added with `sso add` works at once; enable needs a passed test
login of the current settings unless --force; both are audited as `cli`."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from saml_idp import TestIdP
from tests.integration.test_saml_cli import cli, one_error_line

pytestmark = pytest.mark.integration


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **service_env, "PROVISIO_SAML_PUBLIC_URL": "https://sso.example.com"}


async def test_enable_disable_and_force(env: dict[str, str], pool: Any, tmp_path: Any, tenant: Any) -> None:
    md = tmp_path / "okta.xml"
    md.write_text(TestIdP("https://okta.test/app/1").metadata())
    added = cli("sso", "add", tenant.name, "okta", "--metadata", str(md), "--preset", "okta", env=env)
    assert added.returncode == 0, added.stderr
    shown = json.loads(cli("sso", "show", tenant.name, "okta", "--json", env=env).stdout)
    assert shown["enabled"] is True  # as before: an operator's connection works at once

    off = cli("sso", "disable", tenant.name, "okta", env=env)
    assert off.returncode == 0 and "disabled SSO connection okta" in off.stdout, off.stderr
    listed = cli("sso", "list", tenant.name, "--json", env=env)
    assert json.loads(listed.stdout.splitlines()[0])["enabled"] is False

    refused = cli("sso", "enable", tenant.name, "okta", env=env)
    one_error_line(refused, "no successful test login yet")
    assert await pool.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", tenant.id) is False

    forced = cli("sso", "enable", tenant.name, "okta", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert await pool.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", tenant.id) is True
    rows = await pool.fetch(
        "SELECT operation, source_kind, source_label, notes FROM audit_log WHERE tenant_id = $1"
        " AND operation LIKE 'sso.%able'"
        " ORDER BY completed_at",
        tenant.id,
    )
    assert [r["operation"] for r in rows] == ["sso.disable", "sso.enable"]
    assert all(r["source_label"].startswith("cli:") and r["source_kind"] == "cli" for r in rows)
    assert "forced without a passed test login" in rows[1]["notes"]

    one_error_line(cli("sso", "enable", tenant.name, "nope", env=env), "no SSO connection named 'nope'")
