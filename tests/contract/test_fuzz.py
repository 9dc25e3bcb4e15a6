"""Schemathesis against the real gunicorn server: no 5xx, every answer as specified.

Each operation of openapi.yaml is fuzzed with data that fits the spec and data
that does not. Webhooks go out unsigned and signed: a signed case is serialized
first and signed over the exact bytes that are sent (Zendesk: timestamp + body,
HMAC-SHA256; Intercom: body, HMAC-SHA1). Admin operations go out with the
token, without it, and to a second web server that has no token configured.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from relay.sandbox import SANDBOX_INTERCOM_SECRET, SANDBOX_ZENDESK_SECRET
from tests.contract.conftest import (
    ADMIN_TOKEN,
    OLD_INTERCOM_SECRET,
    OLD_ZENDESK_SECRET,
    SPEC,
    intercom_signature,
    utc_stamp,
    zendesk_signature,
)
from tests.deployment import Relay

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCHEMA = schemathesis.openapi.from_path(SPEC)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
REQUEST_FIELDS = ("method", "url", "headers", "params", "cookies", "json", "data")

WEBHOOKS = ["/webhooks/zendesk", "/webhooks/intercom"]
SERVICE = ["/healthz", "/readyz", "/metrics", "/openapi.yaml"]
ADMIN = [
    ("GET", "/admin/jobs"),
    ("GET", "/admin/jobs/{job_id}"),
    ("POST", "/admin/jobs/{job_id}/retry"),
    ("POST", "/admin/jobs/retry"),
    ("POST", "/admin/jobs/purge"),
    ("GET", "/admin/rules/explain"),
    ("POST", "/admin/rules/reload"),
]

RULE_TAG = "bugpilot_screenshot"
INVOCATION = "X-Zendesk-Webhook-Invocation-Id"
DELIVERIES = itertools.count()
ROTATION = {
    "/webhooks/zendesk": [SANDBOX_ZENDESK_SECRET, OLD_ZENDESK_SECRET],
    "/webhooks/intercom": [SANDBOX_INTERCOM_SECRET, OLD_INTERCOM_SECRET],
}
WRONG_AUTHORIZATION = [
    None,
    "",
    f"Bearer {ADMIN_TOKEN}x",
    f"Bearer {ADMIN_TOKEN[:-1]}",
    f"Basic {ADMIN_TOKEN}",
    ADMIN_TOKEN,
    "Bearer",
]

SENT: Counter[str] = Counter()
"""Cases sent, per test; the summary test prints the total."""
ANSWERS: Counter[tuple[str, str]] = Counter()


@pytest.fixture(scope="module")
def fuzzed(deployment: Relay) -> Iterator[Relay]:
    """The module's deployment plus a web server without an admin token."""
    deployment.start_web(RELAY_ADMIN_TOKEN="")
    yield deployment


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def prepare(case: Case, base_url: str, session: requests.Session) -> Any:
    """The request for ``case``, its body already bytes, as it will be sent."""
    kwargs = case.as_transport_kwargs(base_url=base_url)
    request = requests.Request(**{k: kwargs[k] for k in REQUEST_FIELDS if k in kwargs})
    prepared = session.prepare_request(request)
    body = prepared.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    prepared.body = body
    if body is not None:
        prepared.headers["Content-Length"] = str(len(body))
    return prepared


def with_rule_tag(body: Any) -> None:
    """Add a tag a rule names wherever ``body`` carries or may carry tags."""
    if not isinstance(body, dict):
        return
    if "id" in body:
        body["id"] = f"fuzz-{next(DELIVERIES)}"
    if isinstance(body.get("tags"), str):
        body["tags"] += " " + RULE_TAG
    event = body.get("event")
    if isinstance(event, dict):
        event.setdefault("tags_added", [])
        if isinstance(event["tags_added"], list):
            event["tags_added"].append(RULE_TAG)
    data = body.get("data")
    item = data.get("item") if isinstance(data, dict) else None
    if not isinstance(item, dict):
        return
    if isinstance(item.get("tag"), dict):
        item["tag"]["name"] = RULE_TAG
    elif item.get("tags_added") is None:
        item["tags_added"] = {"tags": []}
    added = item.get("tags_added")
    if isinstance(added, dict):
        added.setdefault("tags", [])
        if isinstance(added["tags"], list):
            added["tags"].append({"name": RULE_TAG})


def sign(prepared: Any, path: str, secret: str) -> None:
    """Sign the exact body bytes of ``prepared`` with ``secret``."""
    body: bytes = prepared.body or b""
    if path == "/webhooks/zendesk":
        stamp = utc_stamp()
        prepared.headers["X-Zendesk-Webhook-Signature-Timestamp"] = stamp
        prepared.headers["X-Zendesk-Webhook-Signature"] = zendesk_signature(
            body, stamp, secret
        )
    else:
        prepared.headers["X-Hub-Signature"] = intercom_signature(body, secret)


Send = Callable[[Case, st.DataObject], requests.Response]


HTTP_SERVER_LIMITS = (414, 431)


def routes_elsewhere(case: Case) -> bool:
    """A generated job id that turns the path into another admin route's.

    ``GET /admin/jobs/retry`` or ``GET /admin/jobs/1%2Fretry`` is a route with
    other methods (405), not a job; such a case says nothing about this one.
    """
    job_id = unquote(str((case.path_parameters or {}).get("job_id", "")))
    return "/" in job_id or job_id in ("retry", "purge")


