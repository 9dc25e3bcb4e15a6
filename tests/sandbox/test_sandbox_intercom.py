"""The Intercom emulator over real HTTP: auth, notes, replies, tags, control."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from relay.sandbox import (
    SANDBOX_INTERCOM_ADMIN_ID,
    SANDBOX_INTERCOM_TOKEN,
    Sandbox,
    SandboxControl,
)

AUTH = {"Authorization": f"Bearer {SANDBOX_INTERCOM_TOKEN}", "Intercom-Version": "2.14"}
JOE = "6762f1571bb69f9f2193bbbb"
NOTE = {
    "message_type": "note",
    "type": "admin",
    "admin_id": SANDBOX_INTERCOM_ADMIN_ID,
    "body": "<p>Bugpilot session: https://x</p>",
}


def call(
    sandbox: Sandbox,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] = AUTH,
) -> requests.Response:
    return requests.request(
        method, sandbox.intercom_url + path, json=body, headers=headers, timeout=5
    )


def control(sandbox: Sandbox) -> SandboxControl:
    return SandboxControl(sandbox.intercom_url)


def error_code(response: requests.Response) -> str:
    body = response.json()
    assert body["type"] == "error.list"
    assert body["request_id"]
    return str(body["errors"][0]["code"])


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}],
    ids=["none", "wrong-token", "basic"],
)
def test_without_the_token_the_answer_is_unauthorized(
    sandbox: Sandbox, headers: dict[str, str]
) -> None:
    response = call(sandbox, "GET", "/me", headers=headers)

    assert response.status_code == 401
    assert error_code(response) == "unauthorized"


def test_me_is_the_sandbox_admin(sandbox: Sandbox) -> None:
    body = call(sandbox, "GET", "/me").json()

    assert (body["type"], body["id"]) == ("admin", SANDBOX_INTERCOM_ADMIN_ID)
    assert body["email"]


def test_seed_contact(sandbox: Sandbox) -> None:
    contact = call(sandbox, "GET", f"/contacts/{JOE}").json()

    assert contact["type"] == "contact"
    assert contact["id"] == JOE
    assert (contact["email"], contact["external_id"]) == ("joe@example.com", "70")
    assert contact["role"] == "user"
    assert contact["name"]


def test_an_unknown_contact_is_created_unless_turned_off(sandbox: Sandbox) -> None:
    assert call(sandbox, "GET", "/contacts/abc").json()["external_id"] == "ext-abc"

    control(sandbox).settings(auto_create_contacts=False)
    response = call(sandbox, "GET", "/contacts/def")

    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_a_note_reply_is_stored_as_a_conversation_part(sandbox: Sandbox) -> None:
    response = call(sandbox, "POST", "/conversations/524/reply", NOTE)

    assert response.status_code == 200
    conversation = response.json()
    assert (conversation["type"], conversation["id"]) == ("conversation", "524")
    parts = conversation["conversation_parts"]
    assert parts["type"] == "conversation_part.list"
    [part] = parts["conversation_parts"]
    assert part["type"] == "conversation_part"
    assert part["part_type"] == "note"
    assert part["body"] == NOTE["body"]
    assert part["author"]["type"] == "admin"
    assert part["author"]["id"] == SANDBOX_INTERCOM_ADMIN_ID
    assert call(sandbox, "GET", "/conversations/524").json() == conversation


def test_the_seed_conversation_carries_contact_and_tag(sandbox: Sandbox) -> None:
    conversation = call(sandbox, "GET", "/conversations/524").json()

    assert conversation["contacts"]["contacts"][0]["id"] == JOE
    assert conversation["contacts"]["contacts"][0]["external_id"] == "70"
    assert conversation["tags"]["tags"] == [
        {"type": "tag", "id": "86", "name": "bugpilot_screenshot"}
    ]


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"message_type": None}, "parameter_not_found", "message_type"),
        ({"message_type": "whisper"}, "parameter_invalid", "message_type"),
        ({"type": None}, "parameter_not_found", "type"),
        ({"type": "user"}, "parameter_invalid", "type"),
        ({"admin_id": None}, "parameter_not_found", "admin_id"),
        ({"admin_id": "123"}, "parameter_invalid", "admin_id"),
        ({"body": None}, "parameter_not_found", "body"),
        ({"body": " "}, "parameter_invalid", "body"),
    ],
)
def test_a_malformed_reply_is_a_400(
    sandbox: Sandbox, changes: dict[str, Any], code: str, field: str
) -> None:
    body = {key: value for key, value in {**NOTE, **changes}.items() if value}

    response = call(sandbox, "POST", "/conversations/524/reply", body)

    assert response.status_code == 400
    assert error_code(response) == code
    assert response.json()["errors"][0]["field"] == field
    assert control(sandbox).state()["conversations"]["524"]["part_bodies"] == []


def test_a_reply_to_an_unknown_conversation_without_auto_create(
    sandbox: Sandbox,
) -> None:
    control(sandbox).settings(auto_create_conversations=False)

    response = call(sandbox, "POST", "/conversations/999/reply", NOTE)

    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_an_unknown_conversation_is_created_with_the_seed_contact(
    sandbox: Sandbox,
) -> None:
    response = call(sandbox, "POST", "/conversations/777/reply", NOTE)

    assert response.status_code == 200
    assert response.json()["contacts"]["contacts"][0]["id"] == JOE
    state = control(sandbox).state()
    assert state["conversations"]["777"]["note_bodies"] == [NOTE["body"]]


def test_a_contact_note_is_a_note_model(sandbox: Sandbox) -> None:
    body = {"body": "Bugpilot: https://x", "admin_id": SANDBOX_INTERCOM_ADMIN_ID}

    response = call(sandbox, "POST", f"/contacts/{JOE}/notes", body)

    assert response.status_code == 200
    note = response.json()
    assert note["type"] == "note"
    assert note["id"]
    assert isinstance(note["created_at"], int)
    assert note["body"] == "Bugpilot: https://x"
    assert note["author"]["id"] == SANDBOX_INTERCOM_ADMIN_ID
    assert note["contact"] == {"type": "contact", "id": JOE}

    listing = call(sandbox, "GET", f"/contacts/{JOE}/notes").json()
    assert listing["type"] == "list"
    assert listing["data"] == [note]
    state = control(sandbox).state()
    assert state["contacts"][JOE]["note_bodies"] == ["Bugpilot: https://x"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"admin_id": SANDBOX_INTERCOM_ADMIN_ID}, "parameter_not_found"),
        ({"body": "", "admin_id": SANDBOX_INTERCOM_ADMIN_ID}, "parameter_invalid"),
        ({"body": "x", "admin_id": "5"}, "parameter_invalid"),
    ],
)
def test_a_malformed_contact_note_is_a_400(
    sandbox: Sandbox, body: dict[str, str], code: str
) -> None:
    response = call(sandbox, "POST", f"/contacts/{JOE}/notes", body)

    assert response.status_code == 400
    assert error_code(response) == code


def test_a_note_on_an_unknown_contact_without_auto_create(sandbox: Sandbox) -> None:
    control(sandbox).settings(auto_create=False)

    response = call(sandbox, "POST", "/contacts/nobody/notes", {"body": "x"})

    assert response.status_code == 404
    assert response.json()["errors"][0]["message"] == "Contact Not Found"


def test_removing_a_conversation_tag(sandbox: Sandbox) -> None:
    response = call(
        sandbox,
        "DELETE",
        "/conversations/524/tags/86",
        {"admin_id": SANDBOX_INTERCOM_ADMIN_ID},
    )

    assert response.status_code == 200
    assert response.json() == {"type": "tag", "id": "86", "name": "bugpilot_screenshot"}
    assert control(sandbox).state()["conversations"]["524"]["tags"]["tags"] == []


def test_removing_a_conversation_tag_needs_an_admin(sandbox: Sandbox) -> None:
    response = call(sandbox, "DELETE", "/conversations/524/tags/86")

    assert response.status_code == 400
    assert error_code(response) == "parameter_not_found"
    assert len(control(sandbox).state()["conversations"]["524"]["tags"]["tags"]) == 1


def test_an_unknown_tag_is_tag_not_found_without_auto_create(
    sandbox: Sandbox,
) -> None:
    control(sandbox).settings(auto_create_tags=False)
    admin = {"admin_id": SANDBOX_INTERCOM_ADMIN_ID}

    conversation = call(sandbox, "DELETE", "/conversations/524/tags/404", admin)
    contact = call(sandbox, "DELETE", f"/contacts/{JOE}/tags/404")

    assert conversation.status_code == contact.status_code == 404
    assert error_code(conversation) == error_code(contact) == "tag_not_found"


def test_tagging_and_untagging_a_contact(sandbox: Sandbox) -> None:
    added = call(sandbox, "POST", f"/contacts/{JOE}/tags", {"id": "86"})
    assert added.json()["name"] == "bugpilot_screenshot"
    assert control(sandbox).state()["contacts"][JOE]["tags"][0]["id"] == "86"

    removed = call(sandbox, "DELETE", f"/contacts/{JOE}/tags/86")

    assert removed.status_code == 200
    assert removed.json()["id"] == "86"
    assert control(sandbox).state()["contacts"][JOE]["tags"] == []


def test_tagging_a_conversation(sandbox: Sandbox) -> None:
    control(sandbox).add_tag(id="90", name="vip")

    response = call(
        sandbox,
        "POST",
        "/conversations/524/tags",
        {"id": "90", "admin_id": SANDBOX_INTERCOM_ADMIN_ID},
    )

    assert response.json()["name"] == "vip"
    tags = call(sandbox, "GET", "/conversations/524").json()["tags"]["tags"]
    assert [tag["id"] for tag in tags] == ["86", "90"]


def test_control_adds_contacts_and_conversations(sandbox: Sandbox) -> None:
    ctl = control(sandbox)
    contact = ctl.add_contact(id="c1", email="amy@example.com", external_id="amy")
    conversation = ctl.add_conversation(id="600", contact_id="c1", tags=["86"])

    assert contact["external_id"] == "amy"
    assert conversation["contacts"]["contacts"][0]["external_id"] == "amy"
    assert conversation["tags"]["tags"][0]["id"] == "86"
    listed = call(sandbox, "GET", "/tags").json()["data"]
    assert {"type": "tag", "id": "86", "name": "bugpilot_screenshot"} in listed


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/contacts", {"id": 5}),
        ("/contacts", {"tags": "86"}),
        ("/conversations", {"contact_id": 5}),
        ("/conversations", {"tags": [86]}),
        ("/tags", {"name": ["x"]}),
        ("/contacts", {"emial": "x@example.com"}),
    ],
)
def test_bad_control_input_is_a_400(sandbox: Sandbox, path: str, body: Any) -> None:
    response = requests.post(
        f"{sandbox.intercom_url}/_sandbox{path}", json=body, timeout=5
    )

    assert response.status_code == 400


def test_state_counts_requests_and_reset_restores_the_seed(sandbox: Sandbox) -> None:
    call(sandbox, "POST", "/conversations/524/reply", NOTE)
    call(sandbox, "POST", "/conversations/524/reply", NOTE)
    ctl = control(sandbox)

    assert ctl.state()["requests"] == {"POST /conversations/<conversation_id>/reply": 2}
    ctl.reset()

    state = ctl.state()
    assert state["requests"] == {}
    assert state["conversations"]["524"]["part_bodies"] == []
    assert sorted(state["conversations"]) == ["524"]


def test_an_unknown_path_is_not_found(sandbox: Sandbox) -> None:
    response = call(sandbox, "GET", "/nothing/here")

    assert response.status_code == 404
    assert error_code(response) == "not_found"
