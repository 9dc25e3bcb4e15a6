"""The helpdesk providers relay listens to: ``zendesk`` and ``intercom``.

Each provider module holds the three things that differ per helpdesk: how a
delivery is signed (``verify_signature``), how its JSON is shaped
(``parse_event``) and how to write a note back (the client class). Signature
checks and parsing import no Flask, so they are tested alone.

The helpers here are what both providers share: a case-blind header lookup, a
marshmallow base that drops unknown keys, a field for ids that arrive as JSON
strings or integers, one way to turn a schema failure into ``InvalidPayload``,
and the small readers of helpdesk API answers that both clients use.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import requests
from marshmallow import EXCLUDE, Schema, ValidationError, fields

from relay.errors import InvalidPayload, TransientError

MAX_ID_LENGTH = 64
"""Ticket, contact, tag and delivery ids are far shorter; the store is sized so."""
MAX_NUMERIC_ID = 10**20
"""Helpdesk ids are 64-bit at most; a longer number is not an id."""
MAX_USER_KEY_LENGTH = 320
"""An email or external id longer than this cannot be a Bugpilot user id."""


def header(headers: Mapping[str, str], name: str) -> str:
    """The stripped value of header ``name`` in any letter case, or ``""``."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == wanted), None)
    return value.strip() if isinstance(value, str) else ""


def matches_any(received: str, expected: Iterable[str]) -> bool:
    """True when ``received`` equals one of ``expected``, in constant time.

    Every candidate is compared, whatever matched first, so the time taken does
    not tell which secret of a rotation list signed the delivery.
    """
    given = received.encode("utf-8", "replace")
    matched = False
    for candidate in expected:
        matched |= hmac.compare_digest(given, candidate.encode("utf-8"))
    return matched


class PayloadSchema(Schema):
    """Base of every webhook schema: keys relay does not read are dropped."""

    class Meta:
        unknown = EXCLUDE


class Id(fields.String):
    """A provider id sent as a JSON string or a non-negative integer; loads as str."""

    def __init__(self, *, max_length: int = MAX_ID_LENGTH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        # bool is an int subclass, and floats such as 5158.0 are not ids.
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < MAX_NUMERIC_ID:
                raise ValidationError("Not a valid id.")
            return str(value)
        if not isinstance(value, str) or len(value) > self.max_length:
            raise ValidationError("Not a valid id.")
        return value.strip()


def load(schema: Schema, payload: object) -> dict[str, Any]:
    """Load ``payload`` with ``schema``; a mismatch raises ``InvalidPayload``."""
    try:
        data: dict[str, Any] = schema.load(payload)  # type: ignore[arg-type]
    except ValidationError as exc:
        messages = exc.messages
        raise InvalidPayload(
            messages if isinstance(messages, dict) else {"_schema": messages}
        ) from None
    return data


def blank_to_none(value: str | None) -> str | None:
    """Helpdesks render a missing value as ``""``; relay means ``None`` by it."""
    return value or None


def segment(value: str) -> str:
    """``value`` quoted as one URL path segment, so an id cannot change the path."""
    return quote(value, safe="")


def json_body(response: requests.Response, destination: str) -> dict[str, Any]:
    """The JSON object in a 2xx helpdesk answer; anything else is ``bad_response``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TransientError(
            f"{destination} answered {response.status_code} without a JSON object",
            destination=destination,
            reason="bad_response",
            http_status=response.status_code,
        )
    return body


def text_or_none(value: object) -> str | None:
    """A string or integer field of an API answer as a string; blank means None."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value) or None
