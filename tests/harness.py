"""Real processes for end-to-end tests: gunicorn web servers and workers.

Each process runs ``python -m relay`` with an environment pointing at a
``Sandbox`` of emulators on loopback, logs to a file under the test's tmp
directory, and is stopped with SIGTERM (or killed, when a test says so).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests


class Clock:
    """A clock whose sleeps only move time on: tests that never sleep for real."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RelayProcess:
    """One ``relay`` process (web or worker) with its log file."""

    def __init__(self, command: str, env: Mapping[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self.log_file = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", command],
            env=dict(env),
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, wait; SIGKILL the group if it does not stop in time."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait(timeout=10)
        self.log_file.close()
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group, gunicorn's children included."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log_file.close()


def wait_ready(url: str, process: RelayProcess, timeout: float = 60) -> None:
    """Poll ``/readyz`` until it answers 200; fail with the log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"relay {process.command} exited:\n{process.log()}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"relay {process.command} never got ready:\n{process.log()}")


def wait_for(check, timeout: float = 30, interval: float = 0.1, message=""):
    """Call ``check`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out waiting: {text}")
        time.sleep(interval)
