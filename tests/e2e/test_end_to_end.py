"""A tag on a helpdesk becomes a Bugpilot capture and an internal note.

Real gunicorn, a real worker process and the emulators, over HTTP on loopback.
"""

from __future__ import annotations

import requests

from relay.sandbox import (
    SANDBOX_BUGPILOT_API_KEY,
    SANDBOX_INTERCOM_SECRET,
    SANDBOX_WORKSPACE_ID,
    SANDBOX_ZENDESK_SECRET,
)
from tests import factories as f
from tests.e2e.conftest import ADMIN_TOKEN, Relay
from tests.harness import wait_for


def send_zendesk(relay: Relay, payload, url: str | None = None) -> requests.Response:
    body = f.encode(payload)
    headers = f.zendesk_headers(body, secret=SANDBOX_ZENDESK_SECRET)
    return requests.post(
        f"{url or relay.url}/webhooks/zendesk", data=body, headers=headers, timeout=10
    )


def send_intercom(relay: Relay, payload) -> requests.Response:
    body = f.encode(payload)
    headers = f.intercom_headers(body, secret=SANDBOX_INTERCOM_SECRET)
    return requests.post(
        f"{relay.url}/webhooks/intercom", data=body, headers=headers, timeout=10
    )


def job(relay: Relay, job_id: int) -> dict:
    return requests.get(
        f"{relay.url}/admin/jobs/{job_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    ).json()


def finished(relay: Relay, job_id: int):
    shown = job(relay, job_id)
    return shown if shown["state"] in ("done", "dead") else None


def test_a_zendesk_tag_becomes_one_capture_and_one_private_comment(
    running: Relay,
) -> None:
    payload = f.zendesk_tags_changed(ticket="35436")
    response = send_zendesk(running, payload)
    assert response.status_code == 202, response.text
    [job_id] = response.json()["jobs"]

    done = wait_for(lambda: finished(running, job_id), message=running.logs)
    assert done["state"] == "done", done

    actions = running.bugpilot.state()["actions"]
    assert len(actions) == 1
    call = actions[0]
    assert call["headers"]["User-Agent"] == "Bugpilot API Client/1.0"
    assert call["api_key_matched"] is True
    assert call["headers"]["Content-Type"] == "application/json"
    assert (call["workspaceId"], call["userId"], call["action"]) == (
        SANDBOX_WORKSPACE_ID,
        "jane@example.com",
        "upload-screenshot",
    )
    assert call["userProvidedDescription"] == "Ticket 35436: Cannot login to mobile app"
    session_info_url = call["sessionInfoUrl"]
    assert session_info_url and done["session_info_url"] == session_info_url

    ticket = running.zendesk.state()["tickets"]["35436"]
    notes = [c for c in ticket["comments"] if session_info_url in c["body"]]
    assert len(notes) == 1
    assert notes[0]["public"] is False

    again = send_zendesk(running, payload)
    assert again.status_code == 200
    assert again.json() == {"status": "ignored", "reason": "duplicate"}
    assert len(running.bugpilot.state()["actions"]) == 1
    assert SANDBOX_BUGPILOT_API_KEY not in running.logs()


def test_an_intercom_conversation_tag_becomes_an_admin_note(running: Relay) -> None:
    response = send_intercom(running, f.intercom_conversation_tagged())
    assert response.status_code == 202, response.text
    [job_id] = response.json()["jobs"]
    done = wait_for(lambda: finished(running, job_id), message=running.logs)
    assert done["state"] == "done", done

    conversation = running.intercom.state()["conversations"]["524"]
    parts = conversation["conversation_parts"]["conversation_parts"]
    notes = [p for p in parts if done["session_info_url"] in p["body"]]
    assert len(notes) == 1
    assert notes[0]["part_type"] == "note"
    assert notes[0]["author"]["id"] == "991267696"


def test_a_user_field_the_customer_lacks_makes_the_job_dead(running: Relay) -> None:
    running.zendesk.add_user(id=555, email="nobody@example.com")
    payload = f.zendesk_tags_changed(
        ticket="777", added=("bugpilot_session",), requester="555"
    )
    [job_id] = send_zendesk(running, payload).json()["jobs"]
    dead = wait_for(lambda: finished(running, job_id), message=running.logs)
    assert dead["state"] == "dead"
    assert dead["dead_reason"] == "missing_user_id"
    assert running.bugpilot.state()["actions"] == []


def test_an_offline_user_gets_an_offline_note_and_no_capture(running: Relay) -> None:
    running.bugpilot.set_offline(["jane@example.com"])
    [job_id] = send_zendesk(running, f.zendesk_tags_changed()).json()["jobs"]
    dead = wait_for(lambda: finished(running, job_id), message=running.logs)
    assert dead["dead_reason"] == "user_not_connected"
    comments = running.zendesk.state()["tickets"]["35436"]["comments"]
    assert len(comments) == 1
    assert "not online" in comments[0]["body"] or "not captured" in comments[0]["body"]
