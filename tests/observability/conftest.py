"""One relay deployment, exercised on every path an operator watches.

The ``observed`` deployment is laid out as ``relay run`` lays it out, only wider:
``relay web`` with four gunicorn workers and two ``relay worker`` processes, all
with the same ``PROMETHEUS_MULTIPROC_DIR``, the workers started once the web
server's start-up wipe is done. It receives deliveries that are accepted,
ignored and rejected for several reasons, runs jobs that end done or dead (an
offline user, a customer without the user field), and records what it sent so
tests can compare the scrape and the logs with it.
"""

from __future__ import annotations

import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from relay.providers import zendesk as zendesk_provider
from relay.sandbox import (
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_ZENDESK_SECRET,
    Sandbox,
)
from tests import factories as f
from tests.harness import RelayProcess, free_port, wait_for
from tests.observability.support import (
    PATIENCE,
    Deployment,
    Scrape,
    Web,
    jobs_in_state,
    metrics_dir,
    read,
    send_intercom,
    send_zendesk,
)

CAPTURES = 12
"""Screenshot deliveries; one meets an offline user and dies, the rest are done."""

STALE_COUNT = 1000.0
"""What a previous run left in the metrics directory; the wipe must drop it."""

EMAIL = "jane@example.com"
MASKED_EMAIL = "j***@example.com"


@pytest.fixture(scope="package")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as running:
        yield running


@pytest.fixture
def deployment(sandbox: Sandbox, tmp_path: Path) -> Iterator[Deployment]:
    """An empty deployment for a test of its own; stopped afterwards."""
    sandbox.bugpilot.reset()
    sandbox.zendesk.reset()
    sandbox.intercom.reset()
    relay = Deployment(sandbox, tmp_path)
    yield relay
    relay.stop()


@dataclass
class Observed:
    """The exercised deployment and everything that was sent to it."""

    deployment: Deployment
    web: Web
    workers: list[RelayProcess]
    metrics_dir: Path
    webhooks: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejections: Counter[tuple[str, str]] = field(default_factory=Counter)
    signatures: set[str] = field(default_factory=set)
    done: int = CAPTURES - 1
    """Jobs captured and noted; also the Bugpilot calls that answered ok."""
    offline: int = 1
    """Bugpilot calls that met an offline user (each job dies, with a note)."""
    dead: int = 2
    """The offline job and the one whose customer has no external id."""

    @property
    def sent(self) -> int:
        return sum(self.webhooks.values())

    def scrape(self) -> Scrape:
        return Scrape.of(self.web.url)


@pytest.fixture(scope="package")
def observed(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("observed")
    relay = Deployment(sandbox, root)
    directory = Path(metrics_dir(root, "metrics"))
    leave_stale_counts(directory)
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    try:
        web = relay.start_web(RELAY_WEB_WORKERS="4", **shared)
        # Only now: the web server wiped the directory before its workers booted.
        workers = [
            relay.start_worker(name, RELAY_WORKER_THREADS="2", **shared)
            for name in ("worker-a", "worker-b")
        ]
        observed = Observed(relay, web, workers, directory)
        exercise(observed)
        yield observed
    finally:
        relay.stop()


@dataclass
class RunRecord:
    """A whole ``relay run``, start to stop: its last scrape, its output."""

    scrape: Scrape
    output: str
    exit_code: int
    jobs: int
    worker_port_answered: bool
    """Whether anything answered on RELAY_WORKER_METRICS_BIND, which was set."""


@pytest.fixture(scope="package")
def relay_run(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunRecord]:
    """``relay run`` runs a few jobs and stops on SIGTERM."""
    relay = Deployment(sandbox, tmp_path_factory.mktemp("relay-run"))
    jobs = 4
    worker_port = free_port()
    try:
        run = relay.start_run(
            RELAY_WEB_WORKERS="2",
            RELAY_WORKER_METRICS_BIND=f"127.0.0.1:{worker_port}",
        )
        for number in range(jobs):
            payload = f.zendesk_tags_changed(ticket=str(200 + number))
            answer = send_zendesk(run.url, payload)
            assert answer.status_code == 202, answer.text
        wait_for(
            lambda: len(jobs_in_state(run.url, "done")) == jobs,
            timeout=PATIENCE,
            message="relay run did not end its jobs",
        )
        # A job is done in the store a moment before the histogram sees it.
        scrape = wait_for(
            lambda: (
                (found := Scrape.of(run.url)).sum("relay_job_attempts_count") == jobs
                and found
            ),
            timeout=PATIENCE,
        )
        with socket.socket() as probe:
            answered = probe.connect_ex(("127.0.0.1", worker_port)) == 0
        exit_code = run.process.terminate()
        yield RunRecord(scrape, read(run.process), exit_code, jobs, answered)
    finally:
        relay.stop()


def leave_stale_counts(directory: Path) -> None:
    """Write the files a crashed previous run would have left behind."""
    stale = MmapedDict(str(directory / "counter_4000000.db"))
    key = mmap_key(
        "relay_webhooks_total",
        "relay_webhooks_total",
        ["provider", "outcome"],
        ["zendesk", "accepted"],
        "stale",
    )
    stale.write_value(key, STALE_COUNT, 0.0)
    stale.close()


def exercise(observed: Observed) -> None:
    """Send every kind of delivery; wait until every job has ended."""
    relay, url = observed.deployment, observed.web.url
    relay.zendesk.add_user(id=555, email="nobody@example.com")
    # The next Bugpilot call meets an offline user; the rules do not wait for one.
    # The latency keeps a worker busy long enough for the other to claim jobs.
    relay.bugpilot.set_faults(offline_next=1, latency_ms=20)

    deliveries = deliveries_for(observed, url)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda send: send(), deliveries))
    assert all(answer.status_code < 500 for answer in answers), [
        answer.text for answer in answers
    ]

    first = answers[0].request
    duplicate = requests.post(
        first.url, data=first.body, headers=dict(first.headers), timeout=10
    )
    assert duplicate.json() == {"status": "ignored", "reason": "duplicate"}
    observed.webhooks["zendesk", "ignored"] += 1

    # A secret in a URL reaches the access log; the scrubber must catch it.
    probe = requests.get(f"{url}/probe/{SANDBOX_ZENDESK_SECRET}", timeout=10)
    assert probe.status_code == 404

    wait_for(
        lambda: (
            len(jobs_in_state(url, "done")) == observed.done
            and len(jobs_in_state(url, "dead")) == observed.dead
        ),
        timeout=PATIENCE,
        message="jobs did not end",
    )


