"""What anyone on the internet may send relay: limits, secrets, ids, no SSRF.

Most tests talk to the real gunicorn ``relay web`` (and ``relay worker``) that
the module shares, some over raw sockets so that the bytes on the wire are
exactly the ones a test means.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask

from relay.app import create_app
from relay.errors import InvalidSignature
from relay.providers import intercom, zendesk
from relay.rules import parse_rules
from relay.sandbox import (
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_ZENDESK_EMAIL,
    SANDBOX_ZENDESK_SECRET,
    SANDBOX_ZENDESK_TOKEN,
)
from tests import factories
from tests.conftest import fresh_postgres_store
from tests.contract.conftest import (
    ADMIN_TOKEN,
    MAX_BODY_BYTES,
    OLD_INTERCOM_SECRET,
    OLD_ZENDESK_SECRET,
    REPO,
    SECRETS,
    app_settings,
    intercom_headers,
    intercom_signature,
    utc_stamp,
    zendesk_headers,
    zendesk_signature,
)
from tests.deployment import Relay
from tests.harness import wait_for

pytestmark = pytest.mark.e2e

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
TOLERANCE = 300
"""RELAY_SIGNATURE_TOLERANCE's default, which the deployment keeps."""


# -- raw HTTP ---------------------------------------------------------------------


@contextlib.contextmanager
def connection(url: str, timeout: float = 10) -> Iterator[socket.socket]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout) as sock:
        yield sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def request_head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(url, data=body, headers=headers, timeout=30)


def signed_zendesk(
    deployment: Relay, payload: Any, **options: Any
) -> requests.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    url = f"{deployment.url}/webhooks/zendesk"
    return post(url, body, zendesk_headers(body, **options))


def signed_intercom(deployment: Relay, payload: Any) -> requests.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    url = f"{deployment.url}/webhooks/intercom"
    return post(url, body, intercom_headers(body))


