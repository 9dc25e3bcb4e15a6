"""A relay deployment shared by a whole test module, and signing done by hand.

The signatures here are computed from the provider documentation, not with
relay's own ``sign`` functions, so a mistake there cannot hide itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from relay import migrate
from relay.app import create_app
from relay.config import IntercomSettings, Settings, ZendeskSettings
from relay.rules import parse_rules
from relay.sandbox import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_INTERCOM_TOKEN,
    SANDBOX_ZENDESK_SECRET,
    SANDBOX_ZENDESK_TOKEN,
    Sandbox,
    sandbox_environment,
)
from relay.store import Store
from tests import factories
from tests.deployment import Relay

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "openapi.yaml"

ADMIN_TOKEN = "contract-admin-token-4f1c9a"
OLD_ZENDESK_SECRET = "zendesk-retired-secret-77d2"
OLD_INTERCOM_SECRET = "intercom-retired-secret-0b3e"
SECRETS = (
    ADMIN_TOKEN,
    OLD_ZENDESK_SECRET,
    OLD_INTERCOM_SECRET,
    SANDBOX_ZENDESK_SECRET,
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_ZENDESK_TOKEN,
    SANDBOX_INTERCOM_TOKEN,
    SANDBOX_BUGPILOT_API_KEY,
)
"""Every secret the shared deployment holds; none may reach a log or an answer."""
MAX_BODY_BYTES = 64 * 1024
SPEC_URI = "urn:relay:openapi"


def zendesk_signature(body: bytes, timestamp: str, secret: str) -> str:
    """Base64 HMAC-SHA256 of the timestamp followed by the body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def intercom_signature(body: bytes, secret: str) -> str:
    """``sha1=`` and the hex HMAC-SHA1 of the body."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def utc_stamp(offset: float = 0.0) -> str:
    """An ISO 8601 UTC timestamp ``offset`` seconds from now."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


def zendesk_headers(
    body: bytes, *, secret: str = SANDBOX_ZENDESK_SECRET, offset: float = 0.0
) -> dict[str, str]:
    """Headers of a Zendesk delivery of ``body`` signed ``offset`` seconds from now."""
    stamp = utc_stamp(offset)
    return {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": zendesk_signature(body, stamp, secret),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        "X-Zendesk-Webhook-Invocation-Id": str(time.time_ns()),
    }


def intercom_headers(
    body: bytes, *, secret: str = SANDBOX_INTERCOM_SECRET
) -> dict[str, str]:
    """Headers of an Intercom notification of ``body``."""
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature": intercom_signature(body, secret),
    }


def deployment_env(sandbox: Sandbox, tmp: Path) -> dict[str, str]:
    """relay's environment: the emulators, rotation lists, a small body limit."""
    rules = tmp / "rules.yaml"
    rules.write_text(factories.RULES)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        **sandbox_environment(sandbox),
        "ZENDESK_WEBHOOK_SECRETS": f"{OLD_ZENDESK_SECRET},{SANDBOX_ZENDESK_SECRET}",
        "INTERCOM_CLIENT_SECRETS": f"{SANDBOX_INTERCOM_SECRET},{OLD_INTERCOM_SECRET}",
        "RELAY_DATABASE_URL": f"sqlite:///{tmp / 'relay.db'}",
        "RELAY_RULES_FILE": str(rules),
        "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "RELAY_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "debug",
        "RELAY_WEB_WORKERS": "2",
        "RELAY_POLL_INTERVAL": "0.05",
        "RELAY_RETRY_BASE": "0.2",
        "RELAY_RETRY_CAP": "1",
        "RELAY_MAX_JOB_AGE": "5",
        "RELAY_LEASE_SECONDS": "5",
        "RELAY_COOLDOWN": "0",
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One gunicorn ``relay web`` and one ``relay worker`` for the whole module."""
    tmp = tmp_path_factory.mktemp("deployment")
    with Sandbox() as sandbox:
        relay = Relay(sandbox, tmp, deployment_env(sandbox, tmp))
        try:
            relay.start_web()
            relay.start_worker()
            yield relay
        finally:
            relay.stop()


# -- in-process -----------------------------------------------------------------


def app_settings(tmp: Path, **changes: Any) -> Settings:
    """Settings like the deployment's, for ``create_app`` in this process."""
    settings = Settings(
        bugpilot_api_key=SANDBOX_BUGPILOT_API_KEY,
        bugpilot_workspace_id="ws_contract",
        database_url=f"sqlite:///{tmp / 'relay.db'}",
        admin_token=ADMIN_TOKEN,
        max_body_bytes=MAX_BODY_BYTES,
        zendesk=ZendeskSettings(
            url="http://127.0.0.1:9",
            webhook_secrets=(OLD_ZENDESK_SECRET, SANDBOX_ZENDESK_SECRET),
            oauth_token=SANDBOX_ZENDESK_TOKEN,
        ),
        intercom=IntercomSettings(
            api_url="http://127.0.0.1:9",
            access_token=SANDBOX_INTERCOM_TOKEN,
            client_secrets=(SANDBOX_INTERCOM_SECRET, OLD_INTERCOM_SECRET),
            admin_id="991267696",
        ),
    )
    return settings.replace(**changes)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """The web application on a migrated SQLite store, for the whole module."""
    tmp = tmp_path_factory.mktemp("app")
    store = Store.from_url(f"sqlite:///{tmp / 'relay.db'}")
    migrate.upgrade(store.engine)
    yield create_app(app_settings(tmp), store=store, rules=parse_rules(factories.RULES))
    store.close()


@cache
def spec() -> dict[str, Any]:
    """openapi.yaml, parsed."""
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def resolve_ref(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` itself, or the part of the spec its ``$ref`` points at."""
    while "$ref" in node:
        target: Any = spec()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def response_validator(
    path: str, method: str, status: int, media_type: str = "application/json"
) -> Draft202012Validator:
    """A JSON Schema validator for one documented answer's body."""
    pointer = "/" + "/".join(
        _escape(part) for part in ("paths", path, method.lower(), "responses")
    )
    response = spec()["paths"][path][method.lower()]["responses"][str(status)]
    if "$ref" in response:
        pointer = response["$ref"].removeprefix("#")
    else:
        pointer += f"/{status}"
    pointer += f"/content/{_escape(media_type)}/schema"
    registry = Registry().with_resource(
        SPEC_URI, Resource(contents=spec(), specification=DRAFT202012)
    )
    return Draft202012Validator({"$ref": SPEC_URI + "#" + pointer}, registry=registry)
