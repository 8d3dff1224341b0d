"""docker-compose.yml: the whole stack on one host, workers scalable."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from .deploy_support import (
    COMMANDS,
    ROOT,
    SERVICE_PORTS,
    assert_settings_load,
    interpolate,
)

pytestmark = pytest.mark.unit

COMPOSE = ROOT / "docker-compose.yml"
PROVISIO = ("migrate", "scim", "saml", "provisioner", "auditor", "webhook-dispatcher")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_all_services_are_there(compose):
    assert set(compose["services"]) >= {"postgres", "redis", *PROVISIO}
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")
    assert compose["services"]["redis"]["image"].startswith("redis:7")
    # The streams hold accepted-but-unapplied commands: Redis must persist them.
    command = compose["services"]["redis"]["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in compose["services"]["redis"]["volumes"]


def test_one_image_and_the_command_picks_the_service(compose):
    images = {compose["services"][s]["image"] for s in PROVISIO}
    assert len(images) == 1
    for s in PROVISIO:
        svc = compose["services"][s]
        assert svc["command"] == COMMANDS[s], s
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"


def test_services_wait_for_the_migration(compose):
    migrate = compose["services"]["migrate"]
    assert migrate["restart"] == "no"
    for dep in ("postgres", "redis"):
        assert migrate["depends_on"][dep]["condition"] == "service_healthy"
    for s in ("scim", "saml", "provisioner", "auditor", "webhook-dispatcher"):
        deps = compose["services"][s]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", s
    for s in ("postgres", "redis"):
        assert "healthcheck" in compose["services"][s]


def test_workers_scale_no_fixed_names_or_host_ports(compose):
    for name, svc in compose["services"].items():
        assert "container_name" not in svc, f"{name}: a container_name prevents --scale"
    for s in ("provisioner", "auditor", "webhook-dispatcher", "migrate"):
        assert "ports" not in compose["services"][s], f"{s}: host ports prevent --scale"


def test_long_running_services_have_health_checks_and_restart(compose):
    for s in ("scim", "saml", "provisioner", "auditor", "webhook-dispatcher", "postgres", "redis"):
        svc = compose["services"][s]
        assert svc["restart"] in ("unless-stopped", "always", "on-failure"), s
        assert "healthcheck" in svc, s
    for s, port in SERVICE_PORTS.items():
        test = " ".join(compose["services"][s]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in test, s


def test_gateways_publish_their_ports(compose):
    for s in ("scim", "saml"):
        ports = [interpolate(p) for p in compose["services"][s]["ports"]]
        assert ports == [f"{SERVICE_PORTS[s]}:{SERVICE_PORTS[s]}"], s


def test_auditor_mails_the_smtp_catcher(compose):
    env = {k: interpolate(str(v)) for k, v in compose["services"]["auditor"]["environment"].items()}
    catcher = compose["services"][env["PROVISIO_SMTP_HOST"]]
    assert "mailpit" in catcher["image"] or "mailhog" in catcher["image"]
    assert env["PROVISIO_SMTP_PORT"] == "1025"  # both catchers' SMTP port


@pytest.mark.parametrize("service", PROVISIO)
def test_each_service_gets_valid_settings(compose, service):
    env = {k: interpolate(str(v)) for k, v in compose["services"][service]["environment"].items()}
    settings = assert_settings_load(service, env, "docker-compose.yml")
    port = SERVICE_PORTS.get(service)
    if service in ("scim", "saml"):
        assert getattr(settings, f"{service}_port") == port
    elif port:
        assert settings.health_port == port


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_it(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (Debian: docker-compose)")
    # `config` validates against the Compose schema and resolves anchors; no engine needed.
    # An empty env file, so a developer's own .env cannot change the outcome.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    proc = subprocess.run(
        [*cli, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["services"]["auditor"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert resolved["services"]["scim"]["environment"]["PROVISIO_DATABASE_URL"].startswith("postgresql://")