def admin(deployment: Relay, path: str, method: str = "GET") -> requests.Response:
    return requests.request(
        method,
        f"{deployment.url}/admin{path}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )


def wait_until_finished(deployment: Relay, job_ids: list[int]) -> list[dict[str, Any]]:
    """Wait until the worker has taken every job to done or dead; return them."""

    def finished() -> list[dict[str, Any]] | None:
        jobs = [admin(deployment, f"/jobs/{job_id}").json() for job_id in job_ids]
        return jobs if all(job["state"] in ("done", "dead") for job in jobs) else None

    result: list[dict[str, Any]] = wait_for(
        finished, timeout=60, interval=0.2, message=f"jobs {job_ids} to finish"
    )
    return result


# -- the body limit ---------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413_before_it_ends(deployment: Relay) -> None:
    chunk = b" " * 8192
    with connection(deployment.url) as sock:
        sock.sendall(
            request_head(
                "/webhooks/zendesk",
                Content_Type="application/json",
                Transfer_Encoding="chunked",
            )
        )
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # No last chunk: a server that wanted the whole body would wait forever.
        status, headers, body = read_answer(sock)

    assert status == 413
    assert json.loads(body) == {"error": "body_too_large"}
    assert REQUEST_ID.match(headers["x-request-id"])


def test_a_content_length_over_the_limit_is_413_without_waiting_for_the_body(
    deployment: Relay,
) -> None:
    with connection(deployment.url, timeout=5) as sock:
        sock.sendall(
            request_head(
                "/webhooks/intercom",
                Content_Type="application/json",
                Content_Length=str(100 * MAX_BODY_BYTES),
            )
        )
        started = time.monotonic()
        status, _, body = read_answer(sock)

    assert status == 413
    assert json.loads(body) == {"error": "body_too_large"}
    assert time.monotonic() - started < 5


class EndlessBody:
    """A request body that never ends, counting what the application reads."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("the application asked for the whole body")
        self.read_bytes += size
        return b" " * size

    def readline(self, size: int = -1) -> bytes:
        raise AssertionError("the application read the body by lines")


def test_the_application_reads_at_most_one_byte_past_the_limit(app: Flask) -> None:
    endless = EndlessBody()
    environ = {
        "wsgi.input": endless,
        # gunicorn's promise that a body without a length ends by itself.
        "wsgi.input_terminated": True,
        "CONTENT_TYPE": "application/json",
    }

    response = app.test_client().post("/webhooks/zendesk", environ_overrides=environ)

    assert response.status_code == 413
    assert response.json == {"error": "body_too_large"}
    assert endless.read_bytes <= MAX_BODY_BYTES + 1


def test_a_body_just_at_the_limit_is_read_and_one_byte_more_is_not(
    deployment: Relay,
) -> None:
    padding = b" " * (MAX_BODY_BYTES - 2)
    at_limit = b"{" + padding + b"}"
    assert len(at_limit) == MAX_BODY_BYTES

    assert signed_zendesk(deployment, at_limit).status_code == 422
    over = signed_zendesk(deployment, at_limit + b" ")
    assert (over.status_code, over.json()) == (413, {"error": "body_too_large"})


# -- deep, huge and strange JSON ------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def lone_surrogate() -> bytes:
    """A valid event whose subject is half of a surrogate pair, as a JSON escape."""
    payload = factories.zendesk_tags_changed()
    payload["detail"]["subject"] = "\ud800"
    body = json.dumps(payload).encode()
    assert b'"\\ud800"' in body
    return body


def many_tags(count: int) -> dict[str, Any]:
    payload = factories.zendesk_tags_changed()
    payload["event"]["tags_added"] = [f"t{i}" for i in range(count)]
    payload["event"]["tags_added"].append("bugpilot_screenshot")
    return payload


def many_intercom_tags(count: int) -> dict[str, Any]:
    payload = factories.intercom_conversation_tagged()
    tags = payload["data"]["item"]["tags_added"]["tags"]
    tags.extend({"type": "tag", "id": str(i), "name": f"t{i}"} for i in range(count))
    return payload


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (nested(30_000), 422, "invalid_payload"),
        (b'{"ticket_id": ' + b"7" * 20_000 + b"}", 422, "invalid_payload"),
        (lone_surrogate(), 422, "invalid_payload"),
        (json.dumps(list(range(10_000))).encode(), 422, "invalid_payload"),
        (
            json.dumps({str(i): i for i in range(4_000)}).encode(),
            422,
            "invalid_payload",
        ),
        (b'{"a": NaN}', 400, "malformed_json"),
        (b'{"a": "\xff"}', 400, "malformed_json"),
        (b'{"a": 1', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (nested(MAX_BODY_BYTES), 413, "body_too_large"),
    ],
    ids=[
        "deep",
        "long-number",
        "lone-surrogate",
        "long-list",
        "many-keys",
        "nan",
        "not-utf8",
        "truncated",
        "empty",
        "over-the-limit",
    ],
)
def test_strange_json_is_refused_cleanly(
    deployment: Relay, body: bytes, status: int, error: str
) -> None:
    marks = [len(process.log()) for process in deployment.processes]
    for response in (
        signed_zendesk(deployment, body),
        signed_intercom(deployment, body),
    ):
        assert response.status_code == status, response.text
        assert response.json()["error"] == error
    for process, mark in zip(deployment.processes, marks, strict=False):
        assert "Traceback" not in process.log()[mark:]


@pytest.mark.parametrize(
    "payload",
    [many_tags(6_000), many_intercom_tags(800)],
    ids=["zendesk-6000-tags", "intercom-800-tags"],
)
def test_a_large_valid_event_is_taken_in_time(
    deployment: Relay, payload: dict[str, Any]
) -> None:
    send = signed_intercom if "topic" in payload else signed_zendesk
    started = time.monotonic()
    response = send(deployment, payload)

    assert response.status_code in (200, 202), response.text
    assert time.monotonic() - started < 5


# -- signatures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "fresh"),
    [
        (-(TOLERANCE + 30), False),
        (-(TOLERANCE - 30), True),
        (TOLERANCE - 30, True),
        (TOLERANCE + 30, False),
        (-86_400 * 365, False),
        (86_400 * 365, False),
    ],
)
def test_the_timestamp_tolerance_holds_in_both_directions(
    deployment: Relay, offset: float, fresh: bool
) -> None:
    response = signed_zendesk(
        deployment, factories.zendesk_tags_changed(added=()), offset=offset
    )

    if fresh:
        assert response.json() == {"status": "ignored", "reason": "no_tags_added"}
    else:
        assert (response.status_code, response.json()) == (
            401,
            {"error": "stale_timestamp"},
        )


def test_a_stale_timestamp_is_said_only_of_an_authentic_signature(
    deployment: Relay,
) -> None:
    body = json.dumps(factories.zendesk_tags_changed()).encode()
    headers = zendesk_headers(body, secret="not-a-secret-relay-holds", offset=-3600)

    response = post(f"{deployment.url}/webhooks/zendesk", body, headers)

    assert response.json() == {"error": "invalid_signature"}


def test_every_secret_of_the_rotation_lists_is_accepted(deployment: Relay) -> None:
    for secret in (OLD_ZENDESK_SECRET, SANDBOX_ZENDESK_SECRET):
        body = json.dumps(factories.zendesk_tags_changed(added=())).encode()
        response = post(
            f"{deployment.url}/webhooks/zendesk",
            body,
            zendesk_headers(body, secret=secret),
        )
        assert response.status_code == 200, secret
    for secret in (OLD_INTERCOM_SECRET, SANDBOX_INTERCOM_SECRET):
        body = json.dumps(factories.intercom_ping()).encode()
        response = post(
            f"{deployment.url}/webhooks/intercom",
            body,
            intercom_headers(body, secret=secret),
        )
        assert response.json() == {"status": "ignored", "reason": "ping"}, secret


class Spy:
    """Records every ``hmac.compare_digest`` call and answers as the real one."""

    def __init__(self, real: Callable[[Any, Any], bool]) -> None:
        self.real = real
        self.calls: list[tuple[Any, Any]] = []

    def __call__(self, given: Any, expected: Any) -> bool:
        self.calls.append((given, expected))
        return self.real(given, expected)


@pytest.fixture
def compare_digest(monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(hmac.compare_digest)
    # relay's modules look the function up on the hmac module at each call.
    monkeypatch.setattr(hmac, "compare_digest", spy)
    return spy


ROTATION = ["first-secret", "second-secret", "third-secret"]


@pytest.mark.parametrize("signer", [*ROTATION, "stranger"])
def test_zendesk_compares_every_secret_in_constant_time(
    compare_digest: Spy, signer: str
) -> None:
    body, stamp = b'{"id": 1}', utc_stamp()
    headers = {
        zendesk.SIGNATURE_HEADER: zendesk_signature(body, stamp, signer),
        zendesk.TIMESTAMP_HEADER: stamp,
    }

    try:
        zendesk.verify_signature(body, headers, ROTATION, tolerance=TOLERANCE)
    except InvalidSignature:
        assert signer not in ROTATION
    else:
        assert signer in ROTATION

    # Every secret is compared, whichever signed, so timing tells nothing.
    expected = {zendesk_signature(body, stamp, s).encode() for s in ROTATION}
    assert {bytes(second) for _, second in compare_digest.calls} == expected
    assert len(compare_digest.calls) == len(ROTATION)


@pytest.mark.parametrize("signer", [*ROTATION, "stranger"])
def test_intercom_compares_every_secret_in_constant_time(
    compare_digest: Spy, signer: str
) -> None:
    body = b'{"topic": "ping"}'
    headers = {intercom.SIGNATURE_HEADER: intercom_signature(body, signer)}

    try:
        intercom.verify_signature(body, headers, ROTATION)
    except InvalidSignature:
        assert signer not in ROTATION
    else:
        assert signer in ROTATION

    expected = {intercom_signature(body, s).encode() for s in ROTATION}
    assert {bytes(second) for _, second in compare_digest.calls} == expected
    assert len(compare_digest.calls) == len(ROTATION)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {ADMIN_TOKEN}", 200),
        (f"bearer {ADMIN_TOKEN}", 200),
        (f"Bearer {ADMIN_TOKEN[:-1]}", 401),
        (f"Bearer {ADMIN_TOKEN}0", 401),
        ("Bearer ", 401),
    ],
)
def test_the_admin_token_is_compared_in_constant_time(
    app: Flask, compare_digest: Spy, authorization: str, status: int
) -> None:
    response = app.test_client().get(
        "/admin/jobs", headers={"Authorization": authorization}
    )

    assert response.status_code == status
    assert [bytes(expected) for _, expected in compare_digest.calls] == [
        ADMIN_TOKEN.encode()
    ]


SECRET_WORDS = re.compile(r"secret|signature|token|digest|hmac|password", re.I)
CHECKED_SOURCES = ["relay/app.py", "relay/providers/__init__.py"] + [
    f"relay/providers/{name}.py" for name in ("zendesk", "intercom")
]


@pytest.mark.parametrize("source", CHECKED_SOURCES)
def test_no_secret_is_compared_with_plain_equality(source: str) -> None:
    tree = ast.parse((REPO / source).read_text())
    plain = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
    offending = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, plain) for op in node.ops):
            continue
        words = [
            part.id if isinstance(part, ast.Name) else part.attr
            for part in ast.walk(node)
            if isinstance(part, ast.Name | ast.Attribute)
        ]
        words += [
            part.value
            for part in ast.walk(node)
            if isinstance(part, ast.Constant) and isinstance(part.value, str)
        ]
        if any(SECRET_WORDS.search(word) for word in words):
            offending.append(f"{source}:{node.lineno}: {ast.unparse(node)}")

    assert offending == []


# -- secrets stay secret ---------------------------------------------------------------


def zendesk_basic_credentials() -> str:
    pair = f"{SANDBOX_ZENDESK_EMAIL}/token:{SANDBOX_ZENDESK_TOKEN}"
    return base64.b64encode(pair.encode()).decode()


def test_no_secret_reaches_a_log_an_answer_or_the_metrics(deployment: Relay) -> None:
    answers: list[requests.Response] = []
    zendesk_url = f"{deployment.url}/webhooks/zendesk"
    intercom_url = f"{deployment.url}/webhooks/intercom"

    body = json.dumps(factories.zendesk_tags_changed()).encode()
    for secret in (OLD_ZENDESK_SECRET, SANDBOX_ZENDESK_SECRET, "wrong-secret"):
        answers.append(post(zendesk_url, body, zendesk_headers(body, secret=secret)))
    # A secret sent in place of a signature is a wrong signature, and not logged.
    for secret in SECRETS:
        headers = zendesk_headers(body)
        headers[zendesk.SIGNATURE_HEADER] = secret
        answers.append(post(zendesk_url, body, headers))
        answers.append(post(intercom_url, body, {"X-Hub-Signature": secret}))
        answers.append(post(intercom_url, body, {"X-Hub-Signature": f"sha1={secret}"}))
    conversation = json.dumps(factories.intercom_conversation_tagged()).encode()
    for secret in (SANDBOX_INTERCOM_SECRET, OLD_INTERCOM_SECRET, "wrong"):
        answers.append(
            post(
                intercom_url,
                conversation,
                intercom_headers(conversation, secret=secret),
            )
        )
    for authorization in (
        f"Bearer {ADMIN_TOKEN}",
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer x{ADMIN_TOKEN}",
        f"Basic {ADMIN_TOKEN}",
        ADMIN_TOKEN,
    ):
        answers.append(
            requests.get(
                f"{deployment.url}/admin/jobs",
                headers={"Authorization": authorization},
                timeout=10,
            )
        )
    job_ids = [
        job_id
        for answer in answers
        if answer.status_code == 202
        for job_id in answer.json()["jobs"]
    ]
    assert job_ids, "no delivery was accepted"
    # Outbound calls carry the API credentials: let the worker make them.
    jobs = wait_until_finished(deployment, job_ids)
    answers.append(requests.get(f"{deployment.url}/metrics", timeout=10))
    answers.append(admin(deployment, "/jobs?limit=500"))

    seen = [json.dumps(jobs)]
    seen += [f"{dict(answer.headers)} {answer.text}" for answer in answers]
    seen.append(deployment.logs())
    everything = "\n".join(seen)
    for secret in (*SECRETS, zendesk_basic_credentials()):
        assert secret not in everything, f"a secret leaked: {secret[:4]}..."


# -- admin -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/jobs"),
        ("GET", "/admin/jobs/1"),
        ("POST", "/admin/jobs/1/retry"),
        ("POST", "/admin/jobs/retry"),
        ("POST", "/admin/jobs/purge"),
        ("GET", "/admin/rules/explain?provider=zendesk&tag=x"),
        ("POST", "/admin/rules/reload"),
    ],
)
def test_admin_needs_the_token_and_is_absent_without_one(
    deployment: Relay, method: str, path: str
) -> None:
    if len(deployment.urls) == 1:
        deployment.start_web(RELAY_ADMIN_TOKEN="")
    with_token, without_token = deployment.urls[:2]
    token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    refused = requests.request(method, with_token + path, timeout=10)
    wrong = requests.request(
        method, with_token + path, headers={"Authorization": "Bearer x"}, timeout=10
    )
    allowed = requests.request(method, with_token + path, headers=token, timeout=10)
    disabled = requests.request(method, without_token + path, headers=token, timeout=10)

    assert (refused.status_code, refused.json()) == (401, {"error": "unauthorized"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "unauthorized"})
    assert allowed.status_code not in (401, 403)
    assert (disabled.status_code, disabled.json()) == (404, {"error": "not_found"})


# -- no URL from a payload is ever fetched ---------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket nobody should ever connect to."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def assert_never_connected(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        connection, _ = server.accept()
        connection.close()


def url_payloads(base: str) -> list[tuple[str, dict[str, Any]]]:
    """Signed deliveries whose every text field is a URL on ``base``."""
    trigger = factories.zendesk_trigger(
        ticket=f"{base}/ticket", tags=f"bugpilot_screenshot bugpilot_session {base}/t"
    )
    trigger.update(
        subject=f"see {base}/subject",
        requester_email=f"{base}/x@example.com",
        requester_external_id=f"{base}/external",
        current_user_id=f"{base}/user",
        links={"self": f"{base}/self", "next_page": f"{base}/next"},
    )
    event = factories.zendesk_tags_changed(
        ticket=f"{base}/ticket",
        added=("bugpilot_screenshot", "bugpilot_session"),
        requester=f"{base}/requester",
        actor=f"{base}/actor",
    )
    event["detail"]["subject"] = f"{base}/subject"
    event["url"] = f"{base}/event"
    conversation = factories.intercom_conversation_tagged(
        conversation=f"{base}/conversation", applied_by=f"{base}/admin"
    )
    item = conversation["data"]["item"]
    item["title"] = f"{base}/title"
    item["contacts"]["contacts"][0].update(id=f"{base}/contact", external_id=None)
    item["source"]["author"].update(email=None, id=f"{base}/author")
    item["tags_added"]["tags"][0]["id"] = f"{base}/tag"
    contact = {
        "type": "notification_event",
        "topic": "contact.user.tag.created",
        "id": f"notif_{time.time_ns()}",
        "data": {
            "item": {
                "tag": {"id": f"{base}/tag", "name": "bugpilot_screenshot"},
                "contact": {"id": f"{base}/contact", "email": f"{base}/e@x.io"},
            }
        },
    }
    return [
        ("zendesk", trigger),
        ("zendesk", event),
        ("intercom", conversation),
        ("intercom", contact),
    ]


def test_relay_never_fetches_a_url_from_a_webhook_payload(
    deployment: Relay, listener: socket.socket
) -> None:
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    job_ids = []
    for provider, payload in url_payloads(base):
        send = signed_zendesk if provider == "zendesk" else signed_intercom
        response = send(deployment, payload)
        assert response.status_code == 202, response.text
        job_ids += response.json()["jobs"]

    jobs = wait_until_finished(deployment, job_ids)

    assert len(jobs) >= 4
    assert_never_connected(listener)


class ForeignBugpilot(BaseHTTPRequestHandler):
    """A Bugpilot stand-in that answers with a sessionInfoUrl on another host."""

    session_info_url: ClassVar[str] = ""
    calls: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ForeignBugpilot.calls.append(self.path)
        body = json.dumps(
            {"ok": True, "message": "sent", "sessionInfoUrl": self.session_info_url}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


FOLLOW_REPORT_RULES = """
version: 1
rules:
  - name: screenshot
    when: {tag: bugpilot_screenshot}
    action: upload-screenshot
    note: "Bugpilot screenshot: {session_info_url}"
    follow_report: true
"""


def test_a_foreign_session_info_url_is_never_fetched(
    relay: Relay, listener: socket.socket, tmp_path: Path
) -> None:
    foreign = f"http://127.0.0.1:{listener.getsockname()[1]}"
    ForeignBugpilot.session_info_url = f"{foreign}/api/v1/session-info/ws/token"
    ForeignBugpilot.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ForeignBugpilot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rules = tmp_path / "follow.yaml"
    rules.write_text(FOLLOW_REPORT_RULES)
    try:
        overrides = {
            "BUGPILOT_API_URL": f"http://127.0.0.1:{server.server_address[1]}",
            "RELAY_RULES_FILE": str(rules),
            "RELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        relay.env.update(overrides)
        relay.start_web()
        relay.start_worker()
        response = signed_zendesk(relay, factories.zendesk_trigger())
        assert response.status_code == 202, response.text

        (job,) = wait_until_finished(relay, response.json()["jobs"])
    finally:
        server.shutdown()
        server.server_close()

    assert ForeignBugpilot.calls == ["/api/v1/action"]
    assert job["session_info_url"] == ForeignBugpilot.session_info_url
    assert (job["state"], job["dead_reason"]) == ("dead", "foreign_session_url")
    assert job["report_url"] is None
    assert_never_connected(listener)


# -- request ids -----------------------------------------------------------------------


def test_every_answer_carries_a_request_id_that_the_logs_carry(
    deployment: Relay,
) -> None:
    url = deployment.url
    body = json.dumps(factories.zendesk_tags_changed(added=())).encode()
    token = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers = [
        requests.get(f"{url}/healthz", timeout=10),
        requests.get(f"{url}/readyz", timeout=10),
        requests.get(f"{url}/metrics", timeout=10),
        requests.get(f"{url}/openapi.yaml", timeout=10),
        requests.get(f"{url}/no/such/path", timeout=10),
        requests.get(f"{url}/webhooks/zendesk", timeout=10),
        requests.get(f"{url}/admin/jobs", timeout=10),
        requests.get(f"{url}/admin/jobs", headers=token, timeout=10),
        requests.get(f"{url}/admin/jobs/999999", headers=token, timeout=10),
        post(f"{url}/webhooks/zendesk", body, zendesk_headers(body)),
        post(f"{url}/webhooks/zendesk", body, {"Content-Type": "application/json"}),
        post(f"{url}/webhooks/intercom", b"x", intercom_headers(b"x")),
        post(
            f"{url}/webhooks/intercom",
            b"{}",
            {**intercom_headers(b"{}"), "Content-Type": "text/plain"},
        ),
        post(f"{url}/webhooks/zendesk", b" " * (MAX_BODY_BYTES + 1), {}),
    ]
    statuses = {answer.status_code for answer in answers}
    assert {200, 400, 401, 404, 405, 413, 415} <= statuses

    ids = [answer.headers.get("X-Request-Id", "") for answer in answers]
    assert all(REQUEST_ID.match(request_id) for request_id in ids), ids
    assert len(set(ids)) == len(ids)
    wait_for(
        lambda: all(request_id in deployment.logs() for request_id in ids),
        timeout=10,
        message="every request id in the logs",
    )


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("trace-0123456789", True),
        ("a.b_c-d.e_f", True),
        ("short", False),
        ("x" * 65, False),
        ("has space inside", False),
        ("new\tline", False),
        ('quote"and{brace}', False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_it_is_plain(
    deployment: Relay, given: str, kept: bool
) -> None:
    answer = requests.get(
        f"{deployment.url}/healthz", headers={"X-Request-Id": given}, timeout=10
    )

    returned = answer.headers["X-Request-Id"]
    assert (returned == given) is kept
    assert REQUEST_ID.match(returned)


# -- values the database refuses -------------------------------------------------------


@pytest.mark.postgres
def test_a_value_postgresql_refuses_is_422_and_not_a_store_outage(
    postgres_url: str, tmp_path: Path
) -> None:
    store = fresh_postgres_store(postgres_url)
    client = create_app(
        app_settings(tmp_path), store=store, rules=parse_rules(factories.RULES)
    ).test_client()
    payload = factories.zendesk_tags_changed()
    # PostgreSQL text cannot hold NUL; a retry would fail the same way forever.
    payload["detail"]["subject"] = "before\u0000after"
    body = json.dumps(payload).encode()

    response = client.post(
        "/webhooks/zendesk", data=body, headers=zendesk_headers(body)
    )
    store.close()

    assert response.status_code == 422, response.json
    assert response.json["error"] == "invalid_payload"
    assert "Retry-After" not in response.headers