def answer(response: requests.Response) -> str:
    """The status, and the reason a webhook gave for ignoring a delivery."""
    if response.status_code == 200 and response.request.url.find("/webhooks/") > 0:
        return f"200 {response.json().get('reason')}"
    return str(response.status_code)


def fuzz(
    name: str, method: str, path: str, mode: GenerationMode, examples: int, send: Send
) -> None:
    """Send ``examples`` generated cases of one operation and check each answer."""
    operation = SCHEMA[path][method]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Case, data: st.DataObject) -> None:
        response = send(case, data)
        SENT[name] += 1
        ANSWERS[name, answer(response)] += 1
        if response.status_code in HTTP_SERVER_LIMITS:
            # gunicorn refuses an over-long request line or header block before
            # relay sees the request; relay's contract does not cover it.
            return
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("path", WEBHOOKS)
def test_unsigned_webhooks_are_refused_as_specified(
    fuzzed: Relay, session: requests.Session, path: str, mode: GenerationMode
) -> None:
    def send(case: Case, _data: st.DataObject) -> requests.Response:
        response = session.send(prepare(case, fuzzed.url, session), timeout=30)
        # Generated signature headers never match a secret.
        assert response.status_code == 401, response.text
        return response

    fuzz(f"unsigned {path} {mode}", "POST", path, mode, 40, send)


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("path", WEBHOOKS)
def test_signed_webhooks_answer_as_specified(
    fuzzed: Relay, session: requests.Session, path: str, mode: GenerationMode
) -> None:
    def send(case: Case, data: st.DataObject) -> requests.Response:
        # Random tags rarely name a rule; half the cases get one that does, so
        # events are stored and the worker has jobs to deliver.
        tagged = data.draw(st.booleans(), label="rule tag")
        if tagged:
            with_rule_tag(case.body)
        prepared = prepare(case, fuzzed.url, session)
        if tagged:
            # Generated ids repeat; a fresh invocation id gets past dedupe.
            prepared.headers[INVOCATION] = f"fuzz-{next(DELIVERIES)}"
        # Every secret of the rotation list must do.
        sign(prepared, path, data.draw(st.sampled_from(ROTATION[path])))
        response = session.send(prepared, timeout=30)
        assert response.status_code != 401, response.text
        return response

    fuzz(f"signed {path} {mode}", "POST", path, mode, 250, send)


@pytest.mark.parametrize("path", SERVICE)
def test_service_endpoints_answer_as_specified(
    fuzzed: Relay, session: requests.Session, path: str
) -> None:
    def send(case: Case, _data: st.DataObject) -> requests.Response:
        return session.send(prepare(case, fuzzed.url, session), timeout=30)

    fuzz(f"service {path}", "GET", path, GenerationMode.POSITIVE, 10, send)


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize(("method", "path"), ADMIN)
def test_admin_with_the_token_answers_as_specified(
    fuzzed: Relay,
    session: requests.Session,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    def send(case: Case, _data: st.DataObject) -> requests.Response:
        if routes_elsewhere(case):
            reject()
        prepared = prepare(case, fuzzed.url, session)
        prepared.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        response = session.send(prepared, timeout=30)
        assert response.status_code != 401, response.text
        return response

    fuzz(f"admin {method} {path} {mode}", method, path, mode, 50, send)


@pytest.mark.parametrize(("method", "path"), ADMIN)
def test_admin_without_the_token_is_refused(
    fuzzed: Relay, session: requests.Session, method: str, path: str
) -> None:
    def send(case: Case, data: st.DataObject) -> requests.Response:
        if routes_elsewhere(case):
            reject()
        prepared = prepare(case, fuzzed.url, session)
        wrong = data.draw(st.sampled_from(WRONG_AUTHORIZATION), label="authorization")
        if wrong is None:
            prepared.headers.pop("Authorization", None)
        else:
            prepared.headers["Authorization"] = wrong
        response = session.send(prepared, timeout=30)
        # A path that routes nowhere is 404 before any token is asked for.
        assert response.status_code in (401, 404), response.text
        assert response.status_code == 401 or response.json()["error"] == "not_found"
        return response

    fuzz(f"no token {method} {path}", method, path, GenerationMode.NEGATIVE, 15, send)


@pytest.mark.parametrize(("method", "path"), ADMIN)
def test_admin_is_404_when_no_token_is_configured(
    fuzzed: Relay, session: requests.Session, method: str, path: str
) -> None:
    disabled = fuzzed.urls[1]

    def send(case: Case, _data: st.DataObject) -> requests.Response:
        if routes_elsewhere(case):
            reject()
        prepared = prepare(case, disabled, session)
        prepared.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        response = session.send(prepared, timeout=30)
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "not_found"}
        return response

    fuzz(f"disabled {method} {path}", method, path, GenerationMode.POSITIVE, 10, send)


def test_the_fuzzer_sent_cases_and_relay_stayed_healthy(fuzzed: Relay) -> None:
    """Runs last in this module: a summary, and no worker died along the way."""
    total = sum(SENT.values())
    if not total:
        pytest.skip("runs after the fuzzing tests of this module")
    print(f"\nschemathesis cases sent: {total}")
    for name, count in sorted(SENT.items()):
        answers = sorted((a, n) for (key, a), n in ANSWERS.items() if key == name)
        print(f"  {count:5d}  {name}: " + ", ".join(f"{a} x{n}" for a, n in answers))
    assert total > 0
    assert all(process.alive() for process in fuzzed.processes)
    logs = fuzzed.logs()
    assert "Traceback" not in logs
    assert "WORKER TIMEOUT" not in logs
