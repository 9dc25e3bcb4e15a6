"""Process management: gunicorn for the web side, the worker process, both.

``relay web`` runs gunicorn in this process with relay's production settings.
``relay worker`` runs the delivery loop. ``relay run`` starts both as child
processes for a one-machine install, sharing one Prometheus multiprocess
directory so ``/metrics`` counts the worker's work too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger as GunicornLogger

from relay.config import Settings
from relay.logging import get_logger

log = get_logger("relay.server")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def ensure_metrics_dir() -> str:
    """The multiprocess metrics directory, created when none is configured.

    Must run before ``relay.metrics`` is imported: prometheus-client reads the
    variable when the first metric is defined.
    """
    path = os.environ.get(METRICS_DIR_VARIABLE)
    if not path:
        path = tempfile.mkdtemp(prefix="relay-metrics-")
        os.environ[METRICS_DIR_VARIABLE] = path
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def wipe_metrics_dir(path: str) -> None:
    """Remove files a previous run left, so counters start from zero."""
    for entry in Path(path).glob("*.db"):
        entry.unlink(missing_ok=True)


class AccessLogger(GunicornLogger):  # type: ignore[misc]
    """Gunicorn's access log as one structured line per request."""

    def access(
        self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
    ) -> None:
        headers = dict(resp.headers) if isinstance(resp.headers, list) else {}
        status = str(resp.status).split(" ", 1)[0]
        get_logger("gunicorn.access").info(
            "http request",
            method=environ.get("REQUEST_METHOD"),
            path=environ.get("PATH_INFO"),
            status=int(status) if status.isdigit() else status,
            duration_ms=round(request_time.total_seconds() * 1000, 2),
            request_id=headers.get("X-Request-Id"),
            remote_addr=environ.get("REMOTE_ADDR"),
        )


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class WebServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn serving ``create_app(settings)``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.threads = settings.web_threads
        super().__init__()

    def load_config(self) -> None:
        metrics_dir = ensure_metrics_dir()
        options: dict[str, Any] = {
            "bind": self.settings.bind,
            "workers": self.settings.web_workers,
            "worker_class": "gthread",
            "threads": self.threads,
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": "-",
            "errorlog": "-",
            "logger_class": AccessLogger,
            "on_starting": lambda _server: wipe_metrics_dir(metrics_dir),
            "child_exit": _child_exit,
            "proc_name": "relay-web",
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from relay.app import create_app
        from relay.logging import configure

        configure(self.settings.log_level, self.settings.log_format)
        return create_app(self.settings, learn_own_actors=learn_own_actors)


def learn_own_actors(runtime: Any) -> None:
    """Find the ids relay acts as, so the web side can ignore its own changes."""
    from relay.worker import build_helpdesks

    for provider, helpdesk in build_helpdesks(runtime.settings).items():
        for _ in range(5):
            try:
                actor = helpdesk.own_actor_id()
            except Exception as exc:  # a helpdesk outage must not stop the web side
                log.warning(
                    "own actor lookup failed",
                    provider=provider,
                    error=type(exc).__name__,
                )
                time.sleep(5)
                continue
            if actor:
                runtime.own_actors[provider] = actor
            break


def run_web(settings: Settings) -> int:
    """Serve the web application with gunicorn until stopped."""
    WebServer(settings).run()
    return 0


def run_worker(settings: Settings) -> int:
    """Run the delivery loop until SIGTERM or SIGINT, then drain and exit 0."""
    from relay.store import Store
    from relay.worker import Backoff, Worker, build_bugpilot, build_helpdesks

    store = Store.from_url(settings.database_url)
    worker = Worker(
        store,
        bugpilot=build_bugpilot(settings),
        helpdesks=build_helpdesks(settings),
        threads=settings.worker_threads,
        lease=settings.lease_seconds,
        max_job_age=settings.max_job_age,
        backoff=Backoff(base=settings.retry_base, cap=settings.retry_cap),
        poll_interval=settings.poll_interval,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("worker stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.worker_metrics_bind:
        _serve_worker_metrics(settings.worker_metrics_bind)
    worker.run(stop, drain_timeout=settings.drain_timeout)
    store.close()
    return 0


def _serve_worker_metrics(bind: str) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from relay import metrics

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4")])
            return [metrics.render(None)]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"status": "ok"}']

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    host, _, port = bind.rpartition(":")
    server = make_server(host, int(port), app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info("worker metrics listening", bind=bind)


def run_both(settings: Settings, environ: dict[str, str]) -> int:
    """Start ``relay web`` and, once it is ready, ``relay worker``; stop together."""
    metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
    env = dict(environ, **{METRICS_DIR_VARIABLE: metrics_dir})
    command = [sys.executable, "-m", "relay"]
    children: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()

    def stop_children(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    try:
        children.append(subprocess.Popen([*command, "web"], env=env))  # noqa: S603
        if not _wait_ready(settings.bind, children[0], stopping):
            stop_children()
            return 1
        children.append(subprocess.Popen([*command, "worker"], env=env))  # noqa: S603
        while not stopping.is_set():
            if any(child.poll() is not None for child in children):
                log.error("a relay process exited; stopping the other")
                stop_children()
                break
            stopping.wait(0.5)
        codes = [child.wait(timeout=60) for child in children]
        return 0 if all(code == 0 for code in codes) else 1
    finally:
        stop_children()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _wait_ready(
    bind: str, child: subprocess.Popen[bytes], stopping: threading.Event
) -> bool:
    host, _, port = bind.rpartition(":")
    if host in ("0.0.0.0", "", "[::]"):  # noqa: S104
        host = "127.0.0.1"
    url = f"http://{host}:{port}/readyz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stopping.is_set():
        if child.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False
