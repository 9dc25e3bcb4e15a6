"""Zendesk: signature vectors, both payload shapes, and the REST client's requests."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from relay.config import ZendeskSettings
from relay.errors import (
    ConfigError,
    InvalidPayload,
    InvalidSignature,
    MissingSignature,
    PermanentError,
    RateLimited,
    StaleTimestamp,
    TransientError,
)
from relay.model import Ignored, Requester, TagEvent, Target
from relay.providers import zendesk
from relay.providers.zendesk import (
    INVOCATION_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ZendeskClient,
    parse_event,
    sign,
    verify_signature,
)
from tests.providers import strategies
from tests.providers.strategies import mutations

# The published vector: timestamp then body, the secret used as a literal string.
SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="
TIMESTAMP = "2021-03-25T05:09:27Z"
BODY = b'{"event":"ticket.updated","id":123}'
SIGNATURE = "S/RDdU2ERmj7LHDDoWJ2onPYH+t7/f2+LTM4dL7UiLM="
SIGNED_AT = datetime(2021, 3, 25, 5, 9, 27, tzinfo=UTC).timestamp()

SUBSCRIPTION = {
    "account_id": 22129848,
    "id": "0d4c5b2e-8a41-4c4e-9d3f-5b6a7c8d9e0f",
    "type": "zen:event-type:ticket.tags_changed",
    "subject": "zen:ticket:5158",
    "time": "2025-01-08T16:45:20.987Z",
    "zendesk_event_version": "2022-11-06",
    "detail": {
        "actor_id": "8447388090494",
        "assignee_id": "8447388090494",
        "id": "5158",
        "requester_id": "8447388090111",
        "status": "OPEN",
        "priority": "HIGH",
        "subject": "Cannot login to mobile app",
        "tags": ["bugpilot_request", "mobile"],
        "external_id": None,
        "via": {"channel": "web"},
        "updated_at": "2025-01-08T16:45:20Z",
    },
    "event": {"tags_added": ["bugpilot_request"], "tags_removed": []},
}

TRIGGER = {
    "source": "zendesk-trigger",
    "ticket_id": "35436",
    "tags": "bugpilot_request mobile vip",
    "requester_email": "jane@example.com",
    "requester_external_id": "user-123",
    "current_user_id": "384957",
    "updated_at": "2024-05-01T10:20Z",
}
INVOCATION = {INVOCATION_HEADER: "8350205582"}


def signed_headers(
    body: bytes = BODY, timestamp: str = TIMESTAMP, secret: str = SECRET
) -> dict[str, str]:
    return {
        SIGNATURE_HEADER: sign(body, timestamp, secret),
        TIMESTAMP_HEADER: timestamp,
    }


# -- signature ----------------------------------------------------------------


def test_sign_matches_the_published_vector() -> None:
    assert sign(BODY, TIMESTAMP, SECRET) == SIGNATURE


def test_published_vector_verifies() -> None:
    headers = {SIGNATURE_HEADER: SIGNATURE, TIMESTAMP_HEADER: TIMESTAMP}
    verify_signature(BODY, headers, [SECRET], tolerance=300, now=SIGNED_AT)


def test_old_body_then_timestamp_example_does_not_verify() -> None:
    # The superseded docs example signs body + timestamp; relay signs the other way.
    headers = {
        SIGNATURE_HEADER: "tRDSF7URY8BLCDlaBcQ7FHu051Zk+aAB0NKMP53teMw=",
        TIMESTAMP_HEADER: "2021-07-25T10:00:00Z",
    }
    now = datetime(2021, 7, 25, 10, tzinfo=UTC).timestamp()
    with pytest.raises(InvalidSignature):
        verify_signature(
            b'{"say": "hello"}',
            headers,
            ["HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA="],
            tolerance=300,
            now=now,
        )


@pytest.mark.parametrize(
    "headers",
    [
        {k.lower(): v for k, v in signed_headers().items()},
        {k.upper(): v for k, v in signed_headers().items()},
        Headers(signed_headers()),
    ],
    ids=["lower", "upper", "werkzeug"],
)
def test_header_names_are_matched_in_any_case(headers: Any) -> None:
    verify_signature(BODY, headers, [SECRET], tolerance=300, now=SIGNED_AT)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_each_secret_of_a_rotation_verifies(position: int) -> None:
    secrets = ["old-secret", "other-secret", "newest-secret"]
    headers = signed_headers(secret=secrets[position])
    verify_signature(BODY, headers, secrets, tolerance=300, now=SIGNED_AT)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(
            BODY, signed_headers(), ["a", "b"], tolerance=300, now=SIGNED_AT
        )


def test_no_configured_secret_verifies_nothing() -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, signed_headers(), [], tolerance=300, now=SIGNED_AT)


@pytest.mark.parametrize("missing", [SIGNATURE_HEADER, TIMESTAMP_HEADER])
@pytest.mark.parametrize("blank", [False, True])
def test_missing_or_empty_header_is_missing_signature(
    missing: str, blank: bool
) -> None:
    headers = signed_headers()
    if blank:
        headers[missing] = ""
    else:
        del headers[missing]
    with pytest.raises(MissingSignature):
        verify_signature(BODY, headers, [SECRET], tolerance=300, now=SIGNED_AT)


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamp_within_tolerance_passes(offset: float) -> None:
    verify_signature(
        BODY, signed_headers(), [SECRET], tolerance=300, now=SIGNED_AT + offset
    )


@pytest.mark.parametrize("offset", [-301, 301, 86400, -86400])
def test_timestamp_outside_tolerance_is_stale_in_both_directions(
    offset: float,
) -> None:
    with pytest.raises(StaleTimestamp):
        verify_signature(
            BODY, signed_headers(), [SECRET], tolerance=300, now=SIGNED_AT + offset
        )


@pytest.mark.parametrize("timestamp", ["yesterday", "1616648967", "2021-13-40T99:00Z"])
def test_unparseable_signed_timestamp_is_stale(timestamp: str) -> None:
    headers = signed_headers(timestamp=timestamp)
    with pytest.raises(StaleTimestamp):
        verify_signature(BODY, headers, [SECRET], tolerance=300, now=SIGNED_AT)


def test_timestamp_without_zone_is_read_as_utc() -> None:
    headers = signed_headers(timestamp="2021-03-25T05:09:27")
    verify_signature(BODY, headers, [SECRET], tolerance=0, now=SIGNED_AT)


def test_empty_body_is_signed_too() -> None:
    headers = signed_headers(body=b"")
    verify_signature(b"", headers, [SECRET], tolerance=300, now=SIGNED_AT)


@given(st.data())
def test_any_single_byte_change_to_the_body_fails(data: st.DataObject) -> None:
    body = data.draw(st.binary(min_size=1, max_size=200))
    headers = signed_headers(body=body)
    index = data.draw(st.integers(0, len(body) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([byte]) + body[index + 1 :]
    with pytest.raises(InvalidSignature):
        verify_signature(changed, headers, [SECRET], tolerance=300, now=SIGNED_AT)


@given(st.data())
def test_any_single_byte_change_to_the_timestamp_fails(data: st.DataObject) -> None:
    raw = TIMESTAMP.encode("ascii")
    index = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(1, 255).filter(lambda b: b != raw[index]))
    # WSGI servers hand header bytes over as latin-1 text.
    changed = (raw[:index] + bytes([byte]) + raw[index + 1 :]).decode("latin-1")
    headers = {SIGNATURE_HEADER: SIGNATURE, TIMESTAMP_HEADER: changed}
    with pytest.raises(InvalidSignature):
        verify_signature(BODY, headers, [SECRET], tolerance=300, now=SIGNED_AT)


@given(
    body=st.binary(max_size=300),
    secrets=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5),
    data=st.data(),
)
def test_every_secret_in_a_rotation_list_verifies(
    body: bytes, secrets: list[str], data: st.DataObject
) -> None:
    secret = data.draw(st.sampled_from(secrets))
    headers = signed_headers(body=body, secret=secret)
    verify_signature(body, headers, secrets, tolerance=300, now=SIGNED_AT)


# -- parse_event: event subscriptions ---------------------------------------------


def test_tags_changed_event_becomes_a_tag_event() -> None:
    assert parse_event(SUBSCRIPTION, {}) == TagEvent(
        provider="zendesk",
        delivery_id="0d4c5b2e-8a41-4c4e-9d3f-5b6a7c8d9e0f",
        target_kind="ticket",
        target_id="5158",
        tags_added=("bugpilot_request",),
        requester=Requester(remote_id="8447388090111"),
        subject="Cannot login to mobile app",
        actor_id="8447388090494",
    )


def with_changes(example: dict[str, Any], **paths: Any) -> dict[str, Any]:
    """A deep copy of ``example`` with ``a__b=value`` set (or deleted for ...)."""
    changed = copy.deepcopy(example)
    for path, value in paths.items():
        *parents, last = path.split("__")
        node = changed
        for key in parents:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return changed


def test_integer_ids_are_loaded_as_strings() -> None:
    payload = with_changes(
        SUBSCRIPTION, detail__id=5158, detail__requester_id=42, detail__actor_id=7
    )
    event = parse_event(payload, {})
    assert isinstance(event, TagEvent)
    assert (event.target_id, event.requester.remote_id, event.actor_id) == (
        "5158",
        "42",
        "7",
    )


@pytest.mark.parametrize("detail_id", [..., None, ""])
def test_ticket_id_falls_back_to_the_subject(detail_id: Any) -> None:
    event = parse_event(with_changes(SUBSCRIPTION, detail__id=detail_id), {})
    assert isinstance(event, TagEvent)
    assert event.target_id == "5158"


def test_no_ticket_id_anywhere_is_invalid() -> None:
    payload = with_changes(SUBSCRIPTION, detail__id=..., subject="zen:user:1")
    with pytest.raises(InvalidPayload) as caught:
        parse_event(payload, {})
    assert caught.value.details == {
        "detail": {"id": ["Missing data for required field."]}
    }


def test_blank_requester_and_actor_ids_mean_unknown() -> None:
    payload = with_changes(SUBSCRIPTION, detail__requester_id="", detail__actor_id="")
    event = parse_event(payload, {})
    assert isinstance(event, TagEvent)
    assert event.requester == Requester()
    assert event.actor_id is None


def test_added_tags_are_stripped_and_each_kept_once() -> None:
    payload = with_changes(SUBSCRIPTION, event__tags_added=["a", " b ", "a", "", " "])
    event = parse_event(payload, {})
    assert isinstance(event, TagEvent)
    assert event.tags_added == ("a", "b")


@pytest.mark.parametrize("tags_added", [[], [""], ...])
def test_no_added_tags_is_ignored(tags_added: Any) -> None:
    payload = with_changes(SUBSCRIPTION, event__tags_added=tags_added)
    assert parse_event(payload, {}) == Ignored("no_tags_added", SUBSCRIPTION["id"])


@pytest.mark.parametrize(
    "kind",
    ["zen:event-type:ticket.comment_added", "zen:event-type:user.tags_changed"],
)
def test_other_event_types_are_ignored(kind: str) -> None:
    # Their detail has another shape, which must not make them invalid.
    payload = {"id": "e-1", "type": kind, "detail": [], "event": "x"}
    assert parse_event(payload, {}) == Ignored("unsupported_event", "e-1")


# -- parse_event: trigger bodies ------------------------------------------------


def test_trigger_body_becomes_a_tag_event() -> None:
    assert parse_event(TRIGGER, INVOCATION) == TagEvent(
        provider="zendesk",
        delivery_id="8350205582",
        target_kind="ticket",
        target_id="35436",
        tags_added=("bugpilot_request", "mobile", "vip"),
        requester=Requester(email="jane@example.com", external_id="user-123"),
        subject="",
        actor_id="384957",
    )


def test_trigger_reads_the_invocation_id_in_any_header_case() -> None:
    event = parse_event(TRIGGER, {INVOCATION_HEADER.lower(): "99"})
    assert isinstance(event, TagEvent)
    assert event.delivery_id == "99"


def test_trigger_subject_and_integer_ids_are_read() -> None:
    payload = dict(TRIGGER, subject="Crash on save", ticket_id=35436, current_user_id=7)
    event = parse_event(payload, INVOCATION)
    assert isinstance(event, TagEvent)
    assert (event.subject, event.target_id, event.actor_id) == (
        "Crash on save",
        "35436",
        "7",
    )


def test_trigger_blank_requester_fields_mean_missing() -> None:
    payload = dict(TRIGGER, requester_email="", requester_external_id="")
    event = parse_event(payload, INVOCATION)
    assert isinstance(event, TagEvent)
    assert event.requester == Requester()


def test_trigger_tags_split_on_any_whitespace() -> None:
    event = parse_event(dict(TRIGGER, tags="  a\tb\n a  "), INVOCATION)
    assert isinstance(event, TagEvent)
    assert event.tags_added == ("a", "b")


def test_trigger_without_tags_is_ignored() -> None:
    assert parse_event(dict(TRIGGER, tags=" "), INVOCATION) == Ignored(
        "no_tags_added", "8350205582"
    )


def test_trigger_without_invocation_id_names_the_header() -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse_event(TRIGGER, {})
    assert caught.value.details == {INVOCATION_HEADER: ["Missing header."]}


def test_overlong_invocation_id_is_invalid() -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse_event(TRIGGER, {INVOCATION_HEADER: "8" * 65})
    assert caught.value.details == {INVOCATION_HEADER: ["Not a valid id."]}


def test_longest_accepted_ids_and_user_keys() -> None:
    payload = dict(
        TRIGGER,
        ticket_id="9" * 64,
        requester_email="e" * 320,
        requester_external_id="x" * 320,
    )
    event = parse_event(payload, {INVOCATION_HEADER: "8" * 64})
    assert isinstance(event, TagEvent)
    assert event.target_id == "9" * 64
    assert event.requester.external_id == "x" * 320


def test_bad_trigger_without_invocation_id_reports_both() -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse_event(dict(TRIGGER, ticket_id=None), {})
    assert set(caught.value.details) == {"ticket_id", INVOCATION_HEADER}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (None, "_schema"),
        ([], "_schema"),
        ("text", "_schema"),
        (12, "_schema"),
        ({}, "source"),
        (dict(TRIGGER, source="zendesk"), "source"),
        (with_changes(TRIGGER, ticket_id=...), "ticket_id"),
        (dict(TRIGGER, ticket_id=""), "ticket_id"),
        (dict(TRIGGER, ticket_id=35436.0), "ticket_id"),
        (dict(TRIGGER, ticket_id=True), "ticket_id"),
        (dict(TRIGGER, ticket_id=-1), "ticket_id"),
        (dict(TRIGGER, ticket_id=10**400), "ticket_id"),
        (dict(TRIGGER, ticket_id="9" * 65), "ticket_id"),
        (dict(TRIGGER, requester_email="e" * 321), "requester_email"),
        (dict(TRIGGER, requester_external_id="x" * 321), "requester_external_id"),
        (dict(TRIGGER, ticket_id=["1"]), "ticket_id"),
        (dict(TRIGGER, tags=["a", "b"]), "tags"),
        (dict(TRIGGER, tags=None), "tags"),
        (dict(TRIGGER, requester_email=5), "requester_email"),
        (dict(TRIGGER, requester_external_id={}), "requester_external_id"),
        (dict(TRIGGER, subject=[]), "subject"),
        ({"type": "zen:event-type:ticket.tags_changed"}, "id"),
        (with_changes(SUBSCRIPTION, id=7.5), "id"),
        (with_changes(SUBSCRIPTION, detail=...), "detail"),
        (with_changes(SUBSCRIPTION, detail=None), "detail"),
        (with_changes(SUBSCRIPTION, detail="5158"), "detail"),
        (with_changes(SUBSCRIPTION, event=...), "event"),
        (with_changes(SUBSCRIPTION, event=[]), "event"),
        (with_changes(SUBSCRIPTION, event__tags_added="a b"), "event"),
        (with_changes(SUBSCRIPTION, event__tags_added=None), "event"),
        (with_changes(SUBSCRIPTION, event__tags_added=[1, None]), "event"),
        (with_changes(SUBSCRIPTION, detail__requester_id=1.5), "detail"),
        (with_changes(SUBSCRIPTION, detail__subject={"x": 1}), "detail"),
        (with_changes(SUBSCRIPTION, subject=5158), "subject"),
        (
            with_changes(
                SUBSCRIPTION, detail__id=..., subject="zen:ticket:" + "1" * 65
            ),
            "detail",
        ),
    ],
)
def test_wrong_shapes_are_invalid_payloads(payload: Any, field: str) -> None:
    with pytest.raises(InvalidPayload) as caught:
        parse_event(payload, INVOCATION)
    assert field in caught.value.details
    json.dumps(caught.value.body())  # the answer body must serialise


# -- parse_event: anything at all -------------------------------------------------

json_values = strategies.json_values(
    ["", "5158", "zen:ticket:1", TRIGGER["source"]],
    [*SUBSCRIPTION, *SUBSCRIPTION["detail"], *TRIGGER, "tags_added"],
)


def parses_or_rejects(payload: Any, headers: dict[str, str]) -> None:
    try:
        result = parse_event(payload, headers)
    except InvalidPayload as exc:
        assert exc.details
        json.dumps(exc.body())
    else:
        assert isinstance(result, TagEvent | Ignored)


@given(json_values, st.sampled_from([{}, INVOCATION]))
def test_arbitrary_json_parses_or_is_invalid(
    payload: Any, headers: dict[str, str]
) -> None:
    parses_or_rejects(payload, headers)


@given(
    mutations(SUBSCRIPTION, json_values) | mutations(TRIGGER, json_values),
    st.sampled_from([{}, INVOCATION]),
)
def test_mutated_examples_parse_or_are_invalid(
    payload: Any, headers: dict[str, str]
) -> None:
    parses_or_rejects(payload, headers)


# -- ZendeskClient -------------------------------------------------------------

BASE = "https://acme.zendesk.com"
SETTINGS = ZendeskSettings(
    url=BASE,
    webhook_secrets=(SECRET,),
    email="agent@acme.example",
    api_token="tok123",
)
TICKET = Target(provider="zendesk", kind="ticket", id="35436", tag="bugpilot_request")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api() -> Any:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(sleeps: list[float], clock: Clock) -> ZendeskClient:
    return ZendeskClient(SETTINGS, sleep=sleeps.append, user_cache_ttl=300, clock=clock)


def sent_json(call: Any) -> Any:
    return json.loads(call.request.body)


def test_write_note_puts_a_private_comment(api: Any, client: ZendeskClient) -> None:
    api.put(f"{BASE}/api/v2/tickets/35436", json={"ticket": {"id": 35436}})
    client.write_note(TICKET, "Bugpilot screenshot requested: https://x.example/s/1")

    (call,) = api.calls
    assert sent_json(call) == {
        "ticket": {
            "comment": {
                "body": "Bugpilot screenshot requested: https://x.example/s/1",
                "public": False,
            }
        }
    }
    expected_auth = base64.b64encode(b"agent@acme.example/token:tok123").decode()
    assert call.request.headers["Authorization"] == f"Basic {expected_auth}"
    assert call.request.headers["Accept"] == "application/json"
    assert call.request.headers["Content-Type"] == "application/json"


def test_oauth_token_is_sent_as_bearer(api: Any) -> None:
    settings = ZendeskSettings(url=BASE, webhook_secrets=(), oauth_token="oauth-1")
    api.put(f"{BASE}/api/v2/tickets/35436", json={})
    ZendeskClient(settings).write_note(TICKET, "note")
    assert api.calls[0].request.headers["Authorization"] == "Bearer oauth-1"


def test_settings_without_credentials_are_refused() -> None:
    settings = ZendeskSettings(url=BASE, webhook_secrets=(), email="a@b.example")
    with pytest.raises(ConfigError):
        ZendeskClient(settings)


def test_ids_cannot_change_the_request_path(api: Any, client: ZendeskClient) -> None:
    api.put(f"{BASE}/api/v2/tickets/1%2F..%2Fusers", json={})
    client.write_note(Target("zendesk", "ticket", "1/../users", "t"), "note")
    assert api.calls[0].request.url == f"{BASE}/api/v2/tickets/1%2F..%2Fusers"


def test_remove_tag_deletes_only_the_trigger_tag(
    api: Any, client: ZendeskClient
) -> None:
    api.delete(f"{BASE}/api/v2/tickets/35436/tags", json={"tags": ["mobile"]})
    client.remove_tag(TICKET)
    assert sent_json(api.calls[0]) == {"tags": ["bugpilot_request"]}


def test_own_actor_id_is_fetched_once(api: Any, client: ZendeskClient) -> None:
    api.get(f"{BASE}/api/v2/users/me", json={"user": {"id": 384957, "name": "Relay"}})
    assert client.own_actor_id() == "384957"
    assert client.own_actor_id() == "384957"
    assert len(api.calls) == 1


def test_own_actor_id_without_an_id_is_a_bad_response(
    api: Any, client: ZendeskClient
) -> None:
    api.get(f"{BASE}/api/v2/users/me", json={"user": {"id": None}})
    with pytest.raises(TransientError) as caught:
        client.own_actor_id()
    assert caught.value.reason == "bad_response"


def test_complete_requester_needs_no_lookup(api: Any, client: ZendeskClient) -> None:
    requester = Requester(email="j@example.com", external_id="u-1", remote_id="9")
    assert client.lookup_requester(requester) is requester
    assert client.lookup_requester(Requester(email="j@example.com")) == Requester(
        email="j@example.com"
    )
    assert not api.calls


def test_lookup_fills_in_from_the_user_record(api: Any, client: ZendeskClient) -> None:
    api.get(
        f"{BASE}/api/v2/users/8447388090111",
        json={
            "user": {
                "id": 8447388090111,
                "email": "jane@example.com",
                "external_id": "",
            }
        },
    )
    found = client.lookup_requester(Requester(remote_id="8447388090111"))
    assert found == Requester(email="jane@example.com", remote_id="8447388090111")


def test_lookup_keeps_what_the_event_already_knew(
    api: Any, client: ZendeskClient
) -> None:
    api.get(
        f"{BASE}/api/v2/users/5",
        json={"user": {"id": 5, "email": "other@example.com", "external_id": 77}},
    )
    found = client.lookup_requester(Requester(email="jane@example.com", remote_id="5"))
    assert found == Requester(email="jane@example.com", external_id="77", remote_id="5")


def test_user_lookups_are_cached_for_the_ttl(
    api: Any, client: ZendeskClient, clock: Clock
) -> None:
    user = {"user": {"id": 5, "email": "j@example.com", "external_id": "u-5"}}
    api.get(f"{BASE}/api/v2/users/5", json=user)
    for _ in range(3):
        client.lookup_requester(Requester(remote_id="5"))
    assert len(api.calls) == 1

    clock.now += 301
    client.lookup_requester(Requester(remote_id="5"))
    assert len(api.calls) == 2


def test_missing_user_is_permanent(api: Any, client: ZendeskClient) -> None:
    api.get(
        f"{BASE}/api/v2/users/5",
        status=404,
        json={"error": "RecordNotFound", "description": "Not found"},
    )
    with pytest.raises(PermanentError) as caught:
        client.lookup_requester(Requester(remote_id="5"))
    assert (caught.value.http_status, caught.value.error_code) == (
        404,
        "RecordNotFound",
    )


COMMENTS = f"{BASE}/api/v2/tickets/35436/comments?sort_order=desc"


def comment(body: str, *, public: bool) -> dict[str, Any]:
    return {"id": 1, "type": "Comment", "body": body, "public": public}


def test_note_exists_finds_a_private_comment(api: Any, client: ZendeskClient) -> None:
    api.get(
        COMMENTS,
        json={
            "comments": [
                comment("Hi, what happened?", public=True),
                comment("Bugpilot session: https://s.example/1", public=False),
            ],
            "next_page": None,
        },
    )
    assert client.note_exists(TICKET, "https://s.example/1")
    assert not client.note_exists(TICKET, "https://s.example/2")


def test_public_comments_are_not_notes(api: Any, client: ZendeskClient) -> None:
    api.get(
        COMMENTS,
        json={"comments": [comment("see https://s.example/1", public=True)]},
    )
    assert not client.note_exists(TICKET, "https://s.example/1")


def test_note_exists_follows_next_page_on_the_same_host(
    api: Any, client: ZendeskClient
) -> None:
    page_2 = f"{BASE}/api/v2/tickets/35436/comments.json?page=2&sort_order=desc"
    api.get(COMMENTS, json={"comments": [], "next_page": page_2})
    api.get(page_2, json={"comments": [comment("https://s.example/1", public=False)]})
    assert client.note_exists(TICKET, "https://s.example/1")
    assert len(api.calls) == 2


def test_note_exists_never_follows_another_host(
    api: Any, client: ZendeskClient
) -> None:
    api.get(
        COMMENTS,
        json={"comments": [], "next_page": "https://acme.zendesk.com.evil.example/p2"},
    )
    assert not client.note_exists(TICKET, "https://s.example/1")
    assert len(api.calls) == 1


def test_note_exists_reads_a_bounded_number_of_pages(
    api: Any, client: ZendeskClient
) -> None:
    api.get(COMMENTS, json={"comments": [], "next_page": COMMENTS})
    assert not client.note_exists(TICKET, "https://s.example/1")
    assert len(api.calls) == zendesk.NOTE_SCAN_PAGES


def test_rate_limit_waits_out_a_short_retry_after(
    api: Any, client: ZendeskClient, sleeps: list[float]
) -> None:
    url = f"{BASE}/api/v2/tickets/35436"
    api.put(url, status=429, headers={"Retry-After": "2"})
    api.put(url, json={})
    client.write_note(TICKET, "note")
    assert sleeps == [2.0]
    assert len(api.calls) == 2


def test_long_retry_after_is_left_to_the_job(
    api: Any, client: ZendeskClient, sleeps: list[float]
) -> None:
    api.put(f"{BASE}/api/v2/tickets/35436", status=429, headers={"Retry-After": "93"})
    with pytest.raises(RateLimited) as caught:
        client.write_note(TICKET, "note")
    assert caught.value.retry_after == 93.0
    assert sleeps == []


def test_connection_failure_is_transient(api: Any, client: ZendeskClient) -> None:
    api.put(f"{BASE}/api/v2/tickets/35436", body=requests.ConnectionError("refused"))
    with pytest.raises(TransientError) as caught:
        client.write_note(TICKET, "note")
    assert caught.value.reason == "connection_error"
