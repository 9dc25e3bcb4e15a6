"""Real relay processes for the observability tests, and readers for what they emit.

A ``Deployment`` starts ``relay web``, ``relay worker`` and ``relay run`` against a
``Sandbox`` of emulators, each writing stdout and stderr to its own log file, so
a test reads exactly what a log pipeline would. ``Scrape`` sums a /metrics page
the way a PromQL ``sum`` would; ``TcpProxy`` stands between relay and its
database so a test can take the store away and give it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from relay.sandbox import (
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_ZENDESK_SECRET,
    Sandbox,
    SandboxControl,
    sandbox_environment,
)
from tests import factories as f
from tests.harness import RelayProcess, free_port, wait_for, wait_ready

ADMIN_TOKEN = "observability-admin-token"

PATIENCE = 60.0
"""Seconds to wait for relay before calling it stuck. A passing run waits far
less; the margin is for a slow, shared CI machine."""


# -- processes -------------------------------------------------------------------------


@dataclass
class Web:
    """One ``relay web`` (gunicorn master and workers) and its base URL."""

    process: RelayProcess
    url: str


class Deployment:
    """Relay processes sharing one store, rules file and set of emulators."""

    def __init__(self, sandbox: Sandbox, root: Path) -> None:
        self.sandbox = sandbox
        self.root = root
        self.rules = root / "rules.yaml"
        self.rules.write_text(f.RULES)
        self.database = root / "relay.db"
        self.processes: list[RelayProcess] = []
        self.bugpilot = SandboxControl(sandbox.bugpilot_url)
        self.zendesk = SandboxControl(sandbox.zendesk_url)

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment every process gets, with ``overrides`` on top."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            **sandbox_environment(self.sandbox),
            "RELAY_DATABASE_URL": f"sqlite:///{self.database}",
            "RELAY_RULES_FILE": str(self.rules),
            "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "RELAY_LOG_FORMAT": "json",
            "RELAY_WEB_WORKERS": "1",
            "RELAY_POLL_INTERVAL": "0.05",
            "RELAY_RETRY_BASE": "0.2",
            "RELAY_RETRY_CAP": "1",
            "RELAY_LEASE_SECONDS": "5",
            "RELAY_COOLDOWN": "0",
            "RELAY_DRAIN_TIMEOUT": "5",
        }
        env.update(overrides)
        return {key: value for key, value in env.items() if value != ""}

    def start_web(self, name: str = "web", **overrides: str) -> Web:
        """``relay web`` on a free port, ready (``/readyz`` answered 200)."""
        port = free_port()
        env = self.env(RELAY_BIND=f"127.0.0.1:{port}", **overrides)
        process = self._start("web", name, env)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, timeout=PATIENCE)
        return Web(process, url)

    def start_worker(self, name: str = "worker", **overrides: str) -> RelayProcess:
        """``relay worker``, once its log says it claims jobs."""
        process = self._start("worker", name, self.env(**overrides))
        wait_for(
            lambda: "worker started" in read(process) or not process.alive(),
            timeout=PATIENCE,
            message=f"{name} did not start",
        )
        assert process.alive(), read(process)
        return process

    def start_run(self, name: str = "run", **overrides: str) -> Web:
        """``relay run`` (web, then worker) on a free port, ready."""
        port = free_port()
        env = self.env(RELAY_BIND=f"127.0.0.1:{port}", **overrides)
        process = self._start("run", name, env)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, timeout=PATIENCE)
        return Web(process, url)

    def _start(self, command: str, name: str, env: dict[str, str]) -> RelayProcess:
        process = RelayProcess(command, env, self.root / f"{name}.log")
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM every process, the last started first."""
        for process in reversed(self.processes):
            if not process.log_file.closed:
                process.terminate()


def read(process: RelayProcess) -> str:
    """Everything the process has written so far (stdout and stderr)."""
    if not process.log_file.closed:
        process.log_file.flush()
    return process.log_path.read_text(errors="replace")


def metrics_dir(root: Path, name: str) -> str:
    """A fresh directory for ``PROMETHEUS_MULTIPROC_DIR``."""
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# -- webhooks --------------------------------------------------------------------------


def send_zendesk(url: str, payload: Any, **header_options: Any) -> requests.Response:
    """POST a Zendesk delivery signed with the sandbox's webhook secret."""
    body = f.encode(payload)
    header_options.setdefault("secret", SANDBOX_ZENDESK_SECRET)
    headers = f.zendesk_headers(body, **header_options)
    return requests.post(
        f"{url}/webhooks/zendesk", data=body, headers=headers, timeout=10
    )


def send_intercom(url: str, payload: Any) -> requests.Response:
    """POST an Intercom notification signed with the sandbox's client secret."""
    body = f.encode(payload)
    headers = f.intercom_headers(body, secret=SANDBOX_INTERCOM_SECRET)
    return requests.post(
        f"{url}/webhooks/intercom", data=body, headers=headers, timeout=10
    )


def jobs_in_state(url: str, state: str) -> list[dict[str, Any]]:
    """Jobs in ``state``, through the admin API."""
    response = requests.get(
        f"{url}/admin/jobs",
        params={"state": state, "limit": 500},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    response.raise_for_status()
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


# -- metrics ---------------------------------------------------------------------------


class Scrape:
    """One /metrics page, read the way PromQL would read it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples: list[Sample] = [
            sample for family in self.families for sample in family.samples
        ]

    @classmethod
    def of(cls, url: str) -> Scrape:
        """GET ``url``/metrics, which must answer 200."""
        response = requests.get(f"{url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain")
        return cls(response.text)

    def has(self, name: str) -> bool:
        """Whether any series of that name is on the page."""
        return any(sample.name == name for sample in self.samples)

    def sum(self, name: str, **labels: str) -> float:
        """``sum(name{labels})``: 0.0 when no series matches."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == name
            and all(sample.labels.get(key) == value for key, value in labels.items())
        )


# -- logs ------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object; fails naming the first that is not."""
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            parsed = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(parsed, dict), f"line {number} is not an object: {line!r}"
        lines.append(parsed)
    return lines


def events(lines: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    """The lines whose event phrase is ``event``."""
    return [line for line in lines if line.get("event") == event]


# -- a store that can be taken away ----------------------------------------------------


class TcpProxy:
    """Forwards a loopback port to ``target``; ``cut`` makes the target vanish.

    After ``cut`` every open connection is closed and new ones are refused, as
    when a database server goes down; ``restore`` listens again on the same port.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> TcpProxy:
        """Accept connections (again)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Close the listener and every connection through it."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in [listener, *sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            threading.Thread(
                target=self._pump, args=(client, upstream), daemon=True
            ).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in pair:
                with self._lock:
                    self._sockets.discard(sock)
                sock.close()


@contextlib.contextmanager
def running(deployment: Deployment) -> Iterator[Deployment]:
    """Stop every process of ``deployment`` on the way out."""
    try:
        yield deployment
    finally:
        deployment.stop()
