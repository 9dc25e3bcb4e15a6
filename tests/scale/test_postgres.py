"""Relay on PostgreSQL: migrations, start-up errors, a database that goes away."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from relay.sandbox import SANDBOX_ZENDESK_SECRET
from tests import factories as f
from tests.e2e.conftest import ADMIN_TOKEN, Relay
from tests.harness import wait_for
from tests.scale.proxy import CuttableProxy

pytestmark = pytest.mark.postgres


def relay_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def send(url: str, payload) -> requests.Response:
    body = f.encode(payload)
    headers = f.zendesk_headers(body, secret=SANDBOX_ZENDESK_SECRET)
    return requests.post(
        f"{url}/webhooks/zendesk", data=body, headers=headers, timeout=15
    )


def test_an_unreachable_database_is_a_clear_start_up_error(relay: Relay) -> None:
    env = {
        **relay.env,
        "RELAY_DATABASE_URL": "postgresql+psycopg://relay:secret-pw@127.0.0.1:1/relay",
    }
    for command in ("web", "worker"):
        result = relay_command(env, command)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "cannot reach the database" in lines[0]
        assert "secret-pw" not in result.stderr


def test_an_unmigrated_database_is_refused_until_relay_db_upgrade(
    relay: Relay, pg_database
) -> None:
    url, _name = pg_database
    env = {**relay.env, "RELAY_DATABASE_URL": url}
    refused = relay_command(env, "worker")
    assert refused.returncode == 2
    assert "relay db upgrade" in refused.stderr

    upgraded = relay_command(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    again = relay_command(env, "db", "upgrade")
    assert again.returncode == 0, again.stderr

    relay.env["RELAY_DATABASE_URL"] = url
    relay.start_web()
    assert requests.get(f"{relay.url}/readyz", timeout=5).status_code == 200


def test_while_the_database_is_down_webhooks_get_503_and_nothing_is_lost(
    relay: Relay, pg_database
) -> None:
    url, _name = pg_database
    proxy = CuttableProxy("127.0.0.1", 5432)
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    relay.env["RELAY_DATABASE_URL"] = proxied
    try:
        assert relay_command(relay.env, "db", "upgrade").returncode == 0
        relay.start_web()
        worker = relay.start_worker()

        first = send(relay.url, f.zendesk_tags_changed(ticket="1"))
        assert first.status_code == 202
        wait_for(
            lambda: relay.zendesk.state()["tickets"].get("1", {}).get("comments"),
            timeout=30,
            message=relay.logs,
        )

        proxy.cut()
        down = [send(relay.url, f.zendesk_tags_changed(ticket=str(n))) for n in (2, 3)]
        for response in down:
            assert response.status_code == 503, response.text
            assert response.json() == {"error": "store_unavailable"}
            assert int(response.headers["Retry-After"]) > 0
        ready = requests.get(f"{relay.url}/readyz", timeout=15)
        assert ready.status_code == 503
        assert "store_unreachable" in ready.json()["reasons"]
        time.sleep(1.0)  # the worker's claims fail meanwhile
        proxy.restore()

        # The helpdesk retries what got a 503; now it is stored.
        for ticket in ("2", "3"):
            assert (
                send(relay.url, f.zendesk_tags_changed(ticket=ticket)).status_code
                == 202
            )

        def all_done():
            jobs = requests.get(
                f"{relay.url}/admin/jobs",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=10,
            ).json()["jobs"]
            states = [job["state"] for job in jobs]
            return len(states) == 3 and set(states) == {"done"}

        wait_for(all_done, timeout=60, message=relay.logs)
        assert worker.alive()
        tickets = relay.zendesk.state()["tickets"]
        for ticket in ("1", "2", "3"):
            assert len(tickets[ticket]["comments"]) == 1
        assert relay.bugpilot.state()["action_counts"]["ok"] == 3
    finally:
        proxy.close()


def test_a_worker_that_loses_its_connection_mid_job_loses_nothing(
    relay: Relay, pg_database
) -> None:
    url, _name = pg_database
    proxy = CuttableProxy("127.0.0.1", 5432)
    relay.env["RELAY_DATABASE_URL"] = url
    try:
        assert relay_command(relay.env, "db", "upgrade").returncode == 0
        relay.start_web()
        # Bugpilot answers slowly, so the connection drops while jobs are in hand.
        relay.bugpilot.set_faults(latency_ms=1500)
        proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        worker = relay.start_worker(RELAY_DATABASE_URL=proxied)
        for ticket in range(10, 16):
            assert (
                send(relay.url, f.zendesk_tags_changed(ticket=str(ticket))).status_code
                == 202
            )
        wait_for(
            lambda: relay.bugpilot.state()["action_counts"]["total"] >= 1,
            timeout=30,
            message=relay.logs,
        )
        proxy.cut()
        time.sleep(2.0)
        proxy.restore()

        def finished():
            jobs = requests.get(
                f"{relay.url}/admin/jobs",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=10,
            ).json()["jobs"]
            return jobs if all(j["state"] in ("done", "dead") for j in jobs) else None

        jobs = wait_for(finished, timeout=90, message=relay.logs)
        assert worker.alive()
        assert [job["state"] for job in jobs] == ["done"] * 6, jobs
        captures = relay.bugpilot.state()["ok_by_description"]
        assert all(count == 1 for count in captures.values()), captures
        tickets = relay.zendesk.state()["tickets"]
        for ticket in range(10, 16):
            assert len(tickets[str(ticket)]["comments"]) == 1
    finally:
        proxy.close()
