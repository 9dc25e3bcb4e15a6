"""Intercom: webhook signature, notification payloads, and the REST client.

Intercom signs each notification with HMAC-SHA1 of the raw body under the app's
client secret and sends ``X-Hub-Signature: sha1=<hex>``. There is no timestamp
to check; the notification ``id`` is the delivery id, stable across retries.

Relay acts on three topics: a tag added to a conversation
(``conversation_part.tag.created``) and a tag added to a user or lead contact
(``contact.user.tag.created``, ``contact.lead.tag.created``). ``ping`` arrives
when the webhook is saved and only needs a 2xx.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests
from marshmallow import Schema, fields, validate

from relay import metrics
from relay.config import IntercomSettings
from relay.errors import InvalidSignature, MissingSignature, TransientError
from relay.model import Ignored, Requester, TagEvent, Target
from relay.outbound import Outbound
from relay.providers import (
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

SIGNATURE_HEADER = "X-Hub-Signature"
API_VERSION = "2.14"

CONVERSATION_TAGGED = "conversation_part.tag.created"
CONTACT_TAGGED = frozenset({"contact.user.tag.created", "contact.lead.tag.created"})

_SIGNATURE = re.compile(r"sha1=([0-9a-f]{40})", re.IGNORECASE)
_URL = re.compile(r"https?://[^\s<>\"']+")
_HTML_TAG = re.compile(r"<[^>]*>")


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature`` value for ``body``: ``sha1=`` and the hex HMAC."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()
    return f"sha1={digest}"


def verify_signature(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str]
) -> None:
    """Raise unless one of ``secrets`` signed ``body``."""
    received = header(headers, SIGNATURE_HEADER)
    if not received:
        raise MissingSignature(f"{SIGNATURE_HEADER} required")
    match = _SIGNATURE.fullmatch(received)
    if match is None:
        raise InvalidSignature(f"{SIGNATURE_HEADER} is not sha1=<hex>")
    if not matches_any(f"sha1={match[1].lower()}", [sign(body, s) for s in secrets]):
        raise InvalidSignature("no client secret matches the signature")


class _Envelope(PayloadSchema):
    topic = fields.String(required=True)
    id = Id(required=True, validate=validate.Length(min=1))


class _Admin(PayloadSchema):
    type = fields.String(load_default=None)
    id = Id(load_default=None)


class _Tag(PayloadSchema):
    id = Id(load_default=None)
    name = fields.String(required=True)
    applied_by = fields.Nested(_Admin, load_default=None)


class _TagList(PayloadSchema):
    tags = fields.List(fields.Nested(_Tag), load_default=list)


class _Contact(PayloadSchema):
    id = Id(load_default=None)
    external_id = Id(load_default=None, max_length=MAX_USER_KEY_LENGTH)
    email = fields.String(
        load_default=None, validate=validate.Length(max=MAX_USER_KEY_LENGTH)
    )


class _Author(_Contact):
    type = fields.String(load_default=None)


class _ContactList(PayloadSchema):
    contacts = fields.List(fields.Nested(_Contact), load_default=list)


class _Source(PayloadSchema):
    author = fields.Nested(_Author, load_default=None)
    subject = fields.String(load_default=None)


class _Conversation(PayloadSchema):
    id = Id(required=True, validate=validate.Length(min=1))
    title = fields.String(load_default=None)
    source = fields.Nested(_Source, load_default=None)
    contacts = fields.Nested(_ContactList, load_default=None)
    tags_added = fields.Nested(_TagList, load_default=None)


class _TaggedContact(_Contact):
    id = Id(required=True, validate=validate.Length(min=1))


class _ContactTag(PayloadSchema):
    tag = fields.Nested(_Tag, required=True)
    contact = fields.Nested(_TaggedContact, required=True)


def _notification(item: type[Schema]) -> Schema:
    """A schema for ``{"data": {"item": <item>}}``, the path of every topic's item."""
    data = PayloadSchema.from_dict({"item": fields.Nested(item, required=True)})
    return PayloadSchema.from_dict({"data": fields.Nested(data, required=True)})()


