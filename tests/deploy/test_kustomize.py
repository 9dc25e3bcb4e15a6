"""The Kubernetes base in deploy/base: schemas, wiring, probes, security and secrets.

Every resource is validated offline. Built-in kinds go through
kubernetes-validate's strict schemas (unknown fields are errors). Its schemas
have no CRDs, so the ServiceMonitors are validated against SERVICE_MONITOR, a
subset of the Prometheus Operator's own CRD schema (monitoring.coreos.com/v1,
`spec.versions[v1].schema.openAPIV3Schema` of servicemonitors, operator 0.84):
the same types, enums, patterns and required fields for the fields relay uses,
and every other field rejected, so a typo cannot pass as an unknown option.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from relay.config import SECRET_VARIABLES, parse_duration

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "base"
KUBERNETES_VERSION = "1.30"
SECRET_NAME = "relay-secrets"
# Every value that must never sit in a manifest: the secrets relay reads (each
# also as NAME_FILE) and the database URL, which carries a password.
CREDENTIALS = frozenset(SECRET_VARIABLES) | {"RELAY_DATABASE_URL"}
CRD_GROUPS = ("monitoring.coreos.com/",)

_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
    r"(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
SERVICE_MONITOR: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                },
                "labels": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
                "annotations": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "spec": {
            "type": "object",
            "required": ["endpoints", "selector"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


# -- reading the base -----------------------------------------------------------


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return document


def resources() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every resource the kustomization lists."""
    found = []
    for name in kustomization()["resources"]:
        for document in yaml.safe_load_all((BASE / name).read_text()):
            if document:
                found.append((name, document))
    return found


def generator_files(generator: dict[str, Any]) -> list[str]:
    files = [entry.partition("=")[2] or entry for entry in generator.get("files", [])]
    return files + list(generator.get("envs", []))


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as kustomize and docker compose read them."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def generated_config_maps() -> list[dict[str, Any]]:
    """The ConfigMaps configMapGenerator makes, before the name gets its hash."""
    maps = []
    for generator in kustomization().get("configMapGenerator", []):
        data: dict[str, str] = {}
        for name in generator.get("envs", []):
            data.update(env_file(BASE / name))
        for entry in generator.get("files", []):
            key, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
            data[key or Path(path).name] = (BASE / path).read_text()
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return maps


