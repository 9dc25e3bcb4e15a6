"""openapi.yaml: a valid OpenAPI 3.1 document that says what relay really does."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from openapi_spec_validator import validate

import relay
from relay import errors, migrate
from relay.app import create_app
from relay.providers import MAX_ID_LENGTH, MAX_NUMERIC_ID, MAX_USER_KEY_LENGTH
from relay.store import Store
from tests import factories
from tests.contract.conftest import (
    ADMIN_TOKEN,
    REPO,
    SPEC,
    app_settings,
    resolve_ref,
    spec,
    zendesk_headers,
)

PACKAGED = REPO / "relay" / "openapi.yaml"
WEBHOOKS = ("/webhooks/zendesk", "/webhooks/intercom")


def error_codes(path: str, status: int) -> set[str]:
    """The ``error`` codes the spec allows for one webhook answer."""
    response = resolve_ref(spec()["paths"][path]["post"]["responses"][str(status)])
    schema = resolve_ref(response["content"]["application/json"]["schema"])
    error = schema["properties"]["error"]
    return {error["const"]} if "const" in error else set(error["enum"])


def test_the_spec_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(SPEC.read_text())

    validate(document)

    assert document["openapi"].startswith("3.1.")
    assert document["info"]["version"] == relay.__version__


def test_the_packaged_copy_is_identical_to_the_spec() -> None:
    # The package serves its own copy: a symbolic link would dangle in a build
    # context that holds only relay/, and the image would lose the file.
    assert not PACKAGED.is_symlink()
    assert PACKAGED.read_bytes() == SPEC.read_bytes()


def test_get_openapi_yaml_serves_the_spec(app: Flask) -> None:
    response = app.test_client().get("/openapi.yaml")

    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.get_data() == SPEC.read_bytes()
    assert response.headers["X-Request-Id"]


def test_every_route_is_documented_and_every_documented_path_routes(
    app: Flask,
) -> None:
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routed.add((method, path))
    # One Flask rule serves both webhooks.
    routed.discard(("POST", "/webhooks/{provider}"))
    routed |= {("POST", path) for path in WEBHOOKS}

    documented = {
        (method.upper(), path)
        for path, item in spec()["paths"].items()
        for method in item
        if method != "parameters"
    }

    assert routed == documented


def test_every_admin_operation_needs_the_bearer_token() -> None:
    assert spec()["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The value of `RELAY_ADMIN_TOKEN`.",
    }
    for path, item in spec()["paths"].items():
        for operation in item.values():
            needs_token = operation.get("security") == [{"bearerAuth": []}]
            assert needs_token is path.startswith("/admin/"), path
            if needs_token:
                assert {"401", "404"} <= set(operation["responses"]), path


def test_every_answer_documents_x_request_id_and_every_503_retry_after() -> None:
    for path, item in spec()["paths"].items():
        for operation in item.values():
            for status, response in operation["responses"].items():
                headers = resolve_ref(response)["headers"]
                assert "X-Request-Id" in headers, (path, status)
                assert ("Retry-After" in headers) is (status == "503"), (path, status)


def test_every_webhook_rejection_reason_is_documented() -> None:
    rejections: list[type[errors.WebhookRejected]] = []
    pending = [errors.WebhookRejected]
    while pending:
        kind = pending.pop()
        rejections.append(kind)
        pending.extend(kind.__subclasses__())

    for kind in rejections[1:]:
        for path in WEBHOOKS:
            if path.endswith("intercom") and kind is errors.StaleTimestamp:
                continue
            assert kind.reason in error_codes(path, kind.status), (path, kind)
    # StoreUnavailable carries a second reason when no rules are loaded.
    assert "rules_unavailable" in error_codes(WEBHOOKS[0], 503)


def ignored_reasons_in_code() -> set[str]:
    sources = [*(REPO / "relay").glob("*.py"), *(REPO / "relay/providers").glob("*.py")]
    found: set[str] = set()
    for source in sources:
        text = source.read_text()
        found |= set(re.findall(r'Ignored\(\s*"(\w+)"', text))
        found |= set(re.findall(r'ignored="(\w+)"', text))
    return found


def test_the_ignored_reasons_are_exactly_those_relay_gives() -> None:
    schema = resolve_ref(spec()["components"]["responses"]["Ignored"])
    documented = schema["content"]["application/json"]["schema"]["properties"]
    reasons = set(documented["reason"]["enum"])

    assert reasons == ignored_reasons_in_code()


def test_id_limits_are_those_the_parsers_apply() -> None:
    schemas = spec()["components"]["schemas"]
    text_id, number_id = schemas["HelpdeskId"]["oneOf"]
    user_key = schemas["OptionalUserKey"]["oneOf"][0]
    invocation = spec()["components"]["parameters"]["ZendeskInvocationId"]

    assert text_id["maxLength"] == MAX_ID_LENGTH
    assert invocation["schema"]["maxLength"] == MAX_ID_LENGTH
    assert number_id["maximum"] == MAX_NUMERIC_ID - 1
    assert user_key["maxLength"] == MAX_USER_KEY_LENGTH
    assert schemas["OptionalEmail"]["maxLength"] == MAX_USER_KEY_LENGTH


README_ROW = re.compile(
    r"^\| (?P<input>[^|]+) \| (?P<status>\d{3})[^|]* \| (?P<body>.+) \|$"
)


def readme_answers() -> list[tuple[str, int, list[str]]]:
    """(input, status, reason codes) of README's table of webhook answers."""
    text = (REPO / "README.md").read_text()
    section = text.split("## What relay answers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = README_ROW.match(line)
        if match:
            codes = re.findall(r'"(?:error|reason)": "(\w+)"', match["body"])
            codes += re.findall(r'/ `?"(\w+)"', match["body"])
            rows.append((match["input"], int(match["status"]), codes))
    return rows


def test_readme_answers_agree_with_the_spec() -> None:
    rows = readme_answers()
    assert len(rows) >= 15

    ignored = resolve_ref(spec()["components"]["responses"]["Ignored"])
    ignored_schema = ignored["content"]["application/json"]["schema"]
    for row_input, status, codes in rows:
        assert codes or status == 202, row_input
        for path in WEBHOOKS:
            assert str(status) in spec()["paths"][path]["post"]["responses"]
        for code in codes:
            if status == 200:
                assert code in ignored_schema["properties"]["reason"]["enum"]
            else:
                assert code in error_codes(WEBHOOKS[0], status), row_input


@pytest.mark.slow
def test_the_wheel_ships_the_spec(tmp_path: Path) -> None:
    # The same sources the image is built from: pyproject.toml, README and relay/.
    source = tmp_path / "src"
    shutil.copytree(
        REPO / "relay",
        source / "relay",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.db"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, "."],
        cwd=source,
        check=True,
        capture_output=True,
    )

    (wheel,) = tmp_path.glob("relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "relay/openapi.yaml" in archive.namelist(), (
            "openapi.yaml is missing from [tool.setuptools.package-data]"
        )
        assert archive.read("relay/openapi.yaml") == SPEC.read_bytes()


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in spec()["paths"].items()
        for method, operation in item.items()
    ]


