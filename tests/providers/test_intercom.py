"""Intercom: signature vector, notification topics, and the REST client's requests."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import responses
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from relay.config import IntercomSettings
from relay.errors import (
    InvalidPayload,
    InvalidSignature,
    MissingSignature,
    PermanentError,
    TransientError,
)
from relay.model import Ignored, Requester, TagEvent, Target
from relay.providers.intercom import (
    API_VERSION,
    SIGNATURE_HEADER,
    IntercomClient,
    note_html,
    parse_event,
    sign,
    verify_signature,
)
from tests.providers import strategies
from tests.providers.strategies import mutations

# Self-computed vector (HMAC-SHA1 of the raw body under the client secret).
SECRET = "test_client_secret"
BODY = b'{"type":"notification_event","topic":"ping","id":"notif_123"}'
SIGNATURE = "sha1=199333e3cdf8df77fa4d3662e70384335b51e9f7"

PING = {"type": "notification_event", "topic": "ping", "id": "notif_123"}

CONTACT_TAGGED = {
    "type": "notification_event",
    "app_id": "abc123def",
    "topic": "contact.user.tag.created",
    "id": "notif_723cd050-01bf-487f-b32d-c2bd0f618a4d",
    "delivery_status": "pending",
    "delivery_attempts": 1,
    "delivered_at": 0,
    "first_sent_at": 1768020547,
    "created_at": 1768020547,
    "links": {},
    "self": None,
    "data": {
        "type": "notification_event_data",
        "item": {
            "type": "contact_tag",
            "tag": {"type": "tag", "id": "12934044", "name": "bugpilot_request"},
            "contact": {
                "type": "contact",
                "id": "6961d897719c606240178da8",
                "external_id": "user-123",
                "role": "user",
                "email": "user@example.com",
                "name": "Sample User",
            },
        },
    },
}

CONVERSATION_TAGGED = {
    "type": "notification_event",
    "app_id": "i6wc9ipe",
    "topic": "conversation_part.tag.created",
    "id": "notif_11aef68a-8049-4f29-bbd9-48a7adfc8f30",
    "delivery_attempts": 1,
    "created_at": 1734537600,
    "first_sent_at": 1734537600,
    "data": {
        "type": "notification_event_data",
        "item": {
            "type": "conversation",
            "id": "524",
            "source": {
                "type": "conversation",
                "author": {
                    "type": "user",
                    "id": "6762f1571bb69f9f2193bbbb",
                    "name": "Joe Bloggs",
                    "email": "joe@bloggs.com",
                },
            },
            "contacts": {
                "type": "contact.list",
                "contacts": [
                    {
                        "type": "contact",
                        "id": "6762f1571bb69f9f2193bbbb",
                        "external_id": "70",
                    }
                ],
            },
            "tags": {
                "type": "tag.list",
                "tags": [{"type": "tag", "id": "86", "name": "bugpilot_request"}],
            },
            "tags_added": {
                "type": "tag.list",
                "tags": [{"type": "tag", "id": "86", "name": "bugpilot_request"}],
            },
        },
    },
}


def with_changes(example: dict[str, Any], **paths: Any) -> dict[str, Any]:
    """A deep copy of ``example`` with ``a__b=value`` set (or deleted for ...)."""
    changed = copy.deepcopy(example)
    for path, value in paths.items():
        *parents, last = path.split("__")
        node = changed
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return changed


# -- signature ----------------------------------------------------------------


def test_sign_matches_the_vector() -> None:
    assert sign(BODY, SECRET) == SIGNATURE


@pytest.mark.parametrize(
    "headers",
    [
        {SIGNATURE_HEADER: SIGNATURE},
        {SIGNATURE_HEADER.lower(): SIGNATURE},
        {SIGNATURE_HEADER: SIGNATURE.upper().replace("SHA1", "sha1")},
        {SIGNATURE_HEADER: SIGNATURE.replace("sha1", "SHA1")},
        Headers({SIGNATURE_HEADER: SIGNATURE}),
    ],
    ids=["exact", "lower-name", "upper-hex", "upper-prefix", "werkzeug"],
)
def test_vector_verifies(headers: Any) -> None:
    verify_signature(BODY, headers, [SECRET])


@pytest.mark.parametrize("position", [0, 1, 2])
def test_each_secret_of_a_rotation_verifies(position: int) -> None:
    secrets = ["old", "current", "next"]
    headers = {SIGNATURE_HEADER: sign(BODY, secrets[position])}
    verify_signature(BODY, headers, secrets)


@pytest.mark.parametrize("headers", [{}, {SIGNATURE_HEADER: ""}, {"X-Other": "1"}])
def test_missing_signature(headers: dict[str, str]) -> None:
    with pytest.raises(MissingSignature):
        verify_signature(BODY, headers, [SECRET])


@pytest.mark.parametrize(
    "value",
    [
        SIGNATURE.removeprefix("sha1="),
        "sha256=" + SIGNATURE.removeprefix("sha1="),
        SIGNATURE[:-1],
        SIGNATURE + "0",
        "sha1=" + "g" * 40,
        "sha1=",
        "sha1=" + "é" * 40,
    ],
)
def test_malformed_signature_is_invalid(value: str) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, {SIGNATURE_HEADER: value}, [SECRET])


def test_wrong_secret_is_invalid() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, {SIGNATURE_HEADER: SIGNATURE}, ["other", "again"])


def test_no_configured_secret_verifies_nothing() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, {SIGNATURE_HEADER: SIGNATURE}, [])


@given(st.data())
def test_any_single_byte_change_to_the_body_fails(data: st.DataObject) -> None:
    body = data.draw(st.binary(min_size=1, max_size=200))
    headers = {SIGNATURE_HEADER: sign(body, SECRET)}
    index = data.draw(st.integers(0, len(body) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(InvalidSignature):
        verify_signature(changed, headers, [SECRET])


@given(
    body=st.binary(max_size=300),
    secrets=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5),
    data=st.data(),
)
def test_every_secret_in_a_rotation_list_verifies(
    body: bytes, secrets: list[str], data: st.DataObject
) -> None:
    secret = data.draw(st.sampled_from(secrets))
    verify_signature(body, {SIGNATURE_HEADER: sign(body, secret)}, secrets)


# -- parse_event ----------------------------------------------------------------


def test_ping_is_ignored() -> None:
    assert parse_event(PING, {}) == Ignored("ping", "notif_123")


@pytest.mark.parametrize(
    "topic",
    ["conversation.admin.noted", "contact.user.tag.deleted", "user.tag.created"],
)
def test_other_topics_are_ignored(topic: str) -> None:
    payload = {"topic": topic, "id": "notif_1", "data": "anything"}
    assert parse_event(payload, {}) == Ignored("unsupported_topic", "notif_1")


def test_conversation_tag_becomes_a_tag_event() -> None:
    assert parse_event(CONVERSATION_TAGGED, {}) == TagEvent(
        provider="intercom",
        delivery_id="notif_11aef68a-8049-4f29-bbd9-48a7adfc8f30",
        target_kind="conversation",
        target_id="524",
        tags_added=("bugpilot_request",),
        requester=Requester(
            email="joe@bloggs.com",
            external_id="70",
            remote_id="6762f1571bb69f9f2193bbbb",
        ),
        subject="",
        actor_id=None,
        tag_ids=(("bugpilot_request", "86"),),
    )


@pytest.mark.parametrize(
    "topic", ["contact.user.tag.created", "contact.lead.tag.created"]
)
def test_contact_tag_becomes_a_tag_event(topic: str) -> None:
    assert parse_event(dict(CONTACT_TAGGED, topic=topic), {}) == TagEvent(
        provider="intercom",
        delivery_id="notif_723cd050-01bf-487f-b32d-c2bd0f618a4d",
        target_kind="contact",
        target_id="6961d897719c606240178da8",
        tags_added=("bugpilot_request",),
        requester=Requester(
            email="user@example.com",
            external_id="user-123",
            remote_id="6961d897719c606240178da8",
        ),
        tag_ids=(("bugpilot_request", "12934044"),),
    )


def conversation_event(**changes: Any) -> TagEvent:
    event = parse_event(with_changes(CONVERSATION_TAGGED, **changes), {})
    assert isinstance(event, TagEvent)
    return event


def test_admin_who_applied_the_tag_is_the_actor() -> None:
    tags = [
        {
            "id": "86",
            "name": "bugpilot_request",
            "applied_by": {"type": "admin", "id": 991},
        }
    ]
    event = conversation_event(data__item__tags_added__tags=tags)
    assert event.actor_id == "991"


def test_a_tag_applied_by_a_bot_has_no_admin_actor() -> None:
    tags = [{"id": "86", "name": "x", "applied_by": {"type": "bot", "id": "5"}}]
    assert conversation_event(data__item__tags_added__tags=tags).actor_id is None


def test_several_added_tags_keep_their_ids() -> None:
    tags = [
        {"id": "86", "name": "bugpilot_request"},
        {"name": "no_id"},
        {"id": 87, "name": " vip "},
    ]
    event = conversation_event(data__item__tags_added__tags=tags)
    assert event.tags_added == ("bugpilot_request", "no_id", "vip")
    assert event.tag_ids == (("bugpilot_request", "86"), ("vip", "87"))
    assert event.tag_id("no_id") is None


@pytest.mark.parametrize(
    "tags_added", [..., None, {}, {"tags": []}, {"tags": [{"name": " "}]}]
)
def test_no_added_tags_is_ignored(tags_added: Any) -> None:
    payload = with_changes(CONVERSATION_TAGGED, data__item__tags_added=tags_added)
    assert parse_event(payload, {}) == Ignored(
        "no_tags_added", CONVERSATION_TAGGED["id"]
    )


def test_blank_contact_tag_name_is_ignored() -> None:
    payload = with_changes(CONTACT_TAGGED, data__item__tag__name="")
    assert parse_event(payload, {}) == Ignored("no_tags_added", CONTACT_TAGGED["id"])


def test_contact_email_wins_over_the_author_email() -> None:
    event = conversation_event(data__item__contacts__contacts__0__email="c@example.com")
    assert event.requester.email == "c@example.com"


@pytest.mark.parametrize("author_type", ["admin", "bot", None])
def test_author_who_is_not_a_user_or_lead_is_not_the_requester(
    author_type: Any,
) -> None:
    event = conversation_event(data__item__source__author__type=author_type)
    assert event.requester.email is None
    assert event.requester.remote_id == "6762f1571bb69f9f2193bbbb"


def test_lead_author_without_contacts_is_the_requester() -> None:
    event = conversation_event(
        data__item__contacts=..., data__item__source__author__type="lead"
    )
    assert event.requester == Requester(
        email="joe@bloggs.com", remote_id="6762f1571bb69f9f2193bbbb"
    )


def test_no_customer_at_all_gives_an_empty_requester() -> None:
    event = conversation_event(data__item__contacts=None, data__item__source=None)
    assert event.requester == Requester()


@pytest.mark.parametrize(
    ("changes", "subject"),
    [
        ({"data__item__title": "Checkout broken"}, "Checkout broken"),
        ({"data__item__source__subject": "Re: order 7"}, "Re: order 7"),
        (
            {"data__item__title": "Title", "data__item__source__subject": "Mail"},
            "Title",
        ),
        ({"data__item__title": None}, ""),
    ],
)
def test_subject_comes_from_title_then_source(
    changes: dict[str, Any], subject: str
) -> None:
    assert conversation_event(**changes).subject == subject


def test_integer_ids_are_loaded_as_strings() -> None:
    event = conversation_event(
        data__item__id=524, data__item__contacts__contacts__0__external_id=70
    )
    assert (event.target_id, event.requester.external_id) == ("524", "70")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (None, "_schema"),
        ([PING], "_schema"),
        ("ping", "_schema"),
        ({}, "topic"),
        ({"topic": "ping"}, "id"),
        ({"topic": 5, "id": "n"}, "topic"),
        ({"topic": "ping", "id": ""}, "id"),
        ({"topic": "ping", "id": 1.5}, "id"),
        (with_changes(CONVERSATION_TAGGED, data=...), "data"),
        (with_changes(CONVERSATION_TAGGED, data=[]), "data"),
        (with_changes(CONVERSATION_TAGGED, data__item=None), "data"),
        (with_changes(CONVERSATION_TAGGED, data__item__id=...), "data"),
        (with_changes(CONVERSATION_TAGGED, data__item__id=True), "data"),
        (with_changes(CONVERSATION_TAGGED, data__item__tags_added=[]), "data"),
        (with_changes(CONVERSATION_TAGGED, data__item__tags_added__tags={}), "data"),
        (
            with_changes(CONVERSATION_TAGGED, data__item__tags_added__tags=["vip"]),
            "data",
        ),
        (
            with_changes(
                CONVERSATION_TAGGED, data__item__tags_added__tags=[{"id": "86"}]
            ),
            "data",
        ),
        (with_changes(CONVERSATION_TAGGED, data__item__contacts__contacts=7), "data"),
        (with_changes(CONVERSATION_TAGGED, data__item__source="email"), "data"),
        (with_changes(CONVERSATION_TAGGED, data__item__title=["x"]), "data"),
        (with_changes(CONTACT_TAGGED, data__item__tag=...), "data"),
        (with_changes(CONTACT_TAGGED, data__item__tag__name=None), "data"),
        (with_changes(CONTACT_TAGGED, data__item__contact=...), "data"),
        (with_changes(CONTACT_TAGGED, data__item__contact__id=...), "data"),
        (with_changes(CONTACT_TAGGED, data__item__contact__id=10**40), "data"),
        (with_changes(CONTACT_TAGGED, data__item__contact__email=False), "data"),
        (with_changes(CONTACT_TAGGED, data__item__contact__id="c" * 65), "data"),
        (with_changes(CONTACT_TAGGED, data__item__contact__email="e" * 321), "data"),
        (with_changes(CONTACT_TAGGED, data__item__tag__id="1" * 65), "data"),
        (with_changes(CONTACT_TAGGED, id="n" * 65), "id"),
    ],
)
def test_wrong_shapes_are_invalid_payloads(payload: Any, field: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse_event(payload, {})
    assert field in caught.value.details
    json.dumps(caught.value.body())


PAYLOAD_KEYS = [
    "topic",
    "id",
    "data",
    "item",
    "tags_added",
    "tags",
    "name",
    "tag",
    "contact",
    "contacts",
    "applied_by",
    "type",
    "source",
    "author",
    "email",
    "external_id",
    "title",
]

json_values = strategies.json_values(
    [
        "",
        "ping",
        "admin",
        "user",
        CONVERSATION_TAGGED["topic"],
        CONTACT_TAGGED["topic"],
    ],
    PAYLOAD_KEYS,
)


def parses_or_rejects(payload: Any) -> None:
    try:
        result = parse_event(payload, {})
    except InvalidPayload as exc:
        assert exc.details
        json.dumps(exc.body())
    else:
        assert isinstance(result, TagEvent | Ignored)


@given(json_values)
def test_arbitrary_json_parses_or_is_invalid(payload: Any) -> None:
    parses_or_rejects(payload)


@given(
    mutations(CONVERSATION_TAGGED, json_values)
    | mutations(CONTACT_TAGGED, json_values)
    | mutations(PING, json_values)
)
def test_mutated_examples_parse_or_are_invalid(payload: Any) -> None:
    parses_or_rejects(payload)


# -- note_html ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Bugpilot screenshot requested: https://w.example/s/1?a=1&b=2.",
            "<p>Bugpilot screenshot requested: "
            '<a href="https://w.example/s/1?a=1&amp;b=2">'
            "https://w.example/s/1?a=1&amp;b=2</a>.</p>",
        ),
        ("a <b> & c", "<p>a &lt;b&gt; &amp; c</p>"),
        ("one\n\ntwo", "<p>one</p><p>two</p>"),
        (
            "(see http://x.example/p)",
            '<p>(see <a href="http://x.example/p">http://x.example/p</a>)</p>',
        ),
        ("", "<p></p>"),
    ],
)
def test_note_html(text: str, expected: str) -> None:
    assert note_html(text) == expected


# -- IntercomClient -------------------------------------------------------------

BASE = "https://api.eu.intercom.io"
SETTINGS = IntercomSettings(
    api_url=BASE, access_token="tok-1", client_secrets=(SECRET,), admin_id="991"
)
CONVERSATION = Target("intercom", "conversation", "524", "bugpilot_request", "86")
CONTACT = Target("intercom", "contact", "6961d8", "bugpilot_request", "12934044")
NOTE = "Bugpilot screenshot requested: https://w.example/s/1?a=1&b=2"


@pytest.fixture
def api() -> Any:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> IntercomClient:
    return IntercomClient(SETTINGS, sleep=sleeps.append)


def sent_json(call: Any) -> Any:
    return json.loads(call.request.body)


def test_note_on_a_conversation_is_an_admin_note_reply(
    api: Any, client: IntercomClient
) -> None:
    api.post(f"{BASE}/conversations/524/reply", json={"type": "conversation"})
    client.write_note(CONVERSATION, NOTE)

    (call,) = api.calls
    assert sent_json(call) == {
        "message_type": "note",
        "type": "admin",
        "admin_id": "991",
        "body": note_html(NOTE),
    }
    headers = call.request.headers
    assert headers["Authorization"] == "Bearer tok-1"
    assert headers["Intercom-Version"] == API_VERSION == "2.14"
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/json"


def test_note_on_a_contact_uses_the_notes_endpoint(
    api: Any, client: IntercomClient
) -> None:
    api.post(f"{BASE}/contacts/6961d8/notes", json={"type": "note"})
    client.write_note(CONTACT, NOTE)
    assert sent_json(api.calls[0]) == {"body": NOTE, "admin_id": "991"}


def test_admin_id_comes_from_me_once_when_not_configured(api: Any) -> None:
    client = IntercomClient(IntercomSettings(BASE, "tok-1", (SECRET,)))
    api.get(f"{BASE}/me", json={"type": "admin", "id": 991267696})
    api.post(f"{BASE}/conversations/524/reply", json={})
    assert client.own_actor_id() == "991267696"
    client.write_note(CONVERSATION, NOTE)
    assert [call.request.method for call in api.calls] == ["GET", "POST"]
    assert sent_json(api.calls[1])["admin_id"] == "991267696"


def test_me_without_an_id_is_a_bad_response(api: Any) -> None:
    client = IntercomClient(IntercomSettings(BASE, "tok-1", (SECRET,)))
    api.get(f"{BASE}/me", json={"type": "admin"})
    with pytest.raises(TransientError) as caught:
        client.own_actor_id()
    assert caught.value.reason == "bad_response"


def test_configured_admin_id_needs_no_request(api: Any, client: IntercomClient) -> None:
    assert client.own_actor_id() == "991"
    assert not api.calls


def test_remove_tag_from_a_conversation_names_the_admin(
    api: Any, client: IntercomClient
) -> None:
    api.delete(f"{BASE}/conversations/524/tags/86", json={"type": "tag"})
    client.remove_tag(CONVERSATION)
    assert sent_json(api.calls[0]) == {"admin_id": "991"}


def test_remove_tag_from_a_contact(api: Any, client: IntercomClient) -> None:
    api.delete(f"{BASE}/contacts/6961d8/tags/12934044", json={"type": "tag"})
    client.remove_tag(CONTACT)
    assert api.calls[0].request.body is None


def test_remove_tag_without_a_tag_id_does_nothing(
    api: Any, client: IntercomClient
) -> None:
    client.remove_tag(Target("intercom", "conversation", "524", "vip"))
    assert not api.calls


def test_missing_tag_is_permanent(api: Any, client: IntercomClient) -> None:
    api.delete(
        f"{BASE}/conversations/524/tags/86",
        status=404,
        json={"type": "error.list", "errors": [{"code": "tag_not_found"}]},
    )
    with pytest.raises(PermanentError) as caught:
        client.remove_tag(CONVERSATION)
    assert caught.value.error_code == "tag_not_found"


def test_lookup_fills_in_from_the_contact(api: Any, client: IntercomClient) -> None:
    api.get(
        f"{BASE}/contacts/6762f1",
        json={
            "type": "contact",
            "id": "6762f1",
            "email": "joe@bloggs.com",
            "external_id": None,
        },
    )
    found = client.lookup_requester(Requester(external_id="70", remote_id="6762f1"))
    assert found == Requester(
        email="joe@bloggs.com", external_id="70", remote_id="6762f1"
    )


def test_lookup_needs_a_contact_id_and_a_gap(api: Any, client: IntercomClient) -> None:
    complete = Requester(email="a@example.com", external_id="1", remote_id="c")
    assert client.lookup_requester(complete) is complete
    assert client.lookup_requester(Requester(email="a@example.com")) == Requester(
        email="a@example.com"
    )
    assert not api.calls


def conversation_with(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "conversation",
        "id": "524",
        "conversation_parts": {
            "type": "conversation_part.list",
            "conversation_parts": list(parts),
        },
    }


STORED_NOTE = {"part_type": "note", "body": note_html(NOTE)}


@pytest.mark.parametrize(
    "text", [NOTE, "https://w.example/s/1?a=1&b=2", "screenshot requested:"]
)
def test_note_exists_reads_html_note_parts(
    api: Any, client: IntercomClient, text: str
) -> None:
    api.get(f"{BASE}/conversations/524", json=conversation_with(STORED_NOTE))
    assert client.note_exists(CONVERSATION, text)


def test_note_exists_is_false_without_a_matching_note(
    api: Any, client: IntercomClient
) -> None:
    comment = {"part_type": "comment", "body": note_html(NOTE)}
    other = {"part_type": "note", "body": "<p>Called the customer</p>"}
    api.get(f"{BASE}/conversations/524", json=conversation_with(comment, other, {}))
    assert not client.note_exists(CONVERSATION, NOTE)


def test_note_exists_on_a_contact_reads_its_notes(
    api: Any, client: IntercomClient
) -> None:
    # Intercom stores a plain-text contact note as HTML.
    stored = "<p>Bugpilot screenshot requested: https://w.example/s/1?a=1&amp;b=2</p>"
    api.get(
        f"{BASE}/contacts/6961d8/notes",
        json={
            "type": "list",
            "data": [{"type": "note", "body": None}, {"type": "note", "body": stored}],
        },
    )
    assert client.note_exists(CONTACT, NOTE)


def test_note_exists_tolerates_odd_answers(api: Any, client: IntercomClient) -> None:
    api.get(f"{BASE}/contacts/6961d8/notes", json={"type": "list", "data": "none"})
    assert not client.note_exists(CONTACT, NOTE)


def test_server_error_is_retried_briefly_then_transient(
    api: Any, client: IntercomClient, sleeps: list[float]
) -> None:
    api.post(f"{BASE}/conversations/524/reply", status=503)
    with pytest.raises(TransientError) as caught:
        client.write_note(CONVERSATION, NOTE)
    assert caught.value.http_status == 503
    assert len(api.calls) == 3
    assert len(sleeps) == 2