def config() -> dict[str, str]:
    maps = {m["metadata"]["name"]: m["data"] for m in generated_config_maps()}
    data: dict[str, str] = maps["relay-config"]
    return data


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc
        for _, doc in resources()
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"{kind}/{name}"
    return matches[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in resources():
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{name}/{container['name']}", container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def validate(document: dict[str, Any]) -> str:
    """Validate one resource; returns what it was checked against."""
    if document["apiVersion"].startswith(CRD_GROUPS):
        assert document["kind"] == "ServiceMonitor", f"no schema for {document['kind']}"
        jsonschema.Draft202012Validator(SERVICE_MONITOR).validate(document)
        return "servicemonitor subset"
    version: str = kubernetes_validate.validate(
        document, KUBERNETES_VERSION, strict=True
    )
    return version


# -- files --------------------------------------------------------------------


def test_every_listed_file_exists_and_every_file_is_listed() -> None:
    listed = set(kustomization()["resources"])
    for generator in kustomization().get("configMapGenerator", []):
        listed |= set(generator_files(generator))

    for name in listed:
        assert (BASE / name).is_file(), name
    on_disk = {path.name for path in BASE.iterdir() if path.is_file()}
    assert on_disk - {"kustomization.yaml"} == listed


def test_base_is_namespace_agnostic_and_labelled() -> None:
    assert "namespace" not in kustomization()
    pairs = {}
    for entry in kustomization()["labels"]:
        pairs.update(entry["pairs"])
    assert pairs["app.kubernetes.io/name"] == "relay"
    for name, doc in resources():
        assert "namespace" not in doc["metadata"], name
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "relay", name


def test_no_secret_is_shipped() -> None:
    kinds = {doc["kind"] for _, doc in resources()}
    assert "Secret" not in kinds
    assert "secretGenerator" not in kustomization()


# -- schemas ------------------------------------------------------------------


def test_every_resource_validates_against_its_schema() -> None:
    checked = {}
    for name, doc in resources():
        checked[f"{name}:{doc['kind']}/{doc['metadata']['name']}"] = validate(doc)
    for doc in generated_config_maps():
        checked[f"generated:ConfigMap/{doc['metadata']['name']}"] = validate(doc)

    kinds = {key.split(":")[1].split("/")[0] for key in checked}
    assert kinds >= {
        "Deployment",
        "Job",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "ServiceAccount",
    }
    for key, against in checked.items():
        crd = "ServiceMonitor" in key
        assert against == ("servicemonitor subset" if crd else KUBERNETES_VERSION), key


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = copy.deepcopy(find("Deployment", "relay-web"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)

    monitor = copy.deepcopy(find("ServiceMonitor", "relay-web"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)
    monitor = copy.deepcopy(find("ServiceMonitor", "relay-web"))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_the_rules_file_is_one_relay_accepts() -> None:
    from relay.rules import load_rules

    assert len(load_rules(BASE / "rules.yaml")) >= 1


def test_settings_are_variables_relay_reads() -> None:
    known = (ROOT / "relay" / "config.py").read_text()
    own_env = set()
    for _, container in containers():
        own_env |= {
            name for name, entry in env_of(container).items() if "value" in entry
        }
    for name in set(config()) | (own_env - {"PROMETHEUS_MULTIPROC_DIR"}):
        assert f'"{name}"' in known, f"{name} is not a relay setting"


# -- workloads ----------------------------------------------------------------


def test_web_deployment() -> None:
    web = find("Deployment", "relay-web")
    pod = web["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert web["spec"]["replicas"] == 2
    assert container["args"] == ["web"]
    http = {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert http in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert config()["RELAY_BIND"].endswith(":8080")


def test_worker_deployment() -> None:
    worker = find("Deployment", "relay-worker")
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)

    assert worker["spec"]["replicas"] == 2
    assert container["args"] == ["worker"]
    bind = env["RELAY_WORKER_METRICS_BIND"]["value"]
    (port,) = container["ports"]
    assert port["name"] == "metrics"
    assert bind == f"0.0.0.0:{port['containerPort']}"
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness == {"path": "/healthz", "port": "metrics"}
    drain = parse_duration(env["RELAY_DRAIN_TIMEOUT"]["value"])
    assert pod["terminationGracePeriodSeconds"] >= max(60, drain + 10)


def test_migration_job() -> None:
    job = find("Job", "relay-db-upgrade")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert container["args"] == ["db", "upgrade"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["backoffLimit"] >= 1
    assert set(env_of(container)) & CREDENTIALS == {"RELAY_DATABASE_URL"}


@pytest.mark.parametrize("name", ["relay-web", "relay-worker", "relay-db-upgrade"])
def test_pods_run_locked_down(name: str) -> None:
    (spec,) = [spec for pod, spec in pod_specs() if pod == name]
    pod_context = spec["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["runAsUser"] == 10001
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False

    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, kind


@pytest.mark.parametrize("name", ["relay-web", "relay-worker", "relay-db-upgrade"])
def test_writable_paths_are_volumes(name: str) -> None:
    (spec,) = [spec for pod, spec in pod_specs() if pod == name]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for container in spec["containers"]:
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"]
        metrics_dir = env_of(container)["PROMETHEUS_MULTIPROC_DIR"]["value"]
        assert "emptyDir" in mounts[metrics_dir], "the metrics directory must exist"


@pytest.mark.parametrize("name", ["relay-web", "relay-worker"])
def test_services_read_settings_and_rules(name: str) -> None:
    (spec,) = [spec for pod, spec in pod_specs() if pod == name]
    (container,) = spec["containers"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    rules_file = Path(config()["RELAY_RULES_FILE"])

    assert {"configMapRef": {"name": "relay-config"}} in container["envFrom"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(rules_file.parent)]
    assert mount.get("readOnly") is True
    assert "subPath" not in mount
    assert volumes[mount["name"]]["configMap"]["name"] == "relay-rules"
    (rules_map,) = [
        m for m in generated_config_maps() if m["metadata"]["name"] == "relay-rules"
    ]
    assert rules_file.name in rules_map["data"]


# -- credentials --------------------------------------------------------------


@pytest.mark.parametrize("name", ["relay-web", "relay-worker"])
def test_services_get_every_credential_from_the_secret(name: str) -> None:
    (spec,) = [spec for pod, spec in pod_specs() if pod == name]
    (container,) = spec["containers"]
    env = env_of(container)
    for variable in CREDENTIALS:
        assert variable in env, f"{name} lacks {variable}"


def test_credentials_only_ever_come_from_the_secret() -> None:
    for where, container in containers():
        for name, entry in env_of(container).items():
            variable = name.removesuffix("_FILE")
            if variable not in CREDENTIALS:
                continue
            assert "value" not in entry, f"{where}: {name} has a literal value"
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["name"] == SECRET_NAME, where
            assert reference["key"] == name, where
            required = variable in ("RELAY_DATABASE_URL", "BUGPILOT_API_KEY")
            assert reference.get("optional", False) is not required, f"{where}: {name}"
        for source in container.get("envFrom", []):
            assert source.get("secretRef", {"name": SECRET_NAME})["name"] == SECRET_NAME
    assert not set(config()) & CREDENTIALS
    assert not {key.removesuffix("_FILE") for key in config()} & CREDENTIALS


# -- services and the rest ------------------------------------------------------


def pod_labels(deployment: str) -> dict[str, str]:
    template = find("Deployment", deployment)["spec"]["template"]
    labels: dict[str, str] = template["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_services_reach_their_pods() -> None:
    web = find("Service", "relay-web")
    assert selects(web["spec"]["selector"], pod_labels("relay-web"))
    assert not selects(web["spec"]["selector"], pod_labels("relay-worker"))
    assert web["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]

    worker = find("Service", "relay-worker-metrics")
    assert selects(worker["spec"]["selector"], pod_labels("relay-worker"))
    assert not selects(worker["spec"]["selector"], pod_labels("relay-web"))
    assert [port["targetPort"] for port in worker["spec"]["ports"]] == ["metrics"]


@pytest.mark.parametrize(
    ("monitor", "service"),
    [("relay-web", "relay-web"), ("relay-worker", "relay-worker-metrics")],
)
def test_service_monitors_scrape_metrics(monitor: str, service: str) -> None:
    spec = find("ServiceMonitor", monitor)["spec"]
    target = find("Service", service)
    port_names = {port["name"] for port in target["spec"]["ports"]}

    assert selects(spec["selector"]["matchLabels"], target["metadata"]["labels"])
    others = [
        doc
        for _, doc in resources()
        if doc["kind"] == "Service" and doc["metadata"]["name"] != service
    ]
    for other in others:
        assert not selects(spec["selector"]["matchLabels"], other["metadata"]["labels"])
    for endpoint in spec["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in port_names


def test_disruption_budget_and_autoscaler_cover_web() -> None:
    budget = find("PodDisruptionBudget", "relay-web")["spec"]
    assert budget["minAvailable"] == 1
    assert selects(budget["selector"]["matchLabels"], pod_labels("relay-web"))

    autoscaler = find("HorizontalPodAutoscaler", "relay-web")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    spec = autoscaler["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "relay-web",
    }
    assert spec["minReplicas"] >= 2
    assert spec["maxReplicas"] > spec["minReplicas"]
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"


# -- the rendered output ------------------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_a_valid_whole() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(BASE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    tag = kustomization()["images"][0]["newTag"]
    config_maps = set()
    for doc in rendered:
        validate(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "relay"
        if doc["kind"] == "ConfigMap":
            config_maps.add(doc["metadata"]["name"])
    assert len(rendered) == len(resources()) + len(generated_config_maps())

    # Generated names carry a hash, and every reference follows it.
    for doc in rendered:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        assert doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for container in spec["containers"]:
            assert container["image"] == f"relay:{tag}"
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
