"""Process management: gunicorn for the web side, the worker process, both.

``relay web`` runs gunicorn in this process with relay's production settings.
``relay worker`` runs the delivery loop. ``relay run`` starts both as child
processes for a one-machine install, sharing one Prometheus multiprocess
directory so ``/metrics`` counts the worker's work too.

Where the numbers are served:

- ``relay web``: ``/metrics`` on ``RELAY_BIND`` adds up every gunicorn worker
  (and, under ``relay run``, the worker process) and reads the job gauges from
  the store at scrape time.
- ``relay worker`` started on its own: ``/metrics`` and ``/healthz`` on
  ``RELAY_WORKER_METRICS_BIND`` when it is set; its counters, not the job
  gauges, which the web side already exports.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from relay import __version__
from relay.config import Settings
from relay.logging import get_logger, hide_values

log = get_logger("relay.server")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")

# A directory this process made because none was configured; removed at exit.
_temporary_metrics_dir: str | None = None


def ensure_metrics_dir() -> str:
    """The multiprocess metrics directory, created when none is configured.

    Must run before anything imports prometheus-client, which reads the
    variable once, on import.
    """
    global _temporary_metrics_dir
    path = os.environ.get(METRICS_DIR_VARIABLE)
    if not path:
        path = tempfile.mkdtemp(prefix="relay-metrics-")
        os.environ[METRICS_DIR_VARIABLE] = path
        _temporary_metrics_dir = path
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def wipe_metrics_dir(path: str) -> None:
    """Remove files a previous run left, so counters start from zero."""
    for entry in Path(path).glob("*.db"):
        entry.unlink(missing_ok=True)


def forget_dead_processes(path: str) -> list[int]:
    """Drop the live gauges of processes that are gone; return their pids.

    A worker restarted in the same pod finds the files of its previous life
    in the directory; their counters still count, but a gauge such as an open
    circuit must not outlive the process that set it.
    """
    from prometheus_client import multiprocess

    dead = sorted(
        {
            int(match.group(1))
            for entry in Path(path).glob("gauge_live*.db")
            if (match := _LIVE_GAUGE_FILE.match(entry.name))
            and not _alive(int(match.group(1)))
        }
    )
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def secret_values(settings: Settings) -> list[str | None]:
    """Every credential in the settings, for the log scrubber to redact."""
    values: list[str | None] = [settings.bugpilot_api_key, settings.admin_token]
    if settings.zendesk is not None:
        values += [settings.zendesk.api_token, settings.zendesk.oauth_token]
        values += settings.zendesk.webhook_secrets
    if settings.intercom is not None:
        values.append(settings.intercom.access_token)
        values += settings.intercom.client_secrets
    return values


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """Gunicorn's own lines and its access log in relay's log format.

    Gunicorn gives its loggers handlers of their own, with a plain-text format;
    they are taken off again so that every line reaches relay's handler on the
    root logger and comes out as JSON (or console lines) like the others.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers[:] = []
            logger.propagate = True

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
    # Counters of the dead worker stay in the sum; its live gauges must go.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _remove_temporary_metrics_dir(_server: Any) -> None:
    if _temporary_metrics_dir is not None:
        shutil.rmtree(_temporary_metrics_dir, ignore_errors=True)


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
            "loglevel": self.settings.log_level,
            "logger_class": GunicornLogger,
            "on_starting": lambda _server: wipe_metrics_dir(metrics_dir),
            "child_exit": _child_exit,
            "on_exit": _remove_temporary_metrics_dir,
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
    hide_values(secret_values(settings))
    WebServer(settings).run()
    return 0


def run_worker(settings: Settings) -> int:
    """Run the delivery loop until SIGTERM or SIGINT, then drain and exit 0."""
    hide_values(secret_values(settings))
    metrics_dir = os.environ.get(METRICS_DIR_VARIABLE)
    if metrics_dir:
        # Shared with the web server under `relay run`: never wiped here.
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        forget_dead_processes(metrics_dir)

    from relay import metrics
    from relay.store import Store
    from relay.worker import Backoff, Worker, build_bugpilot, build_helpdesks

    metrics.BUILD_INFO.labels(__version__).set(1)
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
    with contextlib.ExitStack() as cleanup:
        if settings.worker_metrics_bind:
            cleanup.enter_context(_serve_worker_metrics(settings.worker_metrics_bind))
        if metrics_dir:
            cleanup.callback(_mark_dead, os.getpid())
        worker.run(stop, drain_timeout=settings.drain_timeout)
    store.close()
    return 0


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # A scrape that hangs must not block the liveness probe behind it.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes and probes every few seconds are not worth a line


@contextlib.contextmanager
def _serve_worker_metrics(bind: str) -> Iterator[None]:
    """Serve ``/metrics`` and ``/healthz`` for a worker on its own port."""
    from relay import metrics

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
            return [metrics.render(None)]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"status": "ok"}']
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "not_found"}']

    host, _, port = bind.rpartition(":")
    server = make_server(
        host.strip("[]"),
        int(port),
        app,
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(
        target=server.serve_forever, name="relay-metrics", daemon=True
    )
    thread.start()
    log.info("worker metrics listening", bind=bind, paths=["/metrics", "/healthz"])
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def run_both(settings: Settings, environ: dict[str, str]) -> int:
    """Start ``relay web`` and, once it is ready, ``relay worker``; stop together."""
    hide_values(secret_values(settings))
    metrics_dir = tempfile.mkdtemp(prefix="relay-metrics-")
    env = dict(environ, **{METRICS_DIR_VARIABLE: metrics_dir})
    worker_env = dict(env)
    if worker_env.pop("RELAY_WORKER_METRICS_BIND", None):
        # The web's /metrics already adds the worker up; a second page with
        # the same numbers would be counted twice by any sum over targets.
        log.info("RELAY_WORKER_METRICS_BIND is not used by relay run")
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
        children.append(
            subprocess.Popen([*command, "worker"], env=worker_env)  # noqa: S603
        )
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
