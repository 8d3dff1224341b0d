"""Redis is bounded and never evicts, wherever the deploy files run it (issue 13 §2)."""

from __future__ import annotations

import pytest
import yaml

from .deploy_support import ROOT

pytestmark = pytest.mark.unit


def test_compose_redis_has_maxmemory_and_noeviction():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory") + 1]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_kubernetes_example_ships_a_bounded_redis_config():
    overlay = ROOT / "deploy" / "kubernetes" / "overlays" / "example"
    assert "redis-config.yaml" in yaml.safe_load((overlay / "kustomization.yaml").read_text())["resources"]
    conf = yaml.safe_load((overlay / "redis-config.yaml").read_text())["data"]["redis.conf"]
    lines = dict(line.split(None, 1) for line in conf.strip().splitlines())
    assert lines["maxmemory-policy"] == "noeviction"
    assert lines["maxmemory"].endswith(("gb", "mb"))


def test_memory_alerts_exist():
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    assert "provisio_redis_memory_used_bytes" in rules["ProvisioRedisMemoryHigh"]["expr"]
    assert "provisio_redis_memory_max_bytes" in rules["ProvisioRedisNoMaxmemory"]["expr"]