def deliveries_for(
    observed: Observed, url: str
) -> list[Callable[[], requests.Response]]:
    """One callable per delivery, each counted in ``observed`` as it will end."""
    sends: list[Callable[[], requests.Response]] = []

    def expect(provider: str, outcome: str, reason: str | None = None) -> None:
        observed.webhooks[provider, outcome] += 1
        if reason is not None:
            observed.rejections[provider, reason] += 1

    def zendesk(payload: object, **options: object) -> Callable[[], requests.Response]:
        def send() -> requests.Response:
            answer = send_zendesk(url, payload, **options)
            signature = answer.request.headers.get(zendesk_provider.SIGNATURE_HEADER)
            if signature:
                observed.signatures.add(str(signature))
            return answer

        return send

    for number in range(CAPTURES):
        sends.append(zendesk(f.zendesk_tags_changed(ticket=str(35436 + number))))
        expect("zendesk", "accepted")
    sends.append(
        zendesk(
            f.zendesk_tags_changed(
                ticket="777", added=("bugpilot_session",), requester="555"
            )
        )
    )
    expect("zendesk", "accepted")
    for _ in range(2):
        sends.append(zendesk(f.zendesk_tags_changed(added=("unrelated",))))
        expect("zendesk", "ignored")

    ping = f.intercom_ping()
    ping["id"] = EMAIL  # a field the sender controls, logged as the delivery id
    sends.append(lambda: send_intercom(url, ping))
    sends.append(lambda: send_intercom(url, f.intercom_ping()))
    expect("intercom", "ignored")
    expect("intercom", "ignored")

    for _ in range(2):
        sends.append(zendesk(f.zendesk_tags_changed(), secret="not-the-secret"))
        expect("zendesk", "rejected", "invalid_signature")
    sends.append(lambda: unsigned_zendesk(url))
    expect("zendesk", "rejected", "missing_signature")
    sends.append(lambda: signed_zendesk_body(url, b"{not json"))
    expect("zendesk", "rejected", "malformed_json")
    sends.append(lambda: intercom_as_text(url))
    expect("intercom", "rejected", "unsupported_media_type")
    return sends


def unsigned_zendesk(url: str) -> requests.Response:
    return requests.post(
        f"{url}/webhooks/zendesk",
        data=f.encode(f.zendesk_tags_changed()),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )


def signed_zendesk_body(url: str, body: bytes) -> requests.Response:
    headers = f.zendesk_headers(body, secret=SANDBOX_ZENDESK_SECRET)
    return requests.post(
        f"{url}/webhooks/zendesk", data=body, headers=headers, timeout=10
    )


def intercom_as_text(url: str) -> requests.Response:
    body = f.encode(f.intercom_conversation_tagged(notification_id=str(uuid.uuid4())))
    headers = f.intercom_headers(body, secret=SANDBOX_INTERCOM_SECRET)
    headers["Content-Type"] = "text/plain"
    return requests.post(
        f"{url}/webhooks/intercom", data=body, headers=headers, timeout=10
    )
