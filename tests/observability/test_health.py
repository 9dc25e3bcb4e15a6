"""Health and readiness of a real ``relay web``, and its scrape while the store is gone.

``/healthz`` answers while the process lives; ``/readyz`` answers 503 with the
reason when the store cannot be reached or no valid rules are loaded, and 200
again once that is over, without a restart.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url

from tests import factories as f
from tests.conftest import fresh_postgres_store
from tests.harness import wait_for
from tests.observability.support import (
    ADMIN_TOKEN,
    PATIENCE,
    Deployment,
    Scrape,
    TcpProxy,
    events,
    json_lines,
    metrics_dir,
    read,
    send_zendesk,
)


def get(url: str) -> requests.Response:
    return requests.get(url, timeout=10)


@pytest.mark.postgres
def test_when_the_store_goes_away_relay_is_unready_but_alive_and_still_scraped(
    deployment: Deployment, postgres_url: str
) -> None:
    fresh_postgres_store(postgres_url).close()
    database = make_url(postgres_url)
    proxy = TcpProxy((database.host or "127.0.0.1", database.port or 5432)).restore()
    through_proxy = database.set(host="127.0.0.1", port=proxy.port)
    web = deployment.start_web(
        RELAY_DATABASE_URL=through_proxy.render_as_string(hide_password=False),
        PROMETHEUS_MULTIPROC_DIR=metrics_dir(deployment.root, "metrics"),
        RELAY_WEB_WORKERS="2",
    )
    try:
        assert send_zendesk(web.url, f.zendesk_tags_changed()).status_code == 202
        assert Scrape.of(web.url).sum("relay_jobs", state="pending") == 1

        proxy.cut()
        unready = get(f"{web.url}/readyz")
        assert unready.status_code == 503
        assert unready.json() == {"status": "unready", "reasons": ["store_unreachable"]}
        assert get(f"{web.url}/healthz").json() == {"status": "ok"}

        errors = []
        for _ in range(3):
            scrape = Scrape.of(web.url)  # 200, never a 500
            assert not scrape.has("relay_jobs")
            assert not scrape.has("relay_oldest_pending_job_age_seconds")
            assert scrape.sum("relay_webhooks_total") == 1
            errors.append(scrape.sum("relay_store_scrape_errors_total"))
        assert errors[0] >= 1
        assert errors == [errors[0], errors[0] + 1, errors[0] + 2]

        refused = send_zendesk(web.url, f.zendesk_tags_changed())
        assert refused.status_code == 503
        assert refused.json() == {"error": "store_unavailable"}
        assert refused.headers["Retry-After"]

        proxy.restore()
        wait_for(lambda: get(f"{web.url}/readyz").status_code == 200, timeout=PATIENCE)
        back = Scrape.of(web.url)
        assert back.sum("relay_jobs", state="pending") == 1
        assert back.sum("relay_store_scrape_errors_total") == errors[-1]
    finally:
        proxy.cut()

    rejected = events(json_lines(read(web.process)), "webhook rejected")
    assert [line["reason"] for line in rejected] == ["store_unavailable"]


def test_a_worker_that_boots_with_broken_rules_is_unready_until_a_reload(
    deployment: Deployment,
) -> None:
    web = deployment.start_web(
        PROMETHEUS_MULTIPROC_DIR=metrics_dir(deployment.root, "metrics")
    )
    good_rules = deployment.rules.read_text()
    [booted] = [
        line["pid"]
        for line in json_lines(read(web.process))
        if line["event"].startswith("Booting worker")
    ]

    # The file goes bad (an edited ConfigMap), then gunicorn replaces its worker.
    deployment.rules.write_text("version: 1\nrules: []\n")
    os.kill(booted, signal.SIGKILL)
    # A 503 response is falsy, hence the list around it.
    [unready] = wait_for(
        lambda: (answer := get(f"{web.url}/readyz")).status_code == 503 and [answer],
        timeout=PATIENCE,
        message="the replaced worker never answered 503",
    )
    assert unready.json() == {"status": "unready", "reasons": ["no_valid_rules"]}
    assert get(f"{web.url}/healthz").json() == {"status": "ok"}
    refused = send_zendesk(web.url, f.zendesk_tags_changed())
    assert refused.status_code == 503
    assert refused.json() == {"error": "rules_unavailable"}

    lines = json_lines(read(web.process))
    [invalid] = events(lines, "rules invalid")
    assert invalid["level"] == "error"
    assert invalid["path"] == str(deployment.rules)

    deployment.rules.write_text(good_rules)
    reloaded = requests.post(
        f"{web.url}/admin/rules/reload",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert reloaded.status_code == 200, reloaded.text
    assert get(f"{web.url}/readyz").json() == {"status": "ready"}


def test_healthz_needs_neither_store_nor_rules(tmp_path: Path) -> None:
    """The liveness answer is the process's, not its dependencies'."""
    from relay.app import create_app
    from relay.config import Settings

    (tmp_path / "rules.yaml").write_text("version: 1\nrules: []\n")
    settings = Settings(
        bugpilot_api_key="key-for-tests",
        bugpilot_workspace_id="ws_1",
        database_url=f"sqlite:///{tmp_path / 'missing' / 'relay.db'}",
        rules_file=str(tmp_path / "rules.yaml"),
    )
    client = create_app(settings).test_client()
    assert client.get("/healthz").status_code == 200
    unready = client.get("/readyz")
    assert unready.status_code == 503
    assert unready.json == {
        "status": "unready",
        "reasons": ["store_unreachable", "no_valid_rules"],
    }