_ENVELOPE = _Envelope()
_CONVERSATION_NOTIFICATION = _notification(_Conversation)
_CONTACT_TAG_NOTIFICATION = _notification(_ContactTag)


def parse_event(payload: object, headers: Mapping[str, str]) -> TagEvent | Ignored:
    """Turn a decoded Intercom notification into a ``TagEvent``, or say why not.

    Raises ``InvalidPayload`` (and nothing else) when the JSON has the wrong shape.
    """
    envelope = load(_ENVELOPE, payload)
    topic, delivery_id = envelope["topic"], envelope["id"]
    if topic == "ping":
        return Ignored("ping", delivery_id)
    if topic == CONVERSATION_TAGGED:
        item = load(_CONVERSATION_NOTIFICATION, payload)["data"]["item"]
        return _conversation_event(delivery_id, item)
    if topic in CONTACT_TAGGED:
        item = load(_CONTACT_TAG_NOTIFICATION, payload)["data"]["item"]
        return _contact_event(delivery_id, item)
    return Ignored("unsupported_topic", delivery_id)


def _conversation_event(delivery_id: str, item: dict[str, Any]) -> TagEvent | Ignored:
    tags = [t for t in (item["tags_added"] or {}).get("tags", []) if t["name"].strip()]
    if not tags:
        return Ignored("no_tags_added", delivery_id)

    # The customer is the conversation's first contact; the source author is
    # the customer only when it is a user or lead (an admin may start one).
    contacts = (item["contacts"] or {}).get("contacts", [])
    contact = contacts[0] if contacts else {}
    source = item["source"] or {}
    author = source.get("author") or {}
    if author.get("type") not in ("user", "lead"):
        author = {}
    requester = Requester(
        email=blank_to_none(contact.get("email")) or blank_to_none(author.get("email")),
        external_id=blank_to_none(contact.get("external_id")),
        remote_id=blank_to_none(contact.get("id")) or blank_to_none(author.get("id")),
    )
    return TagEvent(
        provider="intercom",
        delivery_id=delivery_id,
        target_kind="conversation",
        target_id=item["id"],
        tags_added=tuple(dict.fromkeys(tag["name"].strip() for tag in tags)),
        requester=requester,
        subject=item["title"] or source.get("subject") or "",
        actor_id=_admin_id(tags),
        tag_ids=_tag_ids(tags),
    )


def _contact_event(delivery_id: str, item: dict[str, Any]) -> TagEvent | Ignored:
    tag, contact = item["tag"], item["contact"]
    name = tag["name"].strip()
    if not name:
        return Ignored("no_tags_added", delivery_id)
    return TagEvent(
        provider="intercom",
        delivery_id=delivery_id,
        target_kind="contact",
        target_id=contact["id"],
        tags_added=(name,),
        requester=Requester(
            email=blank_to_none(contact["email"]),
            external_id=blank_to_none(contact["external_id"]),
            remote_id=contact["id"],
        ),
        actor_id=_admin_id([tag]),
        tag_ids=_tag_ids([tag]),
    )


def _admin_id(tags: list[dict[str, Any]]) -> str | None:
    """The admin who applied the tags, where Intercom says."""
    for tag in tags:
        applied_by = tag["applied_by"] or {}
        if applied_by.get("type") == "admin" and applied_by.get("id"):
            return str(applied_by["id"])
    return None


