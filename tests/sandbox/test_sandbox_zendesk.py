"""The Zendesk emulator over real HTTP: auth, users, comments, tags, control."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import requests

from relay.sandbox import (
    SANDBOX_ZENDESK_EMAIL,
    SANDBOX_ZENDESK_TOKEN,
    Sandbox,
    SandboxControl,
)

BASIC = base64.b64encode(
    f"{SANDBOX_ZENDESK_EMAIL}/token:{SANDBOX_ZENDESK_TOKEN}".encode()
).decode()
AUTH = {"Authorization": f"Basic {BASIC}"}


def call(
    sandbox: Sandbox,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] = AUTH,
) -> requests.Response:
    return requests.request(
        method, sandbox.zendesk_url + path, json=body, headers=headers, timeout=5
    )


def note(sandbox: Sandbox, ticket_id: int, comment: Any) -> requests.Response:
    return call(
        sandbox, "PUT", f"/api/v2/tickets/{ticket_id}", {"ticket": {"comment": comment}}
    )


def control(sandbox: Sandbox) -> SandboxControl:
    return SandboxControl(sandbox.zendesk_url)


@pytest.mark.parametrize(
    "headers",
    [
        AUTH,
        {"Authorization": f"Bearer {SANDBOX_ZENDESK_TOKEN}"},
    ],
    ids=["api-token", "oauth"],
)
def test_token_and_oauth_auth_are_accepted(
    sandbox: Sandbox, headers: dict[str, str]
) -> None:
    response = call(sandbox, "GET", "/api/v2/users/me", headers=headers)

    assert response.status_code == 200
    assert response.json()["user"]["id"] == 900001


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + base64.b64encode(b"relay@example.com:x").decode()},
        {"Authorization": "Basic %%%"},
    ],
    ids=["none", "wrong-bearer", "password", "garbage"],
)
def test_other_credentials_are_refused(
    sandbox: Sandbox, headers: dict[str, str]
) -> None:
    response = call(sandbox, "GET", "/api/v2/tickets/35436", headers=headers)

    assert response.status_code == 401
    assert response.json() == {"error": "Couldn't authenticate you"}


def test_me_is_the_api_user(sandbox: Sandbox) -> None:
    user = call(sandbox, "GET", "/api/v2/users/me.json").json()["user"]

    assert (user["id"], user["email"]) == (900001, "relay@example.com")


def test_a_user_shows_email_and_external_id(sandbox: Sandbox) -> None:
    response = call(sandbox, "GET", "/api/v2/users/8447388090111.json")

    user = response.json()["user"]
    assert user["email"] == "jane@example.com"
    assert user["external_id"] == "user-123"
    assert user["name"]


def test_an_unknown_user_is_created_unless_turned_off(sandbox: Sandbox) -> None:
    created = call(sandbox, "GET", "/api/v2/users/77").json()["user"]
    assert (created["id"], created["external_id"]) == (77, "user-77")

    control(sandbox).settings(auto_create_users=False)
    response = call(sandbox, "GET", "/api/v2/users/78")

    assert response.status_code == 404
    assert response.json() == {"error": "RecordNotFound", "description": "Not found"}


def test_seed_ticket(sandbox: Sandbox) -> None:
    ticket = call(sandbox, "GET", "/api/v2/tickets/35436.json").json()["ticket"]

    assert ticket["subject"] == "Cannot login to mobile app"
    assert ticket["requester_id"] == 8447388090111


def test_a_private_comment_is_stored_and_answered_with_ticket_and_audit(
    sandbox: Sandbox,
) -> None:
    response = note(sandbox, 35436, {"body": "Bugpilot: https://x", "public": False})

    assert response.status_code == 200
    body = response.json()
    assert body["ticket"]["id"] == 35436
    assert body["audit"]["author_id"] == 900001
    [event] = body["audit"]["events"]
    assert (event["body"], event["public"]) == ("Bugpilot: https://x", False)

    [comment] = call(sandbox, "GET", "/api/v2/tickets/35436/comments").json()[
        "comments"
    ]
    assert comment["body"] == "Bugpilot: https://x"
    assert comment["public"] is False
    assert comment["author_id"] == 900001
    assert isinstance(comment["id"], int)


def test_a_comment_without_public_is_public(sandbox: Sandbox) -> None:
    note(sandbox, 35436, {"body": "hello"})

    state = control(sandbox).state()

    assert state["tickets"]["35436"]["comments"][0]["public"] is True


@pytest.mark.parametrize("comment", [{"body": "  "}, {"public": False}, "text"])
def test_a_blank_comment_is_record_invalid(sandbox: Sandbox, comment: Any) -> None:
    response = note(sandbox, 35436, comment)

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "RecordInvalid"
    assert body["description"] == "Record validation errors"
    assert body["details"]["base"][0]["error"] == "BlankValue"
    assert control(sandbox).state()["tickets"]["35436"]["comments"] == []


def test_an_update_without_ticket_is_a_400(sandbox: Sandbox) -> None:
    response = call(sandbox, "PUT", "/api/v2/tickets/35436", {"comment": {}})

    assert response.status_code == 400


def test_comments_page_and_sort(sandbox: Sandbox) -> None:
    for number in range(3):
        note(sandbox, 35436, {"body": f"note {number}", "public": False})

    path = "/api/v2/tickets/35436/comments?sort_order=desc&per_page=2"
    first = call(sandbox, "GET", path).json()
    second = requests.get(first["next_page"], headers=AUTH, timeout=5).json()

    assert [c["body"] for c in first["comments"]] == ["note 2", "note 1"]
    assert [c["body"] for c in second["comments"]] == ["note 0"]
    assert first["next_page"].startswith(sandbox.zendesk_url + "/")
    assert second["next_page"] is None
    assert first["count"] == 3


def test_an_unknown_ticket_is_created_on_first_use(sandbox: Sandbox) -> None:
    response = note(sandbox, 5158, {"body": "hi", "public": False})

    assert response.status_code == 200
    ticket = control(sandbox).state()["tickets"]["5158"]
    assert ticket["requester_id"] == 8447388090111
    assert ticket["comment_bodies"] == ["hi"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v2/tickets/999", None),
        ("PUT", "/api/v2/tickets/999", {"ticket": {"comment": {"body": "x"}}}),
        ("GET", "/api/v2/tickets/999/comments", None),
        ("DELETE", "/api/v2/tickets/999/tags", {"tags": ["a"]}),
    ],
)
def test_an_unknown_ticket_is_not_found_without_auto_create(
    sandbox: Sandbox, method: str, path: str, body: Any
) -> None:
    control(sandbox).settings(auto_create_tickets=False)

    response = call(sandbox, method, path, body)

    assert response.status_code == 404
    assert response.json() == {"error": "RecordNotFound", "description": "Not found"}
    assert "999" not in control(sandbox).state()["tickets"]


def test_tags_are_added_set_and_removed(sandbox: Sandbox) -> None:
    path = "/api/v2/tickets/35436/tags.json"

    added = call(sandbox, "PUT", path, {"tags": ["bugpilot_request", "mobile"]})
    again = call(sandbox, "PUT", path, {"tags": ["vip", "mobile"]})
    removed = call(sandbox, "DELETE", path, {"tags": ["bugpilot_request", "absent"]})
    replaced = call(sandbox, "POST", path, {"tags": ["only"]})

    assert added.json() == {"tags": ["bugpilot_request", "mobile"]}
    assert again.json() == {"tags": ["bugpilot_request", "mobile", "vip"]}
    assert removed.json() == {"tags": ["mobile", "vip"]}
    assert replaced.json() == {"tags": ["only"]}
    assert control(sandbox).state()["tickets"]["35436"]["tags"] == ["only"]


def test_a_space_splits_a_tag(sandbox: Sandbox) -> None:
    response = call(sandbox, "PUT", "/api/v2/tickets/35436/tags", {"tags": ["a b"]})

    assert response.json() == {"tags": ["a", "b"]}


def test_tags_must_be_a_list_of_strings(sandbox: Sandbox) -> None:
    response = call(sandbox, "DELETE", "/api/v2/tickets/35436/tags", {"tags": "x"})

    assert response.status_code == 422


def test_a_ticket_update_can_change_tags(sandbox: Sandbox) -> None:
    control(sandbox).add_ticket(id=1, tags=["a", "b"])

    response = call(
        sandbox,
        "PUT",
        "/api/v2/tickets/1",
        {"ticket": {"additional_tags": ["c"], "remove_tags": ["a"]}},
    )

    assert response.json()["ticket"]["tags"] == ["b", "c"]


def test_control_adds_users_and_tickets(sandbox: Sandbox) -> None:
    ctl = control(sandbox)
    user = ctl.add_user(id=42, email="amy@example.com", external_id="amy")
    ticket = ctl.add_ticket(
        id=7,
        subject="Crash",
        requester={"id": 43, "email": "bob@example.com"},
        tags=["bugpilot_request"],
    )

    assert user["external_id"] == "amy"
    assert ticket["requester_id"] == 43
    state = ctl.state()
    assert state["users"]["43"]["email"] == "bob@example.com"
    assert state["tickets"]["7"]["tags"] == ["bugpilot_request"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/users", {"id": "42"}),
        ("/users", {"email": 5}),
        ("/tickets", {"requester_id": "x"}),
        ("/tickets", {"tags": "x"}),
        ("/tickets", {"requester": {"id": True}}),
        ("/tickets", ["not", "an", "object"]),
        ("/users", {"online": ["amy"]}),
        ("/tickets", {"requester": {"mail": "x@example.com"}}),
    ],
)
def test_bad_control_input_is_a_400(sandbox: Sandbox, path: str, body: Any) -> None:
    response = requests.post(
        f"{sandbox.zendesk_url}/_sandbox{path}", json=body, timeout=5
    )

    assert response.status_code == 400


def test_state_counts_requests_by_route(sandbox: Sandbox) -> None:
    note(sandbox, 35436, {"body": "one", "public": False})
    note(sandbox, 1, {"body": "two", "public": False})
    call(sandbox, "GET", "/api/v2/users/me.json")
    call(sandbox, "GET", "/api/v2/nowhere")

    state = control(sandbox).state()

    assert state["requests"] == {
        "PUT /api/v2/tickets/<int:ticket_id>": 2,
        "GET /api/v2/users/me": 1,
        "GET <unknown>": 1,
    }
    assert state["tickets"]["35436"]["comment_bodies"] == ["one"]


def test_reset_restores_the_seed(sandbox: Sandbox) -> None:
    ctl = control(sandbox)
    note(sandbox, 35436, {"body": "one"})
    ctl.add_ticket(id=2)
    ctl.settings(auto_create=False)

    ctl.reset()

    state = ctl.state()
    assert sorted(state["tickets"]) == ["35436"]
    assert state["tickets"]["35436"]["comments"] == []
    assert state["settings"] == {"auto_create_tickets": True, "auto_create_users": True}
    assert state["requests"] == {}


def test_auto_create_sets_both_settings(sandbox: Sandbox) -> None:
    settings = control(sandbox).settings(auto_create=False)

    assert settings == {"auto_create_tickets": False, "auto_create_users": False}
