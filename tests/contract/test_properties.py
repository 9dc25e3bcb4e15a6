"""Properties that fill the gaps the provider and rules tests leave.

tests/providers covers single-byte changes to a body or a timestamp under one
secret, rotation lists, and arbitrary JSON in the parsers; tests/test_rules
covers rendering. Here: tampering under rotation lists, tampered signature
headers, arbitrary header text, every parsed event fitting the store, the whole
webhook view answering only as the spec says, templates in every template key
of a rules file, and which URLs the Bugpilot client will ever call.
"""

from __future__ import annotations

import json
import string
import time
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.bugpilot import BugpilotClient
from relay.errors import (
    InvalidPayload,
    InvalidSignature,
    MissingSignature,
    RulesError,
    StaleTimestamp,
)
from relay.model import Ignored, TagEvent
from relay.providers import MAX_ID_LENGTH, MAX_USER_KEY_LENGTH, intercom, zendesk
from relay.rules import PLACEHOLDERS, parse_rules
from tests import factories
from tests.contract.conftest import (
    OLD_INTERCOM_SECRET,
    OLD_ZENDESK_SECRET,
    intercom_signature,
    response_validator,
    utc_stamp,
    zendesk_signature,
)

TOLERANCE = 300
SIGNED_AT = "2025-01-08T16:45:20Z"
NOW = 1736354720.0
"""SIGNED_AT in seconds since the epoch."""

secret_lists = st.lists(
    st.text(min_size=1, max_size=30), min_size=1, max_size=4, unique=True
)
any_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=()), max_size=80
)
"""Any code points, lone surrogates included."""


def flip_one_byte(data: st.DataObject, raw: bytes) -> bytes:
    index = data.draw(st.integers(0, len(raw) - 1), label="index")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[index]))
    return raw[:index] + bytes([byte]) + raw[index + 1 :]


def zendesk_headers(signature: str, timestamp: str) -> dict[str, str]:
    return {zendesk.SIGNATURE_HEADER: signature, zendesk.TIMESTAMP_HEADER: timestamp}


# -- tampering under a rotation list -------------------------------------------------


@given(body=st.binary(min_size=1, max_size=200), secrets=secret_lists, data=st.data())
def test_a_changed_zendesk_body_fails_under_every_secret_of_the_list(
    body: bytes, secrets: list[str], data: st.DataObject
) -> None:
    signer = data.draw(st.sampled_from(secrets), label="signer")
    headers = zendesk_headers(zendesk_signature(body, SIGNED_AT, signer), SIGNED_AT)
    zendesk.verify_signature(body, headers, secrets, tolerance=TOLERANCE, now=NOW)

    with pytest.raises(InvalidSignature):
        zendesk.verify_signature(
            flip_one_byte(data, body), headers, secrets, tolerance=TOLERANCE, now=NOW
        )


@given(secrets=secret_lists, data=st.data())
def test_a_changed_zendesk_timestamp_fails_under_every_secret_of_the_list(
    secrets: list[str], data: st.DataObject
) -> None:
    body = b'{"type": "zen:event-type:ticket.tags_changed"}'
    signer = data.draw(st.sampled_from(secrets), label="signer")
    signature = zendesk_signature(body, SIGNED_AT, signer)
    # WSGI servers hand header bytes over as latin-1 text.
    changed = flip_one_byte(data, SIGNED_AT.encode()).decode("latin-1")

    with pytest.raises(InvalidSignature):
        zendesk.verify_signature(
            body,
            zendesk_headers(signature, changed),
            secrets,
            tolerance=TOLERANCE,
            now=NOW,
        )


@given(body=st.binary(min_size=1, max_size=200), secrets=secret_lists, data=st.data())
def test_a_changed_intercom_body_fails_under_every_secret_of_the_list(
    body: bytes, secrets: list[str], data: st.DataObject
) -> None:
    signer = data.draw(st.sampled_from(secrets), label="signer")
    headers = {intercom.SIGNATURE_HEADER: intercom_signature(body, signer)}
    intercom.verify_signature(body, headers, secrets)

    with pytest.raises(InvalidSignature):
        intercom.verify_signature(flip_one_byte(data, body), headers, secrets)


# -- tampered signature headers --------------------------------------------------------


@given(body=st.binary(max_size=200), secrets=secret_lists, data=st.data())
def test_any_change_to_a_zendesk_signature_fails(
    body: bytes, secrets: list[str], data: st.DataObject
) -> None:
    signature = zendesk_signature(body, SIGNED_AT, data.draw(st.sampled_from(secrets)))
    changed = flip_one_byte(data, signature.encode()).decode("latin-1")

    with pytest.raises((InvalidSignature, MissingSignature)):
        zendesk.verify_signature(
            body,
            zendesk_headers(changed, SIGNED_AT),
            secrets,
            tolerance=TOLERANCE,
            now=NOW,
        )


