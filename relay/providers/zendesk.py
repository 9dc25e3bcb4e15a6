"""Zendesk: webhook signature, the two payload shapes, and the REST client.

A Zendesk webhook reaches relay in one of two shapes. An event subscription to
``zen:event-type:ticket.tags_changed`` sends a fixed JSON envelope with its own
event id. A trigger or automation sends the body its author wrote; relay expects
the one documented in README::

    {"source": "zendesk-trigger", "ticket_id": "{{ticket.id}}",
     "tags": "{{ticket.tags}}", "requester_email": "{{ticket.requester.email}}",
     "requester_external_id": "{{ticket.requester.external_id}}",
     "current_user_id": "{{current_user.id}}",
     "updated_at": "{{ticket.updated_at_with_timestamp}}"}

A trigger body has no id of its own, so the invocation id header names the
delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import requests
from marshmallow import fields, validate

from relay import metrics
from relay.config import ZendeskSettings
from relay.errors import (
    ConfigError,
    InvalidPayload,
    InvalidSignature,
    MissingSignature,
    StaleTimestamp,
    TransientError,
)
from relay.model import Ignored, Requester, TagEvent, Target
from relay.outbound import Outbound
from relay.providers import (
    MAX_ID_LENGTH,
    MAX_USER_KEY_LENGTH,
    Id,
    PayloadSchema,
    blank_to_none,
    header,
    json_body,
    load,
    matches_any,
    segment,
    text_or_none,
)

SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
INVOCATION_HEADER = "X-Zendesk-Webhook-Invocation-Id"

EVENT_PREFIX = "zen:event-type:"
TAGS_CHANGED = "zen:event-type:ticket.tags_changed"
TRIGGER_SOURCE = "zendesk-trigger"
TICKET_SUBJECT_PREFIX = "zen:ticket:"

NOTE_SCAN_PAGES = 5
"""How many pages of comments ``note_exists`` reads, newest first."""
USER_CACHE_SIZE = 1024


def sign(body: bytes, timestamp: str, secret: str) -> str:
    """The Zendesk signature of ``body``: base64 HMAC-SHA256 of timestamp + body."""
    # A header holding text that is not UTF-8 can only fail the comparison.
    message = timestamp.encode("utf-8", "replace") + body
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    tolerance: float,
    now: float | None = None,
) -> None:
    """Raise unless one of ``secrets`` signed ``body`` within ``tolerance`` seconds."""
    signature = header(headers, SIGNATURE_HEADER)
    timestamp = header(headers, TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise MissingSignature(f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} required")

    # The signature is checked first, so stale_timestamp always means an
    # authentic delivery from too long ago (or a skewed clock), never a forgery.
    if not matches_any(signature, [sign(body, timestamp, s) for s in secrets]):
        raise InvalidSignature("no webhook secret matches the signature")

    signed_at = _epoch_seconds(timestamp)
    current = time.time() if now is None else now
    if signed_at is None or abs(current - signed_at) > tolerance:
        raise StaleTimestamp(f"signature timestamp {timestamp[:40]!r} is too far off")


def _epoch_seconds(timestamp: str) -> float | None:
    """Seconds since the epoch of an ISO-8601 timestamp; UTC when no zone is given."""
    try:
        when = datetime.fromisoformat(timestamp)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (ValueError, OverflowError):
        return None


class _Envelope(PayloadSchema):
    type = fields.String(required=True)
    id = Id(required=True, validate=validate.Length(min=1))


class _TicketDetail(PayloadSchema):
    id = Id(load_default=None)
    requester_id = Id(load_default=None)
    actor_id = Id(load_default=None)
    subject = fields.String(load_default=None)


class _TagChange(PayloadSchema):
    tags_added = fields.List(fields.String(), load_default=list)


class _TagsChanged(_Envelope):
    subject = fields.String(load_default=None)
    detail = fields.Nested(_TicketDetail, required=True)
    event = fields.Nested(_TagChange, required=True)


class _Trigger(PayloadSchema):
    source = fields.String(required=True, validate=validate.Equal(TRIGGER_SOURCE))
    ticket_id = Id(required=True, validate=validate.Length(min=1))
    tags = fields.String(required=True)
    requester_email = fields.String(
        load_default=None, validate=validate.Length(max=MAX_USER_KEY_LENGTH)
    )
    requester_external_id = Id(load_default=None, max_length=MAX_USER_KEY_LENGTH)
    current_user_id = Id(load_default=None)
    subject = fields.String(load_default=None)


_ENVELOPE = _Envelope()
_TAGS_CHANGED = _TagsChanged()
_TRIGGER = _Trigger()


def parse_event(payload: object, headers: Mapping[str, str]) -> TagEvent | Ignored:
    """Turn a decoded Zendesk delivery into a ``TagEvent``, or say why it is ignored.

    Raises ``InvalidPayload`` (and nothing else) when the JSON has neither shape.
    """
    kind = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind.startswith(EVENT_PREFIX):
        return _subscription_event(payload)
    return _trigger_event(payload, headers)


def _subscription_event(payload: object) -> TagEvent | Ignored:
    envelope = load(_ENVELOPE, payload)
    if envelope["type"] != TAGS_CHANGED:
        return Ignored("unsupported_event", envelope["id"])

    data = load(_TAGS_CHANGED, payload)
    detail = data["detail"]
    ticket_id = detail["id"] or _ticket_from_subject(data["subject"])
    if not ticket_id:
        raise InvalidPayload({"detail": {"id": ["Missing data for required field."]}})

    tags = _unique(data["event"]["tags_added"])
    if not tags:
        return Ignored("no_tags_added", data["id"])
    return TagEvent(
        provider="zendesk",
        delivery_id=data["id"],
        target_kind="ticket",
        target_id=ticket_id,
        tags_added=tags,
        requester=Requester(remote_id=blank_to_none(detail["requester_id"])),
        subject=detail["subject"] or "",
        actor_id=blank_to_none(detail["actor_id"]),
    )


def _ticket_from_subject(subject: str | None) -> str | None:
    """The ticket id in an event ``subject`` such as ``zen:ticket:5158``."""
    if not subject or not subject.startswith(TICKET_SUBJECT_PREFIX):
        return None
    ticket_id = subject.removeprefix(TICKET_SUBJECT_PREFIX).strip()
    return ticket_id if 0 < len(ticket_id) <= MAX_ID_LENGTH else None


def _trigger_event(payload: object, headers: Mapping[str, str]) -> TagEvent | Ignored:
    invocation_id = header(headers, INVOCATION_HEADER)
    problems = {}
    if not invocation_id:
        problems[INVOCATION_HEADER] = ["Missing header."]
    elif len(invocation_id) > MAX_ID_LENGTH:
        problems[INVOCATION_HEADER] = ["Not a valid id."]
    try:
        data = load(_TRIGGER, payload)
    except InvalidPayload as exc:
        exc.details.update(problems)
        raise
    if problems:
        raise InvalidPayload(problems)

    # {{ticket.tags}} renders the tag names with single spaces between them.
    tags = _unique(data["tags"].split())
    if not tags:
        return Ignored("no_tags_added", invocation_id)
    return TagEvent(
        provider="zendesk",
        delivery_id=invocation_id,
        target_kind="ticket",
        target_id=data["ticket_id"],
        tags_added=tags,
        requester=Requester(
            email=blank_to_none(data["requester_email"]),
            external_id=blank_to_none(data["requester_external_id"]),
        ),
        subject=data["subject"] or "",
        actor_id=blank_to_none(data["current_user_id"]),
    )


def _unique(tags: list[str]) -> tuple[str, ...]:
    """The non-blank tags, stripped, each once, in the order given."""
    return tuple(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))


class ZendeskClient:
    """Reads users and writes internal notes through the Zendesk REST API."""

    provider = "zendesk"

    def __init__(
        self,
        settings: ZendeskSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        user_cache_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbound = Outbound(
            "zendesk",
            settings.url,
            headers={
                "Authorization": _authorization(settings),
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            session=session,
            rate_per_minute=settings.rate_limit,
            observe=metrics.HELPDESK_DURATION.labels("zendesk").observe,
            sleep=sleep,
        )
        self.user_cache_ttl = user_cache_ttl
        self.clock = clock
        self._own_id: str | None = None
        self._users: dict[str, tuple[float, Requester]] = {}
        self._users_lock = threading.Lock()

    def own_actor_id(self) -> str | None:
        """The id of the API user, fetched once from ``/api/v2/users/me``."""
        if self._own_id is None:
            self._own_id = self._user("me").remote_id
        return self._own_id

    def lookup_requester(self, requester: Requester) -> Requester:
        """Fill in email and external id from the Zendesk user record, if needed."""
        if requester.complete or not requester.remote_id:
            return requester
        user = self._cached_user(requester.remote_id)
        return Requester(
            email=requester.email or user.email,
            external_id=requester.external_id or user.external_id,
            remote_id=requester.remote_id,
        )

    def write_note(self, target: Target, body: str) -> None:
        """Add ``body`` to the ticket as a private comment."""
        # Zendesk keeps the ticket's first `public` value for later comments
        # unless told otherwise, so it is always sent.
        comment = {"body": body, "public": False}
        self.outbound.request(
            "PUT", _ticket_path(target), json={"ticket": {"comment": comment}}
        )

    def note_exists(self, target: Target, text: str) -> bool:
        """True when a private comment on the ticket contains ``text``."""
        path = _ticket_path(target) + "/comments?sort_order=desc"
        for _ in range(NOTE_SCAN_PAGES):
            page = json_body(self.outbound.request("GET", path), "zendesk")
            comments = page.get("comments")
            if isinstance(comments, list) and any(
                _private_comment_contains(comment, text) for comment in comments
            ):
                return True
            next_page = page.get("next_page")
            # The session carries the API credentials: follow links on this
            # Zendesk host only.
            if not isinstance(next_page, str) or not next_page.startswith(
                self.outbound.base_url + "/"
            ):
                return False
            path = next_page
        return False

    def remove_tag(self, target: Target) -> None:
        """Take the trigger tag off the ticket, leaving its other tags alone."""
        self.outbound.request(
            "DELETE", _ticket_path(target) + "/tags", json={"tags": [target.tag]}
        )

    def _cached_user(self, user_id: str) -> Requester:
        now = self.clock()
        with self._users_lock:
            cached = self._users.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]

        user = self._user(user_id)
        with self._users_lock:
            # A crude bound: the cache only saves lookups, so dropping it is safe.
            if len(self._users) >= USER_CACHE_SIZE:
                self._users.clear()
            self._users[user_id] = (now + self.user_cache_ttl, user)
        return user

    def _user(self, user_id: str) -> Requester:
        response = self.outbound.request("GET", f"/api/v2/users/{segment(user_id)}")
        user: Any = json_body(response, "zendesk").get("user")
        remote_id = text_or_none(user.get("id")) if isinstance(user, dict) else None
        if remote_id is None:
            raise TransientError(
                "zendesk answered without a user id",
                destination="zendesk",
                reason="bad_response",
                http_status=response.status_code,
            )
        return Requester(
            email=text_or_none(user.get("email")),
            external_id=text_or_none(user.get("external_id")),
            remote_id=remote_id,
        )


def _authorization(settings: ZendeskSettings) -> str:
    if settings.oauth_token:
        return f"Bearer {settings.oauth_token}"
    if settings.email and settings.api_token:
        pair = f"{settings.email}/token:{settings.api_token}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")
    raise ConfigError(
        "ZENDESK_API_TOKEN", "required for Zendesk (or set ZENDESK_OAUTH_TOKEN)"
    )


def _ticket_path(target: Target) -> str:
    return f"/api/v2/tickets/{segment(target.id)}"


def _private_comment_contains(comment: object, text: str) -> bool:
    if not isinstance(comment, dict) or comment.get("public") is not False:
        return False
    body = comment.get("body")
    return isinstance(body, str) and text in body
