"""What a newcomer meets first: settings from a .env, the CLI's help and tables, and how
`provisio dev` picks its ports and URLs (no servers here; tests/integration/test_dev.py
runs the stack)."""

from __future__ import annotations

import io
import sys

import pytest
from typer.testing import CliRunner

from auditor.settings import AuditorSettings
from provisio_cli import context, dev
from provisio_cli.context import CliError
from provisio_cli.main import app
from provisio_lib.settings import SettingsError, load_settings
from provisioner.settings import ProvisionerSettings

pytestmark = pytest.mark.unit

BASE = {"PROVISIO_DATABASE_URL": "postgresql://u@db/x", "PROVISIO_REDIS_URL": "redis://r:6379/0"}


@pytest.fixture
def env(monkeypatch):
    for name in (
        "PROVISIO_HEALTH_PORT",
        "PROVISIO_BATCH_SIZE",
        "PROVISIO_PROVISIONER_HEALTH_PORT",
        "PROVISIO_AUDITOR_HEALTH_PORT",
        "PROVISIO_PROVISIONER_BATCH_SIZE",
        "PROVISIO_AUDITOR_BATCH_SIZE",
        "PROVISIO_SMTP_USER",
        "PROVISIO_SMTP_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    return monkeypatch


def test_an_empty_variable_means_unset(env):
    # `PROVISIO_SMTP_USER=` in a .env: before, the auditor got "" and tried SMTP AUTH.
    env.setenv("PROVISIO_SMTP_USER", "")
    env.setenv("PROVISIO_SMTP_PASSWORD", "")
    s = load_settings(AuditorSettings)
    assert s.smtp_user is None and s.smtp_password is None


def test_each_worker_has_its_own_health_port_and_batch_size(env):
    env.setenv("PROVISIO_PROVISIONER_HEALTH_PORT", "19101")
    env.setenv("PROVISIO_AUDITOR_HEALTH_PORT", "19102")
    env.setenv("PROVISIO_AUDITOR_BATCH_SIZE", "700")
    p, a = load_settings(ProvisionerSettings), load_settings(AuditorSettings)
    assert (p.health_port, a.health_port) == (19101, 19102)
    assert (p.batch_size, a.batch_size) == (200, 700)


def test_the_older_shared_names_still_work_and_lose_to_the_own_ones(env):
    env.setenv("PROVISIO_HEALTH_PORT", "9300")
    env.setenv("PROVISIO_BATCH_SIZE", "50")
    assert load_settings(ProvisionerSettings).health_port == 9300
    assert load_settings(AuditorSettings).batch_size == 50
    env.setenv("PROVISIO_AUDITOR_HEALTH_PORT", "9400")
    assert load_settings(AuditorSettings).health_port == 9400
    # Field names still work as keywords (tests, create_app).
    assert load_settings(ProvisionerSettings, health_port=0, batch_size=9).batch_size == 9


def test_a_bad_worker_setting_is_named_as_set(env):
    env.setenv("PROVISIO_PROVISIONER_BATCH_SIZE", "0")
    with pytest.raises(SettingsError, match=r"^PROVISIO_PROVISIONER_BATCH_SIZE is invalid"):
        load_settings(ProvisionerSettings)


def test_help_shows_no_bool_noise():
    runner = CliRunner()
    for args in (["dev", "--help"], ["tenant", "list", "--help"], ["audit", "search", "--help"], ["--help"]):
        result = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, args
    assert "--seed" in runner.invoke(app, ["dev", "--help"]).output


def test_piped_tables_are_not_cut_and_ids_are_whole(monkeypatch):
    out, err = io.StringIO(), io.StringIO()  # not terminals: what `| less` or `> file` gets
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(context, "_suggested_json", False)
    cids = [f"scim-3f2a9c81d4e5b6a7-{n:016x}" for n in range(3)]
    rows = [
        {"completed_at": "2026-12-02 17:05:45.356656+00:00", "tenant": "acme", "error": "x" * 60, "correlation_id": cid}
        for cid in cids
    ]
    context.print_rows(rows, ["completed_at", "tenant", "error", "correlation_id"], as_json=False)
    text = out.getvalue()
    for cid in cids:
        assert cid in text
    assert "x" * 60 in text and "2026-12-02 17:05:45.356656+00:00" in text
    assert max(len(line) for line in text.splitlines()) > 80
    assert "--json" in err.getvalue()


def test_dev_ports_each_service_its_own_and_zero_means_a_free_one():
    env = {"PROVISIO_HEALTH_PORT": "0", "PROVISIO_SCIM_PORT": "18081"}
    ports = dev.service_ports(env)
    assert ports["scim_gateway"] == 18081 and ports["saml_gateway"] == 8082
    assert 0 not in ports.values() and ports["provisioner"] != ports["auditor"]
    assert env["PROVISIO_PROVISIONER_HEALTH_PORT"] == str(ports["provisioner"])
    assert env["PROVISIO_AUDITOR_HEALTH_PORT"] == str(ports["auditor"])
    with pytest.raises(CliError, match=r"PROVISIO_PROVISIONER_HEALTH_PORT=9000.*PROVISIO_AUDITOR_HEALTH_PORT=9000"):
        dev.service_ports({"PROVISIO_HEALTH_PORT": "9000"})
    with pytest.raises(CliError, match="PROVISIO_SCIM_PORT is invalid"):
        dev.service_ports({"PROVISIO_SCIM_PORT": "http"})


def test_dev_sp_urls_follow_the_saml_port():
    env: dict[str, str] = {"PROVISIO_SAML_PORT": "18082"}
    dev.derive_urls(env, dev.service_ports(env))
    assert env["PROVISIO_SAML_PUBLIC_URL"] == "http://127.0.0.1:18082"
    kept = {"PROVISIO_SAML_PORT": "18082", "PROVISIO_SAML_PUBLIC_URL": "https://sso.example.test"}
    dev.derive_urls(kept, dev.service_ports(kept))
    assert kept["PROVISIO_SAML_PUBLIC_URL"] == "https://sso.example.test"


def test_every_dev_service_is_a_module_with_a_port_setting():
    import importlib.util

    for svc in dev.SERVICES:
        assert importlib.util.find_spec(svc.module) is not None, svc.module
        assert svc.port_var.startswith("PROVISIO_") and svc.port_var.endswith("_PORT")
    assert len({s.port_var for s in dev.SERVICES}) == len(dev.SERVICES)