def _tag_ids(tags: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((tag["name"].strip(), tag["id"]) for tag in tags if tag["id"])


class IntercomClient:
    """Reads contacts and writes internal notes through the Intercom REST API."""

    provider = "intercom"

    def __init__(
        self,
        settings: IntercomSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.outbound = Outbound(
            "intercom",
            settings.api_url,
            headers={
                "Authorization": f"Bearer {settings.access_token}",
                "Intercom-Version": API_VERSION,
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            session=session,
            rate_per_minute=settings.rate_limit,
            observe=metrics.HELPDESK_DURATION.labels("intercom").observe,
            sleep=sleep,
        )
        self._admin_id = settings.admin_id

    def own_actor_id(self) -> str:
        """The admin relay writes as: configured, or fetched once from ``/me``."""
        if self._admin_id is None:
            response = self.outbound.request("GET", "/me")
            admin_id = text_or_none(json_body(response, "intercom").get("id"))
            if admin_id is None:
                raise TransientError(
                    "intercom answered /me without an id",
                    destination="intercom",
                    reason="bad_response",
                    http_status=response.status_code,
                )
            self._admin_id = admin_id
        return self._admin_id

    def lookup_requester(self, requester: Requester) -> Requester:
        """Fill in email and external id from the Intercom contact, if needed."""
        if requester.complete or not requester.remote_id:
            return requester
        response = self.outbound.request(
            "GET", f"/contacts/{segment(requester.remote_id)}"
        )
        contact = json_body(response, "intercom")
        return Requester(
            email=requester.email or text_or_none(contact.get("email")),
            external_id=requester.external_id
            or text_or_none(contact.get("external_id")),
            remote_id=requester.remote_id,
        )

    def write_note(self, target: Target, body: str) -> None:
        """Add ``body`` as an internal note on the conversation or contact."""
        if target.kind == "contact":
            self.outbound.request(
                "POST",
                f"/contacts/{segment(target.id)}/notes",
                json={"body": body, "admin_id": self.own_actor_id()},
            )
            return
        self.outbound.request(
            "POST",
            f"/conversations/{segment(target.id)}/reply",
            json={
                "message_type": "note",
                "type": "admin",
                "admin_id": self.own_actor_id(),
                "body": note_html(body),
            },
        )

    def note_exists(self, target: Target, text: str) -> bool:
        """True when a note on the conversation or contact contains ``text``."""
        if target.kind == "contact":
            path = f"/contacts/{segment(target.id)}/notes"
            listing = json_body(self.outbound.request("GET", path), "intercom")
            bodies = [note.get("body") for note in _objects(listing, "data")]
        else:
            path = f"/conversations/{segment(target.id)}"
            conversation = json_body(self.outbound.request("GET", path), "intercom")
            parts = _objects(
                conversation.get("conversation_parts"), "conversation_parts"
            )
            bodies = [
                part.get("body")
                for part in parts
                if part.get("part_type", "note") == "note"
            ]
        return any(
            isinstance(body, str) and _html_contains(body, text) for body in bodies
        )

    def remove_tag(self, target: Target) -> None:
        """Take the trigger tag off; without a tag id there is nothing to name."""
        if target.tag_id is None:
            return
        tag_id = segment(target.tag_id)
        if target.kind == "contact":
            self.outbound.request(
                "DELETE", f"/contacts/{segment(target.id)}/tags/{tag_id}"
            )
            return
        self.outbound.request(
            "DELETE",
            f"/conversations/{segment(target.id)}/tags/{tag_id}",
            json={"admin_id": self.own_actor_id()},
        )


def note_html(text: str) -> str:
    """``text`` as the simple HTML Intercom notes show: paragraphs and links."""
    lines = [line for line in text.splitlines() if line.strip()]
    return "".join(f"<p>{_linked(line)}</p>" for line in lines) or "<p></p>"


def _linked(line: str) -> str:
    pieces: list[str] = []
    done = 0
    for match in _URL.finditer(line):
        # Punctuation right after a URL ends the sentence, not the URL.
        url = match[0].rstrip(".,;:!?)")
        pieces.append(html.escape(line[done : match.start()]))
        pieces.append(f'<a href="{html.escape(url)}">{html.escape(url)}</a>')
        done = match.start() + len(url)
    pieces.append(html.escape(line[done:]))
    return "".join(pieces)


def _objects(listing: object, key: str) -> list[dict[str, Any]]:
    """The objects under ``key`` in an Intercom list, skipping anything else."""
    items = listing.get(key) if isinstance(listing, dict) else None
    if not isinstance(items, list):
        return []
    return [item for item in items if isinstance(item, dict)]


def _html_contains(stored: str, text: str) -> bool:
    """True when an HTML note body holds ``text``, as words or in a link."""
    if text in html.unescape(stored):
        return True
    words = html.unescape(_HTML_TAG.sub(" ", stored)).split()
    return " ".join(text.split()) in " ".join(words)