@given(body=st.binary(max_size=200), secrets=secret_lists, data=st.data())
def test_a_changed_intercom_signature_passes_only_as_a_change_of_letter_case(
    body: bytes, secrets: list[str], data: st.DataObject
) -> None:
    signature = intercom_signature(body, data.draw(st.sampled_from(secrets)))
    changed = flip_one_byte(data, signature.encode()).decode("latin-1")
    headers = {intercom.SIGNATURE_HEADER: changed}

    # "sha1=" and the hex digits are read case-blind; nothing else may differ.
    if changed.lower() == signature:
        intercom.verify_signature(body, headers, secrets)
    else:
        with pytest.raises((InvalidSignature, MissingSignature)):
            intercom.verify_signature(body, headers, secrets)


# -- arbitrary header text -------------------------------------------------------------


@given(signature=any_text, timestamp=any_text, body=st.binary(max_size=100))
def test_arbitrary_zendesk_headers_only_ever_fail_as_documented(
    signature: str, timestamp: str, body: bytes
) -> None:
    with pytest.raises((MissingSignature, InvalidSignature, StaleTimestamp)):
        zendesk.verify_signature(
            body,
            zendesk_headers(signature, timestamp),
            ["a-secret", OLD_ZENDESK_SECRET],
            tolerance=TOLERANCE,
        )


@given(signature=any_text, body=st.binary(max_size=100))
def test_arbitrary_intercom_headers_only_ever_fail_as_documented(
    signature: str, body: bytes
) -> None:
    with pytest.raises((MissingSignature, InvalidSignature)):
        intercom.verify_signature(
            body, {intercom.SIGNATURE_HEADER: signature}, ["a", OLD_INTERCOM_SECRET]
        )


# -- every parsed event fits the store -------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**25), max_value=10**25)
    | st.floats()
    | any_text
    | st.text(alphabet=" \t", max_size=3),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)

EXAMPLES = [
    factories.zendesk_tags_changed(),
    factories.zendesk_trigger(),
    factories.intercom_conversation_tagged(applied_by="7"),
    factories.intercom_ping(),
    {
        "topic": "contact.lead.tag.created",
        "id": "notif_1",
        "data": {
            "item": {
                "tag": {"id": "5", "name": "vip"},
                "contact": {"id": "c1", "email": "a@b.example"},
            }
        },
    },
]


@st.composite
def near_examples(draw: st.DrawFn) -> Any:
    """A sample payload with values somewhere inside replaced by any JSON."""
    payload = json.loads(json.dumps(draw(st.sampled_from(EXAMPLES))))
    for _ in range(draw(st.integers(1, 3))):
        node = payload
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict) or not node[key]:
                node[key] = draw(json_values)
                break
            node = node[key]
        else:
            if isinstance(node, dict):
                node[draw(st.sampled_from(["id", "tags", "type", "topic"]))] = draw(
                    json_values
                )
    return payload


def assert_fits_the_store(event: TagEvent) -> None:
    """What the store's columns hold: ids of MAX_ID_LENGTH, user keys of 320."""
    assert 0 < len(event.delivery_id) <= MAX_ID_LENGTH
    assert 0 < len(event.target_id) <= MAX_ID_LENGTH
    assert event.tags_added
    for tag in event.tags_added:
        assert tag and tag == tag.strip()
    assert len(set(event.tags_added)) == len(event.tags_added)
    for _, tag_id in event.tag_ids:
        assert len(tag_id) <= MAX_ID_LENGTH
    requester = event.requester
    for key in (requester.email, requester.external_id):
        assert key is None or 0 < len(key) <= MAX_USER_KEY_LENGTH
    assert requester.remote_id is None or len(requester.remote_id) <= MAX_ID_LENGTH


@settings(max_examples=300)
@given(
    payload=json_values | near_examples(),
    invocation=st.none() | any_text,
    provider=st.sampled_from([zendesk, intercom]),
)
def test_the_parsers_give_an_event_that_fits_the_store_or_a_documented_error(
    payload: Any, invocation: str | None, provider: Any
) -> None:
    headers = {} if invocation is None else {zendesk.INVOCATION_HEADER: invocation}
    try:
        result = provider.parse_event(payload, headers)
    except InvalidPayload as exc:
        assert exc.details
        json.dumps(exc.body())
        return
    if isinstance(result, Ignored):
        assert result.reason in (
            "ping",
            "unsupported_event",
            "unsupported_topic",
            "no_tags_added",
        )
        return
    assert_fits_the_store(result)