def test_every_operation_has_an_id_a_summary_and_json_errors() -> None:
    ids = [operation["operationId"] for _, _, operation in _operations()]
    assert len(ids) == len(set(ids)) == 13
    for method, path, operation in _operations():
        assert operation["summary"], (method, path)
        for status, response in operation["responses"].items():
            content = resolve_ref(response)["content"]
            if not status.startswith("2"):
                assert list(content) == ["application/json"], (method, path, status)


def test_every_503_relay_gives_carries_retry_after(tmp_path: Path) -> None:
    # A rules file that does not exist: relay runs, unready, and says so.
    store = Store.from_url(f"sqlite:///{tmp_path / 'relay.db'}")
    migrate.upgrade(store.engine)
    settings = app_settings(tmp_path, rules_file=str(tmp_path / "missing.yaml"))
    client = create_app(settings, store=store).test_client()
    body = json.dumps(factories.zendesk_tags_changed()).encode()
    token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    answers = [
        client.get("/readyz"),
        client.get("/admin/rules/explain?provider=zendesk&tag=t", headers=token),
        client.post("/webhooks/zendesk", data=body, headers=zendesk_headers(body)),
    ]
    store.close()

    for answer in answers:
        assert answer.status_code == 503, answer.json
        assert answer.headers["Retry-After"].isdigit()
    assert answers[0].json == {"status": "unready", "reasons": ["no_valid_rules"]}
    assert answers[2].json == {"error": "rules_unavailable"}
