"""Run the three emulators as real HTTP servers, in threads or in the foreground.

``Sandbox`` starts Bugpilot, Zendesk and Intercom emulators on loopback in daemon
threads (port 0 picks a free port) for development mode and tests;
``sandbox_environment`` gives the variables that point relay at them. ``main``
is the ``relay sandbox`` command: the three on fixed ports until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import TextIO

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from relay.sandbox import bugpilot, intercom, zendesk
from relay.sandbox.credentials import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_INTERCOM_ADMIN_ID,
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_INTERCOM_TOKEN,
    SANDBOX_WORKSPACE_ID,
    SANDBOX_ZENDESK_EMAIL,
    SANDBOX_ZENDESK_SECRET,
    SANDBOX_ZENDESK_TOKEN,
)

DEFAULT_PORTS = (8081, 8082, 8083)
LISTEN_BACKLOG = 1024
"""Many relay worker threads connect at once; socketserver's default is 5."""
POLL_INTERVAL = 0.05
"""How often a server thread checks whether it was asked to stop."""


class _KeepAliveHandler(WSGIRequestHandler):
    """Keeps connections open between requests, as the real APIs do.

    werkzeug speaks HTTP/1.0 by default and closes each connection after one
    answer; relay's clients would then pay a new connection for every call.
    """

    protocol_version = "HTTP/1.1"


class _QuietHandler(_KeepAliveHandler):
    """Handles requests without writing one log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log nothing: tests and relay's own logs say enough."""


class Sandbox:
    """The Bugpilot, Zendesk and Intercom emulators, each on its own port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: tuple[int, int, int] = (0, 0, 0),
        *,
        log_requests: bool = False,
    ) -> None:
        self.host = host
        self.ports = ports
        self.log_requests = log_requests
        self.bugpilot = bugpilot.BugpilotState()
        self.zendesk = zendesk.ZendeskState()
        self.intercom = intercom.IntercomState()
        self._servers: list[BaseWSGIServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> Sandbox:
        """Listen on the three ports and serve in daemon threads."""
        if self._servers:
            raise RuntimeError("the sandbox is already running")
        apps = (
            bugpilot.create_app(self.bugpilot),
            zendesk.create_app(self.zendesk),
            intercom.create_app(self.intercom),
        )
        try:
            for app, port in zip(apps, self.ports, strict=True):
                self._servers.append(self._serve(app, port))
        except BaseException:
            self.stop()
            raise

        for server, name in zip(
            self._servers, ("bugpilot", "zendesk", "intercom"), strict=True
        ):
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": POLL_INTERVAL},
                name=f"sandbox-{name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and close the listening sockets."""
        for server, thread in zip(self._servers, self._threads, strict=False):
            server.shutdown()
            thread.join()
        for server in self._servers:
            server.server_close()
        self._servers = []
        self._threads = []

    def reset(self) -> None:
        """Put all three emulators back to their seed data, without faults."""
        for state in (self.bugpilot, self.zendesk, self.intercom):
            state.reset()

    @property
    def bugpilot_url(self) -> str:
        """Base URL of the Bugpilot emulator (BUGPILOT_API_URL)."""
        return self._url(0)

    @property
    def zendesk_url(self) -> str:
        """Base URL of the Zendesk emulator (ZENDESK_URL)."""
        return self._url(1)

    @property
    def intercom_url(self) -> str:
        """Base URL of the Intercom emulator (INTERCOM_API_URL)."""
        return self._url(2)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, app: Flask, port: int) -> BaseWSGIServer:
        # Binding here, not in werkzeug, gives an OSError instead of sys.exit
        # when the port is taken, and a backlog fit for bursts of connections.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, port))
            listener.listen(LISTEN_BACKLOG)
            return make_server(
                self.host,
                port,
                app,
                threaded=True,
                request_handler=_KeepAliveHandler
                if self.log_requests
                else _QuietHandler,
                fd=listener.fileno(),
            )
        finally:
            # werkzeug serves a duplicate of the socket; this copy is not needed.
            listener.close()

    def _url(self, index: int) -> str:
        if not self._servers:
            raise RuntimeError("the sandbox is not running")
        host = self.host
        if host in ("", "0.0.0.0"):  # noqa: S104 - mapping a wildcard to loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._servers[index].port}"


def sandbox_environment(sandbox: Sandbox) -> dict[str, str]:
    """The environment variables that point relay at a running sandbox."""
    return _environment(sandbox.bugpilot_url, sandbox.zendesk_url, sandbox.intercom_url)


def sandbox_defaults(
    ports: tuple[int, int, int] = DEFAULT_PORTS, host: str = "127.0.0.1"
) -> dict[str, str]:
    """The same variables for emulators on fixed ports, started or not."""
    bugpilot_port, zendesk_port, intercom_port = ports
    return _environment(
        f"http://{host}:{bugpilot_port}",
        f"http://{host}:{zendesk_port}",
        f"http://{host}:{intercom_port}",
    )


def _environment(
    bugpilot_url: str, zendesk_url: str, intercom_url: str
) -> dict[str, str]:
    return {
        "BUGPILOT_API_URL": bugpilot_url,
        "BUGPILOT_API_KEY": SANDBOX_BUGPILOT_API_KEY,
        "BUGPILOT_WORKSPACE_ID": SANDBOX_WORKSPACE_ID,
        "ZENDESK_URL": zendesk_url,
        "ZENDESK_EMAIL": SANDBOX_ZENDESK_EMAIL,
        "ZENDESK_API_TOKEN": SANDBOX_ZENDESK_TOKEN,
        "ZENDESK_WEBHOOK_SECRETS": SANDBOX_ZENDESK_SECRET,
        "INTERCOM_API_URL": intercom_url,
        "INTERCOM_ACCESS_TOKEN": SANDBOX_INTERCOM_TOKEN,
        "INTERCOM_CLIENT_SECRETS": SANDBOX_INTERCOM_SECRET,
        "INTERCOM_ADMIN_ID": SANDBOX_INTERCOM_ADMIN_ID,
    }


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``relay sandbox``: serve the three emulators until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="relay sandbox",
        description="Run the Bugpilot, Zendesk and Intercom emulators.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--bugpilot-port", type=int, default=DEFAULT_PORTS[0])
    parser.add_argument("--zendesk-port", type=int, default=DEFAULT_PORTS[1])
    parser.add_argument("--intercom-port", type=int, default=DEFAULT_PORTS[2])
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    out = out or sys.stdout

    sandbox = Sandbox(
        args.host,
        (args.bugpilot_port, args.zendesk_port, args.intercom_port),
        log_requests=not args.quiet,
    )
    try:
        sandbox.start()
    except OSError as exc:
        print(f"relay sandbox: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 1

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {
        signum: signal.signal(signum, stop)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        print(f"Bugpilot  {sandbox.bugpilot_url}", file=out)
        print(f"Zendesk   {sandbox.zendesk_url}", file=out)
        print(f"Intercom  {sandbox.intercom_url}", file=out)
        print("Point relay at them with:", file=out)
        for name, value in sandbox_environment(sandbox).items():
            print(f"export {name}={value}", file=out)
        print("Stop with Ctrl-C.", file=out, flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sandbox.stop()
    print("Sandbox stopped.", file=out, flush=True)
    return 0
