"""Signed deliveries and sample payloads, shaped as the providers send them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from relay.providers import intercom, zendesk

ZENDESK_SECRET = "zendesk-test-secret"
INTERCOM_SECRET = "intercom-test-secret"

RULES = """
version: 1
rules:
  - name: screenshot
    when: {tag: bugpilot_screenshot}
    action: upload-screenshot
    user: email
    description: "Ticket {ticket_id}: {subject}"
    note: "Bugpilot screenshot: {session_info_url}"
    remove_tag: true
  - name: session-by-id
    when: {tag: bugpilot_session, provider: zendesk}
    action: upload-session
    user: external_id
    note: "Bugpilot session: {session_info_url}"
"""


def zendesk_tags_changed(
    *,
    ticket: str = "35436",
    added: tuple[str, ...] = ("bugpilot_screenshot",),
    requester: str = "8447388090111",
    actor: str = "8447388090494",
    event_id: str | None = None,
) -> dict[str, Any]:
    """A ``zen:event-type:ticket.tags_changed`` event subscription payload."""
    return {
        "account_id": 22129848,
        "id": event_id or str(uuid.uuid4()),
        "type": "zen:event-type:ticket.tags_changed",
        "subject": f"zen:ticket:{ticket}",
        "time": "2025-01-08T16:45:20.987Z",
        "zendesk_event_version": "2022-11-06",
        "detail": {
            "actor_id": actor,
            "id": ticket,
            "requester_id": requester,
            "status": "OPEN",
            "subject": "Cannot login to mobile app",
            "tags": list(added),
        },
        "event": {"tags_added": list(added), "tags_removed": []},
    }


def zendesk_trigger(
    *, ticket: str = "35436", tags: str = "bugpilot_screenshot vip"
) -> dict[str, Any]:
    """The trigger body README documents."""
    return {
        "source": "zendesk-trigger",
        "ticket_id": ticket,
        "subject": "Checkout is broken",
        "tags": tags,
        "requester_email": "jane@example.com",
        "requester_external_id": "user-123",
        "current_user_id": "384957",
        "updated_at": "2024-05-01T10:20Z",
    }


def zendesk_headers(
    body: bytes,
    *,
    secret: str = ZENDESK_SECRET,
    timestamp: str | None = None,
    invocation: str | None = None,
) -> dict[str, str]:
    """Headers Zendesk sends, signed with ``secret``."""
    stamp = timestamp or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "Content-Type": "application/json",
        zendesk.SIGNATURE_HEADER: zendesk.sign(body, stamp, secret),
        zendesk.TIMESTAMP_HEADER: stamp,
        zendesk.INVOCATION_HEADER: invocation or str(uuid.uuid4().int)[:10],
        "X-Zendesk-Webhook-Id": "01F1KRFQ6BG29CNWFR60NK5FNY",
    }


def intercom_conversation_tagged(
    *,
    conversation: str = "524",
    tag: str = "bugpilot_screenshot",
    notification_id: str | None = None,
    applied_by: str | None = None,
) -> dict[str, Any]:
    """A ``conversation_part.tag.created`` notification (API 2.x shape)."""
    tag_object: dict[str, Any] = {"type": "tag", "id": "86", "name": tag}
    if applied_by:
        tag_object["applied_by"] = {"type": "admin", "id": applied_by}
    return {
        "type": "notification_event",
        "app_id": "i6wc9ipe",
        "topic": "conversation_part.tag.created",
        "id": notification_id or f"notif_{uuid.uuid4()}",
        "delivery_attempts": 1,
        "created_at": int(time.time()),
        "first_sent_at": int(time.time()),
        "data": {
            "type": "notification_event_data",
            "item": {
                "type": "conversation",
                "id": conversation,
                "source": {
                    "type": "conversation",
                    "author": {
                        "type": "user",
                        "id": "6762f1571bb69f9f2193bbbb",
                        "email": "joe@example.com",
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
                "tags": {"type": "tag.list", "tags": [tag_object]},
                "tags_added": {"type": "tag.list", "tags": [tag_object]},
            },
        },
    }


def intercom_ping() -> dict[str, Any]:
    return {
        "type": "notification_event",
        "topic": "ping",
        "id": f"notif_{uuid.uuid4()}",
        "app_id": "i6wc9ipe",
        "data": {"type": "notification_event_data", "item": {"type": "ping"}},
        "created_at": int(time.time()),
    }


def intercom_headers(body: bytes, *, secret: str = INTERCOM_SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        intercom.SIGNATURE_HEADER: intercom.sign(body, secret),
        "User-Agent": "intercom-parrot-service-client/1.0",
    }


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()
