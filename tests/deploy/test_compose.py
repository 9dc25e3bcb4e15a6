"""docker-compose.yml: valid against the compose specification, started in order,
and wired to the files it mounts.

There is no Docker engine here, so the file is checked against the compose
specification's JSON schema that check-jsonschema ships (offline), not with
`docker compose config`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from promql import promtool

from relay.config import SECRET_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
RELAY_SERVICES = ("migrate", "web", "worker")


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def check_against_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    assert CHECK_JSONSCHEMA.exists(), "check-jsonschema is a dev dependency"
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    result = check_against_compose_spec(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_specification_check_catches_mistakes(tmp_path: Path) -> None:
    broken = COMPOSE.read_text().replace(
        "service_completed_successfully", "service_completed"
    )
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    assert check_against_compose_spec(path).returncode != 0


def test_postgres_is_16_and_reports_health() -> None:
    postgres = services()["postgres"]
    assert postgres["image"].split(":")[1].split("-")[0].split(".")[0] == "16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["volumes"], "the data outlives the container"


def test_relay_services_are_built_from_the_dockerfile() -> None:
    for name in RELAY_SERVICES:
        service = services()[name]
        assert service["build"]["context"] == "."
        assert (ROOT / service["build"]["dockerfile"]) == ROOT / "Dockerfile"
    assert services()["migrate"]["command"] == ["db", "upgrade"]
    assert services()["web"]["command"] == ["web"]
    assert services()["worker"]["command"] == ["worker"]
    assert "8080:8080" in services()["web"]["ports"]


def test_start_order() -> None:
    migrate = services()["migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"
    for name in ("web", "worker"):
        assert services()[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }


def test_relay_uses_the_compose_database() -> None:
    postgres = services()["postgres"]["environment"]
    url = (
        f"postgresql+psycopg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    for name in RELAY_SERVICES:
        assert services()[name]["environment"]["RELAY_DATABASE_URL"] == url
        assert "RELAY_SANDBOX" not in services()[name]["environment"]


def test_worker_metrics_and_health_on_its_own_port() -> None:
    worker = services()["worker"]
    bind = worker["environment"]["RELAY_WORKER_METRICS_BIND"]
    port = bind.rpartition(":")[2]
    assert f"127.0.0.1:{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    assert int(worker["stop_grace_period"].removesuffix("s")) >= 60

    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: (sd["names"], sd["port"])
        for job in prometheus["scrape_configs"]
        for sd in job["dns_sd_configs"]
    }
    assert targets["relay-worker"] == (["worker"], int(port))
    assert targets["relay-web"] == (["web"], 8080)


def test_mounted_and_env_files_exist() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name}: {source}"
        for env_file in service.get("env_file", []):
            path = ROOT / env_file
            if path.name == "relay.env":
                # Made by the user from the example, and never committed.
                assert (path.parent / "relay.env.example").is_file()
                assert "relay.env" in (path.parent / ".gitignore").read_text().split()
            else:
                assert path.is_file(), env_file


def test_prometheus_loads_the_alerts() -> None:
    mounts = services()["prometheus"]["volumes"]
    for name in ("alerts.yaml", "prometheus.yml"):
        assert f"./deploy/prometheus/{name}:/etc/prometheus/{name}:ro" in mounts
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["alerts.yaml"]


def test_example_env_names_every_credential_with_no_value_filled_in() -> None:
    example = {}
    for line in (ROOT / "deploy/compose/relay.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    # Compose points relay at its own PostgreSQL service itself.
    credentials = set(SECRET_VARIABLES) - {"RELAY_DATABASE_URL"}
    assert credentials <= set(example)
    for key in credentials:
        placeholder = "replace-with-your-" + key.lower().replace("_", "-")
        assert example[key] in ("", placeholder)
    assert example["BUGPILOT_API_KEY"], "a placeholder shows what is required"
    assert not example.get("ZENDESK_URL"), "no guessed account address"


def test_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", "deploy/prometheus/prometheus.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
