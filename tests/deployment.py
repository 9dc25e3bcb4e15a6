"""Deployment fixtures: emulators, real gunicorn web servers, real workers.

Any test folder can use `sandbox`, `relay_env`, `relay` and `running`; they are
registered in tests/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.sandbox import Sandbox, SandboxControl, sandbox_environment
from tests import factories
from tests.harness import RelayProcess, free_port, wait_ready

ADMIN_TOKEN = "e2e-admin-token"


class Relay:
    """A relay deployment under test: its environment, processes and emulators."""

    def __init__(self, sandbox: Sandbox, tmp_path: Path, env: dict[str, str]) -> None:
        self.sandbox = sandbox
        self.tmp_path = tmp_path
        self.env = env
        self.processes: list[RelayProcess] = []
        self.bugpilot = SandboxControl(sandbox.bugpilot_url)
        self.zendesk = SandboxControl(sandbox.zendesk_url)
        self.intercom = SandboxControl(sandbox.intercom_url)
        self.urls: list[str] = []

    @property
    def url(self) -> str:
        return self.urls[0]

    def start_web(self, **overrides: str) -> RelayProcess:
        port = free_port()
        env = {**self.env, "RELAY_BIND": f"127.0.0.1:{port}", **overrides}
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir(f"web-{port}"))
        process = RelayProcess("web", env, self.tmp_path / f"web-{port}.log")
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        self.urls.append(url)
        return process

    def start_worker(self, name: str = "worker", **overrides: str) -> RelayProcess:
        env = {**self.env, **overrides}
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(self._metrics_dir(name)))
        process = RelayProcess("worker", env, self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    def _metrics_dir(self, name: str) -> Path:
        path = self.tmp_path / "metrics" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.alive():
                process.terminate()

    def logs(self) -> str:
        return "\n".join(process.log() for process in self.processes)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture
def relay_env(sandbox: Sandbox, tmp_path: Path) -> dict[str, str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(factories.RULES)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **sandbox_environment(sandbox),
        "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
        "RELAY_RULES_FILE": str(rules),
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_LOG_FORMAT": "json",
        "RELAY_WEB_WORKERS": "2",
        "RELAY_POLL_INTERVAL": "0.05",
        "RELAY_RETRY_BASE": "0.2",
        "RELAY_RETRY_CAP": "2",
        "RELAY_LEASE_SECONDS": "5",
        "RELAY_COOLDOWN": "0",
    }


@pytest.fixture
def relay(
    sandbox: Sandbox, tmp_path: Path, relay_env: dict[str, str]
) -> Iterator[Relay]:
    deployment = Relay(sandbox, tmp_path, relay_env)
    yield deployment
    deployment.stop()


@pytest.fixture
def running(relay: Relay) -> Relay:
    """One web server and one worker, ready."""
    relay.start_web()
    relay.start_worker()
    return relay


WaitFor = Callable[..., object]
