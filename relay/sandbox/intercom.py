"""An emulator of the parts of Intercom's REST API that relay uses.

Admins, contacts with their notes and tags, conversations with their parts and
tags. Conversations, contacts and tags referenced for the first time are created
on the fly unless the ``auto_create_conversations``, ``auto_create_contacts`` or
``auto_create_tags`` setting is turned off. Errors use Intercom's ``error.list``
shape.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from flask import Flask, Response, request

from relay.sandbox.base import (
    EmulatorState,
    JSONObject,
    answer,
    create_emulator_app,
    json_object,
)
from relay.sandbox.credentials import SANDBOX_INTERCOM_ADMIN_ID, SANDBOX_INTERCOM_TOKEN

SEED_CONTACT_ID = "6762f1571bb69f9f2193bbbb"
SEED_CONVERSATION_ID = "524"
SEED_TAG_ID = "86"
MESSAGE_TYPES = ("comment", "note", "quick_reply")


def _now() -> int:
    return int(time.time())


@dataclass
class Tag:
    """A workspace tag."""

    id: str
    name: str

    def to_json(self) -> JSONObject:
        """The tag object the tags endpoints answer with."""
        return {"type": "tag", "id": self.id, "name": self.name}


@dataclass
class Note:
    """An internal note on a contact."""

    id: str
    body: str
    author_id: str
    contact_id: str
    created_at: int = field(default_factory=_now)


@dataclass
class Part:
    """One reply or note in a conversation, written by an admin."""

    id: str
    part_type: str
    body: str
    author_id: str
    created_at: int = field(default_factory=_now)


@dataclass
class Contact:
    """A user or lead, with tag ids and notes."""

    id: str
    email: str | None
    external_id: str | None
    name: str
    role: str = "user"
    tags: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    created_at: int = field(default_factory=_now)

    def to_json(self) -> JSONObject:
        """The contact as ``GET /contacts/{id}`` shows it."""
        return {
            "type": "contact",
            "id": self.id,
            "external_id": self.external_id,
            "email": self.email,
            "role": self.role,
            "name": self.name,
            "created_at": self.created_at,
        }


@dataclass
class Conversation:
    """A conversation started by one contact, with tag ids and parts."""

    id: str
    contact_id: str
    title: str | None = None
    tags: list[str] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    created_at: int = field(default_factory=_now)
    updated_at: int = field(default_factory=_now)


class IntercomState(EmulatorState):
    """Admins, contacts, conversations and tags of one Intercom workspace."""

    name: ClassVar[str] = "intercom"
    default_settings: ClassVar[dict[str, bool | int]] = {
        "auto_create_conversations": True,
        "auto_create_contacts": True,
        "auto_create_tags": True,
    }

    def seed(self) -> None:
        """One admin, Joe, his conversation 524 and tag 86."""
        self.next_id = 1000
        self.admins: dict[str, JSONObject] = {
            SANDBOX_INTERCOM_ADMIN_ID: {
                "type": "admin",
                "id": SANDBOX_INTERCOM_ADMIN_ID,
                "name": "Relay Bot",
                "email": "relay@example.com",
            }
        }
        self.tags: dict[str, Tag] = {
            SEED_TAG_ID: Tag(SEED_TAG_ID, "bugpilot_screenshot")
        }
        self.contacts: dict[str, Contact] = {}
        self.conversations: dict[str, Conversation] = {}
        self.add_contact(
            id=SEED_CONTACT_ID,
            email="joe@example.com",
            external_id="70",
            name="Joe Bloggs",
        )
        self.add_conversation(
            id=SEED_CONVERSATION_ID, contact_id=SEED_CONTACT_ID, tags=[SEED_TAG_ID]
        )

    def snapshot(self) -> JSONObject:
        """Everything, with note and part bodies listed for counting."""
        return {
            "admins": {key: dict(admin) for key, admin in self.admins.items()},
            "tags": {key: tag.to_json() for key, tag in self.tags.items()},
            "contacts": {
                key: {
                    **contact.to_json(),
                    "tags": [self.tags[tag].to_json() for tag in contact.tags],
                    "notes": [self.note_json(note) for note in contact.notes],
                    "note_bodies": [note.body for note in contact.notes],
                }
                for key, contact in self.contacts.items()
            },
            "conversations": {
                key: {
                    **self.conversation_json(conversation),
                    "part_bodies": [part.body for part in conversation.parts],
                    "note_bodies": [
                        part.body
                        for part in conversation.parts
                        if part.part_type == "note"
                    ],
                }
                for key, conversation in self.conversations.items()
            },
        }

    def new_id(self) -> str:
        """A fresh id for a note, part, contact, conversation or tag."""
        with self.lock:
            self.next_id += 1
            return str(self.next_id)

    def add_tag(self, *, id: str | None = None, name: str | None = None) -> Tag:
        """Create or rename a workspace tag."""
        with self.lock:
            tag_id = id or self.new_id()
            tag = Tag(tag_id, name or f"tag_{tag_id}")
            self.tags[tag_id] = tag
            return tag

    def add_contact(
        self,
        *,
        id: str | None = None,
        email: str | None = None,
        external_id: str | None = None,
        name: str | None = None,
        role: str = "user",
        tags: Iterable[str] = (),
    ) -> Contact:
        """Create or replace a contact; unknown tag ids become tags."""
        with self.lock:
            contact_id = id or self.new_id()
            contact = Contact(
                id=contact_id,
                email=email,
                external_id=external_id,
                name=name or f"Sandbox contact {contact_id}",
                role=role,
                tags=[self._known_tag(tag).id for tag in tags],
            )
            self.contacts[contact_id] = contact
            return contact

    def add_conversation(
        self,
        *,
        id: str | None = None,
        contact_id: str = SEED_CONTACT_ID,
        title: str | None = None,
        tags: Iterable[str] = (),
    ) -> Conversation:
        """Create or replace a conversation; its contact is created if unknown."""
        with self.lock:
            if contact_id not in self.contacts:
                self._auto_contact(contact_id)
            conversation = Conversation(
                id=id or self.new_id(),
                contact_id=contact_id,
                title=title,
                tags=[self._known_tag(tag).id for tag in tags],
            )
            self.conversations[conversation.id] = conversation
            return conversation

    def contact(self, contact_id: str) -> Contact | None:
        """The contact, created now if unknown and auto-creation is on."""
        with self.lock:
            found = self.contacts.get(contact_id)
            if found is None and self.options["auto_create_contacts"]:
                found = self._auto_contact(contact_id)
            return found

    def conversation(self, conversation_id: str) -> Conversation | None:
        """The conversation, created now if unknown and auto-creation is on."""
        with self.lock:
            found = self.conversations.get(conversation_id)
            if found is None and self.options["auto_create_conversations"]:
                found = self.add_conversation(id=conversation_id)
            return found

    def tag(self, tag_id: str) -> Tag | None:
        """The tag, created now if unknown and auto-creation is on."""
        with self.lock:
            found = self.tags.get(tag_id)
            if found is None and self.options["auto_create_tags"]:
                found = self.add_tag(id=tag_id)
            return found

    def admin_ref(self, admin_id: str) -> JSONObject:
        """An admin as the author of a note or part."""
        return dict(self.admins[admin_id])

    def note_json(self, note: Note) -> JSONObject:
        """The Note model the notes endpoints answer with."""
        return {
            "type": "note",
            "id": note.id,
            "created_at": note.created_at,
            "body": note.body,
            "author": self.admin_ref(note.author_id),
            "contact": {"type": "contact", "id": note.contact_id},
        }

    def conversation_json(self, conversation: Conversation) -> JSONObject:
        """The conversation object, parts included, as the API shows it."""
        contact = self.contacts[conversation.contact_id]
        parts = [
            {
                "type": "conversation_part",
                "id": part.id,
                "part_type": part.part_type,
                "body": part.body,
                "created_at": part.created_at,
                "updated_at": part.created_at,
                "author": self.admin_ref(part.author_id),
                "attachments": [],
                "redacted": False,
            }
            for part in conversation.parts
        ]
        return {
            "type": "conversation",
            "id": conversation.id,
            "title": conversation.title,
            "created_at": conversation.created_at,
            "updated_at": conversation.updated_at,
            "state": "open",
            "open": True,
            "source": {
                "type": "conversation",
                "delivered_as": "customer_initiated",
                "author": {
                    "type": "user",
                    "id": contact.id,
                    "name": contact.name,
                    "email": contact.email,
                },
            },
            "contacts": {
                "type": "contact.list",
                "contacts": [
                    {
                        "type": "contact",
                        "id": contact.id,
                        "external_id": contact.external_id,
                    }
                ],
            },
            "tags": {
                "type": "tag.list",
                "tags": [self.tags[tag].to_json() for tag in conversation.tags],
            },
            "conversation_parts": {
                "type": "conversation_part.list",
                "conversation_parts": parts,
                "total_count": len(parts),
            },
        }

    def fault_answer(self, kind: Literal["fail", "rate_limit"]) -> Response:
        """``rate_limit_exceeded`` with Retry-After, or ``server_error``."""
        if kind == "rate_limit":
            retry_after = self.faults.retry_after
            return _error(
                429,
                "rate_limit_exceeded",
                "Exceeded rate limit of 167 in 10_seconds",
                headers={
                    "Retry-After": str(retry_after),
                    "X-RateLimit-Limit": "167",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(_now() + retry_after),
                },
            )
        return _error(self.faults.fail_status, "server_error", "Server Error")

    def _auto_contact(self, contact_id: str) -> Contact:
        return self.add_contact(
            id=contact_id,
            email=f"contact-{contact_id}@example.com",
            external_id=f"ext-{contact_id}",
        )

    def _known_tag(self, tag_id: str) -> Tag:
        return self.tags.get(tag_id) or self.add_tag(id=tag_id)


def create_app(state: IntercomState | None = None) -> Flask:
    """The Intercom emulator app, holding its data in ``state``."""
    state = state or IntercomState()
    app = create_emulator_app(state)

    @app.before_request
    def authenticate() -> Response | None:
        if request.path.startswith("/_sandbox"):
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip() == SANDBOX_INTERCOM_TOKEN:
            return None
        return _error(401, "unauthorized", "Access Token Invalid")

    @app.get("/me")
    def show_me() -> Response:
        with state.lock:
            admin = state.admin_ref(SANDBOX_INTERCOM_ADMIN_ID)
        admin["email_verified"] = True
        admin["app"] = {"type": "app", "id_code": "sandbox", "name": "Relay Sandbox"}
        return answer(admin)

    @app.get("/tags")
    def list_tags() -> Response:
        with state.lock:
            return answer(
                {"type": "list", "data": [tag.to_json() for tag in state.tags.values()]}
            )

    @app.get("/contacts/<contact_id>")
    def show_contact(contact_id: str) -> Response:
        contact = state.contact(contact_id)
        if contact is None:
            return _error(404, "not_found", "User Not Found")
        with state.lock:
            return answer(contact.to_json())

    @app.get("/contacts/<contact_id>/notes")
    def list_notes(contact_id: str) -> Response:
        contact = state.contact(contact_id)
        if contact is None:
            return _error(404, "not_found", "Contact Not Found")
        with state.lock:
            notes = [state.note_json(note) for note in contact.notes]
        return answer(
            {
                "type": "list",
                "data": notes,
                "total_count": len(notes),
                "pages": {"type": "pages", "page": 1, "per_page": 50, "total_pages": 1},
            }
        )

    @app.post("/contacts/<contact_id>/notes")
    def create_note(contact_id: str) -> Response:
        body = json_object() or {}
        text = body.get("body")
        if not isinstance(text, str) or not text.strip():
            return _missing_or_invalid(body, "body")
        admin_id = str(body.get("admin_id") or SANDBOX_INTERCOM_ADMIN_ID)
        if admin_id not in state.admins:
            return _error(400, "parameter_invalid", "admin_id is invalid", "admin_id")

        contact = state.contact(contact_id)
        if contact is None:
            return _error(404, "not_found", "Contact Not Found")
        with state.lock:
            note = Note(
                id=state.new_id(), body=text, author_id=admin_id, contact_id=contact.id
            )
            contact.notes.append(note)
            return answer(state.note_json(note))

    @app.post("/contacts/<contact_id>/tags")
    def tag_contact(contact_id: str) -> Response:
        body = json_object() or {}
        tag_id = body.get("id")
        if not isinstance(tag_id, str | int) or not str(tag_id):
            return _missing_or_invalid(body, "id")
        contact = state.contact(contact_id)
        if contact is None:
            return _error(404, "not_found", "Contact Not Found")
        tag = state.tag(str(tag_id))
        if tag is None:
            return _error(404, "tag_not_found", "Tag not found")
        with state.lock:
            if tag.id not in contact.tags:
                contact.tags.append(tag.id)
        return answer(tag.to_json())

    @app.delete("/contacts/<contact_id>/tags/<tag_id>")
    def untag_contact(contact_id: str, tag_id: str) -> Response:
        contact = state.contact(contact_id)
        if contact is None:
            return _error(404, "not_found", "Contact Not Found")
        tag = state.tag(tag_id)
        if tag is None:
            return _error(404, "tag_not_found", "Tag not found")
        with state.lock:
            contact.tags = [known for known in contact.tags if known != tag.id]
        return answer(tag.to_json())

    @app.get("/conversations/<conversation_id>")
    def show_conversation(conversation_id: str) -> Response:
        conversation = state.conversation(conversation_id)
        if conversation is None:
            return _error(404, "not_found", "Conversation not found")
        with state.lock:
            return answer(state.conversation_json(conversation))

    @app.post("/conversations/<conversation_id>/reply")
    def reply(conversation_id: str) -> Response:
        body = json_object() or {}
        problem = _reply_problem(body, state)
        if problem is not None:
            return problem

        conversation = state.conversation(conversation_id)
        if conversation is None:
            return _error(404, "not_found", "Conversation not found")
        with state.lock:
            conversation.parts.append(
                Part(
                    id=state.new_id(),
                    part_type=body["message_type"],
                    body=body.get("body") or "",
                    author_id=str(body["admin_id"]),
                )
            )
            conversation.updated_at = _now()
            return answer(state.conversation_json(conversation))

    @app.post("/conversations/<conversation_id>/tags")
    def tag_conversation(conversation_id: str) -> Response:
        body = json_object() or {}
        problem = _admin_problem(body, state)
        tag_id = body.get("id")
        if problem is None and (not isinstance(tag_id, str | int) or not str(tag_id)):
            problem = _missing_or_invalid(body, "id")
        if problem is not None:
            return problem
        conversation = state.conversation(conversation_id)
        if conversation is None:
            return _error(404, "not_found", "Conversation not found")
        tag = state.tag(str(tag_id))
        if tag is None:
            return _error(404, "tag_not_found", "Tag not found")
        with state.lock:
            if tag.id not in conversation.tags:
                conversation.tags.append(tag.id)
        return answer(tag.to_json())

    @app.delete("/conversations/<conversation_id>/tags/<tag_id>")
    def untag_conversation(conversation_id: str, tag_id: str) -> Response:
        problem = _admin_problem(json_object() or {}, state)
        if problem is not None:
            return problem
        conversation = state.conversation(conversation_id)
        if conversation is None:
            return _error(404, "not_found", "Conversation not found")
        tag = state.tag(tag_id)
        if tag is None:
            return _error(404, "tag_not_found", "Tag not found")
        with state.lock:
            conversation.tags = [
                known for known in conversation.tags if known != tag.id
            ]
        return answer(tag.to_json())

    @app.post("/_sandbox/tags")
    def control_add_tag() -> Response:
        body = json_object()
        if (
            body is None
            or "tags" in body
            or not _strings_or_absent(body, ("id", "name"))
        ):
            return answer({"error": "send id and name as strings"}, 400)
        tag = state.add_tag(id=body.get("id"), name=body.get("name"))
        return answer(tag.to_json(), 201)

    @app.post("/_sandbox/contacts")
    def control_add_contact() -> Response:
        body = json_object()
        names = ("id", "email", "external_id", "name", "role")
        if body is None or not _strings_or_absent(body, names):
            return answer({"error": f"send {', '.join(names)} as strings"}, 400)
        tags = body.get("tags", [])
        if not _string_list(tags):
            return answer({"error": "tags must be a list of tag ids"}, 400)
        fields = {name: body[name] for name in names if name in body}
        contact = state.add_contact(**fields, tags=tags)
        with state.lock:
            return answer(contact.to_json(), 201)

    @app.post("/_sandbox/conversations")
    def control_add_conversation() -> Response:
        body = json_object()
        names = ("id", "contact_id", "title")
        if body is None or not _strings_or_absent(body, names):
            return answer({"error": f"send {', '.join(names)} as strings"}, 400)
        tags = body.get("tags", [])
        if not _string_list(tags):
            return answer({"error": "tags must be a list of tag ids"}, 400)
        with state.lock:
            conversation = state.add_conversation(
                id=body.get("id"),
                contact_id=body.get("contact_id") or SEED_CONTACT_ID,
                title=body.get("title"),
                tags=tags,
            )
            return answer(state.conversation_json(conversation), 201)

    @app.errorhandler(404)
    def unknown_path(_: Exception) -> Response:
        return _error(404, "not_found", "Resource Not Found")

    @app.errorhandler(405)
    def wrong_method(_: Exception) -> Response:
        return _error(405, "method_not_allowed", "Method Not Allowed")

    return app


def _reply_problem(body: JSONObject, state: IntercomState) -> Response | None:
    """The 400 answer for a malformed reply, or None when it is valid."""
    for name in ("message_type", "type", "admin_id"):
        if body.get(name) in (None, ""):
            return _error(400, "parameter_not_found", f"{name} is required", name)
    if body["message_type"] not in MESSAGE_TYPES:
        return _error(
            400, "parameter_invalid", "message_type is invalid", "message_type"
        )
    if body["type"] != "admin":
        return _error(400, "parameter_invalid", "type must be admin", "type")
    problem = _admin_problem(body, state)
    if problem is not None:
        return problem
    if body["message_type"] != "quick_reply":
        text = body.get("body")
        if text is None:
            return _error(400, "parameter_not_found", "body is required", "body")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "parameter_invalid", "body must not be blank", "body")
    return None


def _admin_problem(body: JSONObject, state: IntercomState) -> Response | None:
    """The 400 answer when ``admin_id`` is missing or unknown."""
    admin_id = body.get("admin_id")
    if admin_id in (None, ""):
        return _error(400, "parameter_not_found", "admin_id is required", "admin_id")
    with state.lock:
        known = str(admin_id) in state.admins
    if not known:
        return _error(400, "parameter_invalid", "admin_id is invalid", "admin_id")
    return None


def _missing_or_invalid(body: JSONObject, name: str) -> Response:
    if body.get(name) is None:
        return _error(400, "parameter_not_found", f"{name} is required", name)
    return _error(400, "parameter_invalid", f"{name} is invalid", name)


def _strings_or_absent(body: JSONObject, names: Iterable[str]) -> bool:
    """Whether ``body`` has only ``names`` (and tags), each a string if present."""
    names = tuple(names)
    if set(body) - {*names, "tags"}:
        return False
    return all(body.get(name) is None or isinstance(body[name], str) for name in names)


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _error(
    status: int,
    code: str,
    message: str,
    field_name: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> Response:
    error: JSONObject = {"code": code, "message": message}
    if field_name is not None:
        error["field"] = field_name
    return answer(
        {"type": "error.list", "request_id": str(uuid.uuid4()), "errors": [error]},
        status,
        headers,
    )
