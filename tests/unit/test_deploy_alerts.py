"""deploy/prometheus: the alert rules are valid PromQL over metrics and labels that
Provisio really exports, and the compose scrape config finds every service."""

from __future__ import annotations

from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from provisio_lib import observability

from .deploy_support import METRICS_PORTS, ROOT

pytestmark = pytest.mark.unit

PROMETHEUS = ROOT / "deploy" / "prometheus"
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


def exported_series() -> dict[str, set[str]]:
    """Series name -> labels, for everything Provisio exports."""
    series: dict[str, set[str]] = {"up": set()}
    for obj in vars(observability).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        name, labels, kind = obj._name, set(obj._labelnames), obj._type
        if kind == "counter":
            series[f"{name}_total"] = labels
        elif kind == "histogram":
            series[f"{name}_bucket"] = labels | {"le"}
            series[f"{name}_count"] = labels
            series[f"{name}_sum"] = labels
        else:
            series[name] = labels
    stream_labels = {
        "provisio_stream_length": {"stream"},
        "provisio_stream_group_pending": {"stream", "group"},
        "provisio_stream_group_lag": {"stream", "group"},
        "provisio_stream_group_consumers": {"stream", "group"},
        "provisio_stream_stats_up": set(),
        "provisio_redis_memory_used_bytes": set(),
        "provisio_redis_memory_max_bytes": set(),
    }
    assert set(stream_labels) == set(observability.STREAM_METRIC_NAMES)
    series.update(stream_labels)
    return series


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_rule_is_valid_promql_over_real_series(rule):
    assert rule["alert"].startswith("Provisio")
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert rule["for"].endswith(("m", "s", "h"))
    expr = promql_parser.parse(rule["expr"])  # raises ValueError on bad PromQL
    series = exported_series()
    used: list[Any] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            used.append(node)
        return True

    promql_parser.walk(expr, visit)
    assert used
    for selector in used:
        assert selector.name in series, f"{rule['alert']}: no series {selector.name}"
        for matcher in selector.matchers.matchers:
            assert matcher.name in series[selector.name] | TARGET_LABELS, (
                f"{rule['alert']}: {selector.name} has no label {matcher.name}"
            )


def test_alert_names_are_unique_and_documented():
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names))
    text = (ROOT / "docs" / "operations.md").read_text()
    for name in names:
        assert f"`{name}`" in text, f"docs/operations.md does not explain {name}"


def test_compose_prometheus_scrapes_every_service():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    scraped = {}
    for job in config["scrape_configs"]:
        [sd] = job["dns_sd_configs"]
        [name] = sd["names"]
        scraped[name] = sd["port"]
        assert job["job_name"] == f"provisio-{name}"  # the alerts match job=~"provisio.*"
    assert scraped == METRICS_PORTS
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]  # not started by a plain `up`
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
