"""``relay demo``: one full loop through a running relay in sandbox mode.

It signs a Zendesk ``ticket.tags_changed`` event and an Intercom
``conversation_part.tag.created`` notification with the sandbox secrets, sends
them to relay, and follows each through the emulators until the note appears,
printing every step.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import requests

from relay.providers import intercom, zendesk
from relay.sandbox import SandboxControl

TIMEOUT = 30.0


def run_demo(relay_url: str, env: Mapping[str, str], *, out: Any = None) -> int:
    """Send one event per helpdesk through relay and print what happens."""
    say = _printer(out)
    relay_url = relay_url.rstrip("/")
    try:
        ready = requests.get(f"{relay_url}/readyz", timeout=5)
    except requests.RequestException:
        say(f"relay is not answering at {relay_url}: start it with `make run`")
        return 1
    if ready.status_code != 200:
        say(f"relay at {relay_url} is not ready: {ready.text.strip()}")
        return 1

    bugpilot = SandboxControl(env["BUGPILOT_API_URL"])
    helpdesks = {
        "zendesk": SandboxControl(env["ZENDESK_URL"]),
        "intercom": SandboxControl(env["INTERCOM_API_URL"]),
    }
    ticket = str(int(time.time()) % 1_000_000 + 100_000)
    conversation = f"demo-{uuid.uuid4().hex[:6]}"
    ok = _zendesk_loop(relay_url, env, bugpilot, helpdesks["zendesk"], ticket, say)
    ok = (
        _intercom_loop(
            relay_url, env, bugpilot, helpdesks["intercom"], conversation, say
        )
        and ok
    )
    say("")
    say("demo complete" if ok else "demo failed: see the steps above")
    return 0 if ok else 1


def _zendesk_loop(
    relay_url: str,
    env: Mapping[str, str],
    bugpilot: SandboxControl,
    helpdesk: SandboxControl,
    ticket: str,
    say: Callable[[str], None],
) -> bool:
    say(f"== Zendesk: agent adds bugpilot_screenshot to ticket {ticket}")
    helpdesk.add_user(
        id=8447388090111, email="jane@example.com", external_id="user-123"
    )
    helpdesk.add_ticket(
        id=int(ticket),
        subject="Checkout button does nothing",
        requester_id=8447388090111,
    )
    payload = {
        "account_id": 22129848,
        "id": str(uuid.uuid4()),
        "type": "zen:event-type:ticket.tags_changed",
        "subject": f"zen:ticket:{ticket}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "zendesk_event_version": "2022-11-06",
        "detail": {
            "actor_id": "8447388090494",
            "id": ticket,
            "requester_id": "8447388090111",
            "subject": "Checkout button does nothing",
            "tags": ["bugpilot_screenshot"],
        },
        "event": {"tags_added": ["bugpilot_screenshot"], "tags_removed": []},
    }
    body = json.dumps(payload).encode()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    secret = env["ZENDESK_WEBHOOK_SECRETS"].split(",")[0].strip()
    headers = {
        "Content-Type": "application/json",
        zendesk.SIGNATURE_HEADER: zendesk.sign(body, stamp, secret),
        zendesk.TIMESTAMP_HEADER: stamp,
        zendesk.INVOCATION_HEADER: str(uuid.uuid4().int)[:10],
    }
    return _follow(
        relay_url,
        "zendesk",
        body,
        headers,
        bugpilot,
        lambda: _zendesk_notes(helpdesk, ticket),
        say,
    )


def _intercom_loop(
    relay_url: str,
    env: Mapping[str, str],
    bugpilot: SandboxControl,
    helpdesk: SandboxControl,
    conversation: str,
    say: Callable[[str], None],
) -> bool:
    say("")
    say(f"== Intercom: agent tags conversation {conversation} bugpilot_screenshot")
    contact = {"type": "contact", "id": "6762f1571bb69f9f2193bbbb", "external_id": "70"}
    helpdesk.add_conversation(id=conversation, contact_id=contact["id"])
    tag = {"type": "tag", "id": "86", "name": "bugpilot_screenshot"}
    payload = {
        "type": "notification_event",
        "app_id": "sandbox",
        "topic": "conversation_part.tag.created",
        "id": f"notif_{uuid.uuid4()}",
        "delivery_attempts": 1,
        "created_at": int(time.time()),
        "data": {
            "type": "notification_event_data",
            "item": {
                "type": "conversation",
                "id": conversation,
                "title": "Payment page is blank",
                "contacts": {"type": "contact.list", "contacts": [contact]},
                "tags": {"type": "tag.list", "tags": [tag]},
                "tags_added": {"type": "tag.list", "tags": [tag]},
            },
        },
    }
    body = json.dumps(payload).encode()
    secret = env["INTERCOM_CLIENT_SECRETS"].split(",")[0].strip()
    headers = {
        "Content-Type": "application/json",
        intercom.SIGNATURE_HEADER: intercom.sign(body, secret),
    }
    return _follow(
        relay_url,
        "intercom",
        body,
        headers,
        bugpilot,
        lambda: _intercom_notes(helpdesk, conversation),
        say,
    )


def _follow(
    relay_url: str,
    provider: str,
    body: bytes,
    headers: dict[str, str],
    bugpilot: SandboxControl,
    notes: Callable[[], list[str]],
    say: Callable[[str], None],
) -> bool:
    captures_before = len(bugpilot.state()["actions"])
    say(f"-> POST {relay_url}/webhooks/{provider} (signed, {len(body)} bytes)")
    response = requests.post(
        f"{relay_url}/webhooks/{provider}", data=body, headers=headers, timeout=10
    )
    say(f"<- {response.status_code} {response.text.strip()}")
    if response.status_code != 202:
        return False

    actions = _wait(lambda: bugpilot.state()["actions"][captures_before:])
    if not actions:
        say("   no Bugpilot call within 30 s: is `relay worker` running?")
        return False
    call = actions[0]
    say(
        f"   Bugpilot got {call['action']} for user {call['userId']}: "
        f"{call['status']} {call.get('error') or 'ok'}"
    )
    say(f"   sessionInfoUrl: {call.get('sessionInfoUrl')}")

    written = _wait(notes)
    if not written:
        say("   no note on the helpdesk within 30 s")
        return False
    say(f"   internal note on the {provider} side:")
    for note in written:
        say(f"     {note}")
    return True


def _zendesk_notes(helpdesk: SandboxControl, ticket: str) -> list[str]:
    found = helpdesk.state()["tickets"].get(ticket) or {}
    return [
        f"[{'public' if comment.get('public') else 'private'}] {comment['body']}"
        for comment in found.get("comments", [])
    ]


def _intercom_notes(helpdesk: SandboxControl, conversation: str) -> list[str]:
    found = helpdesk.state()["conversations"].get(conversation) or {}
    parts = found.get("conversation_parts", {}).get("conversation_parts", [])
    return [f"[{part['part_type']}] {part['body']}" for part in parts]


def _wait(check: Callable[[], list[Any]]) -> list[Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    return []


def _printer(out: Any) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    return say
