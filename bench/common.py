"""Pieces the benchmarks share: processes, ports, emulators, RSS readings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    args: list[str], env: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start a process in its own group, output to ``log``."""
    return subprocess.Popen(
        args,
        env=dict(env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def relay_command(command: str) -> list[str]:
    return [sys.executable, "-m", "relay", command]


def wait_ok(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> float:
    """Seconds until ``url`` answers 200; raises if the process dies first."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} never answered 200")


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (gunicorn's workers, for instance)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            child = int(entry.name)
            found += [child, *descendants(child)]
    return found


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def base_env(tmp: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "RELAY_LOG_LEVEL": "warning",
    }