# -- the webhook view answers only as the spec says ------------------------------------

content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ]
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda value: json.dumps(value).encode())
    | near_examples().map(lambda value: json.dumps(value).encode())
)


def signed(path: str, body: bytes, content_type: str) -> dict[str, str]:
    headers = {"Content-Type": content_type} if content_type else {}
    if path.endswith("zendesk"):
        stamp = utc_stamp()
        headers[zendesk.SIGNATURE_HEADER] = zendesk_signature(
            body, stamp, OLD_ZENDESK_SECRET
        )
        headers[zendesk.TIMESTAMP_HEADER] = stamp
        headers[zendesk.INVOCATION_HEADER] = str(time.time_ns())
    else:
        headers[intercom.SIGNATURE_HEADER] = intercom_signature(
            body, OLD_INTERCOM_SECRET
        )
    return headers


WEBHOOKS = st.sampled_from(["/webhooks/zendesk", "/webhooks/intercom"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=WEBHOOKS, body=bodies, content_type=content_types)
def test_a_signed_delivery_gets_a_documented_answer(
    app: Flask, path: str, body: bytes, content_type: str
) -> None:
    response = app.test_client().post(
        path, data=body, headers=signed(path, body, content_type)
    )

    assert response.status_code in (200, 202, 400, 413, 415, 422), response.json
    assert response.mimetype == "application/json"
    errors = list(
        response_validator(path, "POST", response.status_code).iter_errors(
            response.json
        )
    )
    assert errors == []
    assert response.headers["X-Request-Id"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=WEBHOOKS,
    body=bodies.filter(bool),
    content_type=content_types,
    data=st.data(),
)
def test_a_tampered_delivery_is_always_401(
    app: Flask, path: str, body: bytes, content_type: str, data: st.DataObject
) -> None:
    headers = signed(path, body, content_type)
    response = app.test_client().post(
        path, data=flip_one_byte(data, body), headers=headers
    )

    assert (response.status_code, response.json) == (
        401,
        {"error": "invalid_signature"},
    )


# -- templates in every template key ---------------------------------------------------

TEMPLATE_KEYS = ["description", "note", "offline_note", "report_note"]
RULE = """version: 1
rules:
  - name: r
    when: {{tag: t}}
    action: upload-screenshot
    {key}: {template}
"""


@given(
    key=st.sampled_from(TEMPLATE_KEYS),
    name=st.sampled_from(sorted(PLACEHOLDERS)),
    access=st.sampled_from(
        [".__class__", ".__globals__", "[0]", "[secret]", ".real", "!r", ":>99"]
    ),
    before=st.text(alphabet=string.ascii_letters + " :", max_size=10),
)
def test_a_template_reaching_into_a_value_is_refused_in_every_key(
    key: str, name: str, access: str, before: str
) -> None:
    template = json.dumps(before + "{" + name + access + "}")

    with pytest.raises(RulesError) as refused:
        parse_rules(RULE.format(key=key, template=template), "rules.yaml")

    assert any(f"rules[0].{key}" in problem for problem in refused.value.problems)


# -- the Bugpilot client calls its own origin only -------------------------------------

HOST = "widget-api.bugpilot.io"
CLIENT = BugpilotClient(api_url=f"https://{HOST}", api_key="k", workspace_id="w")


@given(
    scheme=st.sampled_from(["https", "HTTPS", "http", "ftp", "javascript", ""]),
    userinfo=st.sampled_from(["", "user@", f"{HOST}@", "a:b@"]),
    host=st.sampled_from(
        [HOST, HOST.upper(), f"{HOST}.evil.example", f"evil.{HOST}", "127.0.0.1"]
    ),
    port=st.sampled_from(["", ":443", ":8443", ":80", ":99999", ":x"]),
    path=st.text(alphabet=string.printable, max_size=30),
)
def test_the_client_owns_only_urls_on_its_own_origin(
    scheme: str, userinfo: str, host: str, port: str, path: str
) -> None:
    # The "/" after the port ends the authority, whatever the path holds.
    url = f"{scheme}://{userinfo}{host}{port}/{path}" if scheme else f"//{host}/{path}"

    expected = (
        not any(char.isspace() or char == "\\" for char in url)
        and scheme.lower() == "https"
        and not userinfo
        and host.lower() == HOST
        and port in ("", ":443")
    )
    assert CLIENT.owns(url) is expected, url


def test_port_zero_is_not_the_default_port() -> None:
    assert not CLIENT.owns(f"https://{HOST}:0/api/v1/session-info/w/t")
