"""deploy/kubernetes: every manifest parses, has what Kubernetes and KEDA need, and gives
each service the settings it requires. The base is read from its files; the overlay is
rendered with `kubectl kustomize` where kubectl is installed."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from provisio_lib.topology import AUDITOR_GROUP, PROVISIONER_GROUP, Topology

from .deploy_support import (
    COMMANDS,
    METRICS_PORTS,
    ROOT,
    SERVICE_PORTS,
    all_service_vars,
    assert_settings_load,
    env_vars,
    secret_vars,
    settings_class,
)

pytestmark = pytest.mark.unit

K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
DEPLOYMENTS = ("scim", "saml", "app-api", "provisioner", "auditor", "console", "webhook-dispatcher")


def load_docs(paths: list[Path]) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append(doc)
    return docs


def base_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return load_docs([BASE / r for r in kustomization["resources"]])


def rendered(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the overlay cannot be rendered (base files are checked directly)")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


class Manifests:
    def __init__(self, docs: list[dict[str, Any]], where: str) -> None:
        self.docs = docs
        self.where = where

    def of(self, kind: str) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = self.of(kind)
        assert name in found, f"{self.where}: no {kind} {name}"
        return found[name]

    def config(self) -> dict[str, str]:
        return dict(self.one("ConfigMap", "provisio-config")["data"])

    def secret(self) -> dict[str, str]:
        s = self.one("Secret", "provisio-secrets")
        values = dict(s.get("stringData") or {})
        for k, v in (s.get("data") or {}).items():
            values[k] = base64.b64decode(v).decode()
        return values

    def container(self, deployment: str) -> dict[str, Any]:
        pod = self.one("Deployment", f"provisio-{deployment}")["spec"]["template"]["spec"]
        [container] = pod["containers"]
        return container

    def container_env(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] == "provisio-config"
                env.update(self.config())
            if "secretRef" in source:
                assert source["secretRef"]["name"] == "provisio-secrets"
                env.update(self.secret())
        for item in container.get("env", []):
            env[item["name"]] = str(item["value"])
        return env


def manifest_sets() -> list[Any]:
    return [
        pytest.param(lambda: Manifests(base_docs(), "base"), id="base"),
        pytest.param(lambda: Manifests(rendered(OVERLAY), "overlays/example"), id="overlay"),
    ]


@pytest.fixture(params=manifest_sets())
def m(request: pytest.FixtureRequest) -> Manifests:
    return request.param()


def test_every_file_parses_with_kind_and_name():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        for doc in load_docs([path]):
            if path.name == "kustomization.yaml":
                assert doc["kind"] == "Kustomization", path
                for ref in doc.get("resources", []) + [p["path"] for p in doc.get("patches", []) if "path" in p]:
                    assert (path.parent / ref).exists(), f"{path}: {ref} does not exist"
                continue
            assert doc.get("apiVersion") and doc.get("kind"), path
            assert doc["metadata"].get("name"), path


def test_base_renders_with_kustomize():
    docs = rendered(BASE)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 7 and kinds.count("ScaledObject") == 3
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "provisio" for d in docs)


@pytest.mark.parametrize("service", DEPLOYMENTS)
def test_deployment_runs_the_service_with_probes_and_resources(m, service):
    deployment = m.one("Deployment", f"provisio-{service}")
    spec = deployment["spec"]
    template_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= template_labels.items()
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    c = m.container(service)
    assert c["args"] == COMMANDS[service]
    assert c["image"].split("/")[-1].split(":")[0] == "provisio"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, (service, probe)
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert port == SERVICE_PORTS[service], (service, probe)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), (service, kind)
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    # The container's own settings put the service on the port the probes ask.
    settings = assert_settings_load(service, m.container_env(c), m.where, strict=False)
    own = {e["name"] for e in c.get("env", []) if e["name"].startswith("PROVISIO_")}
    assert own <= env_vars(settings_class(service)), (
        f"{service} reads none of {own - env_vars(settings_class(service))}"
    )
    port_field = {"app-api": "app_api_port"}.get(service) or (
        f"{service}_port" if service in ("scim", "saml", "console") else "health_port"
    )
    assert getattr(settings, port_field) == SERVICE_PORTS[service]
    # Graceful shutdown has time to finish.
    assert pod["terminationGracePeriodSeconds"] >= 20


@pytest.mark.parametrize("service", DEPLOYMENTS)
def test_every_deployment_has_a_disruption_budget(m, service):
    labels = m.one("Deployment", f"provisio-{service}")["spec"]["template"]["metadata"]["labels"]
    budgets = [
        p
        for p in m.of("PodDisruptionBudget").values()
        if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(budgets) == 1, service
    spec = budgets[0]["spec"]
    assert ("minAvailable" in spec) != ("maxUnavailable" in spec)


@pytest.mark.parametrize("service", ("scim", "saml", "app-api"))
def test_gateway_metrics_are_scraped_on_the_operator_port_only(m, service):
    template = m.one("Deployment", f"provisio-{service}")["spec"]["template"]
    c = m.container(service)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == METRICS_PORTS[service] != SERVICE_PORTS[service]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORTS[service])
    settings = assert_settings_load(service, m.container_env(c), m.where, strict=False)
    assert getattr(settings, f"{service.replace('-', '_')}_metrics_port") == METRICS_PORTS[service]
    # the Service (and so the Ingress) publishes the public port only
    svc = m.one("Service", f"provisio-{service}")
    assert all(p["targetPort"] != "metrics" and p["targetPort"] != METRICS_PORTS[service] for p in svc["spec"]["ports"])


@pytest.mark.parametrize("service", ("scim", "saml"))
def test_gateways_have_services(m, service):
    svc = m.one("Service", f"provisio-{service}")
    labels = m.one("Deployment", f"provisio-{service}")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in m.container(service)["ports"]}
    assert all(p["targetPort"] in names for p in svc["spec"]["ports"])
    # Workers scale freely: KEDA owns their replica count, gateways keep two or more.
    assert m.one("Deployment", f"provisio-{service}")["spec"]["replicas"] >= 2
    # Rolling updates drop no requests: keep serving until endpoints are updated.
    pre_stop = m.container(service)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) > 0


def test_workers_replicas_are_left_to_keda(m):
    for service in ("provisioner", "auditor", "webhook-dispatcher"):
        assert "replicas" not in m.one("Deployment", f"provisio-{service}")["spec"]


def test_keda_scales_the_webhook_dispatcher_on_its_backlog(m):
    """A postgresql trigger over the deliveries due now, reading the container's own
    database URL; never below one replica (a change must reach webhooks at once)."""
    scaled = m.one("ScaledObject", "provisio-webhook-dispatcher")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "provisio-webhook-dispatcher"
    m.one("Deployment", spec["scaleTargetRef"]["name"])
    assert spec["minReplicaCount"] >= 1 and spec["maxReplicaCount"] > spec["minReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "postgresql"
    md = trigger["metadata"]
    assert md["connectionFromEnv"] in m.container_env(m.container("webhook-dispatcher"))
    assert "FROM webhook_deliveries" in md["query"] and "status = 'pending'" in md["query"]
    assert int(md["targetQueryValue"]) > 0
    env = m.container_env(m.container("webhook-dispatcher"))
    assert env["PROVISIO_WEBHOOK_ALLOW_PRIVATE"] == "none"  # no internal addresses by default


def test_migrate_job(m):
    job = m.one("Job", "provisio-migrate")
    pod = job["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["args"] == ["migrate"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert_settings_load("migrate", m.container_env(c), m.where, strict=False)


def test_config_secret_split(m):
    """Secrets only in the Secret; every PROVISIO_ key is read by some service."""
    config, secret = m.config(), m.secret()
    known = set().union(*all_service_vars().values())
    for key in config.keys() | secret.keys():
        if key.startswith("PROVISIO_"):
            assert key in known, f"{m.where}: {key} is read by no service (typo?)"
    secrets = set().union(*(secret_vars(settings_class(s)) for s in (*DEPLOYMENTS, "migrate")))
    assert not secrets & config.keys(), f"{m.where}: secret settings in the ConfigMap: {secrets & config.keys()}"
    # URLs carry passwords: they belong in the Secret too.
    assert {"PROVISIO_DATABASE_URL", "PROVISIO_REDIS_URL"} <= secret.keys()


@pytest.mark.parametrize(
    ("service", "group", "kind"),
    [
        ("provisioner", PROVISIONER_GROUP, "commands"),
        ("auditor", AUDITOR_GROUP, "audit"),
    ],
)
def test_keda_scales_workers_on_every_partition_lag(m, service, group, kind):
    config, secret = m.config(), m.secret()
    scaled = m.one("ScaledObject", f"provisio-{service}")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == f"provisio-{service}"
    m.one("Deployment", spec["scaleTargetRef"]["name"])
    assert spec["minReplicaCount"] >= 1  # a SCIM write waits for the provisioner: never zero
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    topology = Topology(prefix=config["PROVISIO_REDIS_PREFIX"], partitions=int(config["PROVISIO_PARTITIONS"]))
    expected = topology.command_streams() if kind == "commands" else topology.audit_streams()
    triggers = spec["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == expected, (
        f"{m.where}: KEDA triggers must list every {kind} stream of the configured topology"
    )
    container_env = m.container_env(m.container(service))
    for t in triggers:
        assert t["type"] == "redis-streams"
        md = t["metadata"]
        assert md["consumerGroup"] == group
        assert int(md["lagCount"]) > 0 and "activationLagCount" in md  # lag mode (Redis >= 7)
        # KEDA reads the address from the scaled container's environment.
        assert md["addressFromEnv"] in container_env
        auth = m.one("TriggerAuthentication", t["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in m.one("Secret", ref["name"]).get("stringData", {})
    # The formula adds every partition's lag.
    modifiers = spec["advanced"]["scalingModifiers"]
    names = {t["name"] for t in triggers}
    assert set(modifiers["formula"].replace(" ", "").split("+")) == names
    assert int(modifiers["target"]) > 0
    # KEDA watches the same Redis the services use.
    url = urlsplit(secret["PROVISIO_REDIS_URL"])
    assert config["KEDA_REDIS_ADDRESS"] == f"{url.hostname}:{url.port or 6379}"
