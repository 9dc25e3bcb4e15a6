"""An emulator of the parts of Zendesk's REST API that relay uses.

Users, tickets with their comments and tags. ``PUT /api/v2/tickets/{id}`` adds a
comment (and may change tags), the tags endpoints add, set and remove tags, and
every path also answers with a ``.json`` suffix. Tickets and users referenced
for the first time are created on the fly unless the ``auto_create_tickets`` or
``auto_create_users`` setting is turned off. Comments are listed 100 a page
(``page``, ``per_page``, ``sort_order``) with ``next_page`` links.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from flask import Flask, Response, request

from relay.sandbox.base import (
    EmulatorState,
    JSONObject,
    answer,
    create_emulator_app,
    json_object,
    now_iso,
)
from relay.sandbox.credentials import SANDBOX_ZENDESK_EMAIL, SANDBOX_ZENDESK_TOKEN

ME_ID = 900001
JANE_ID = 8447388090111
SEED_TICKET_ID = 35436
COMMENTS_PER_PAGE = 100


@dataclass
class User:
    """A Zendesk user: the API user or an end user."""

    id: int
    email: str | None
    name: str
    external_id: str | None = None
    role: str = "end-user"
    created_at: str = field(default_factory=now_iso)

    def to_json(self) -> JSONObject:
        """The user as ``GET /api/v2/users/{id}`` shows it."""
        return {
            "id": self.id,
            "email": self.email,
            "external_id": self.external_id,
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
        }


@dataclass
class Comment:
    """One ticket comment; ``public`` False makes it an internal note."""

    id: int
    body: str
    public: bool
    author_id: int
    created_at: str = field(default_factory=now_iso)

    def to_json(self) -> JSONObject:
        """The comment as the comments endpoint lists it."""
        return {
            "id": self.id,
            "type": "Comment",
            "author_id": self.author_id,
            "body": self.body,
            "plain_body": self.body,
            "public": self.public,
            "created_at": self.created_at,
        }


@dataclass
class Ticket:
    """A ticket with its tags (in the order added) and comments."""

    id: int
    subject: str
    requester_id: int
    description: str = ""
    status: str = "open"
    tags: list[str] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)

    def to_json(self) -> JSONObject:
        """The ticket as the tickets endpoint shows it (comments apart)."""
        return {
            "id": self.id,
            "subject": self.subject,
            "description": self.description,
            "status": self.status,
            "requester_id": self.requester_id,
            "submitter_id": self.requester_id,
            "tags": list(self.tags),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def add_tags(self, tags: Iterable[str]) -> None:
        """Add tags not present yet, keeping their order."""
        for tag in tags:
            if tag not in self.tags:
                self.tags.append(tag)


class ZendeskState(EmulatorState):
    """Users and tickets of one Zendesk account."""

    name: ClassVar[str] = "zendesk"
    default_settings: ClassVar[dict[str, bool | int]] = {
        "auto_create_tickets": True,
        "auto_create_users": True,
    }

    def seed(self) -> None:
        """The API user, Jane and her ticket 35436."""
        self.users: dict[int, User] = {}
        self.tickets: dict[int, Ticket] = {}
        self.next_id = 1_000_000_001
        self.add_user(
            id=ME_ID,
            email=SANDBOX_ZENDESK_EMAIL,
            name="Relay Integration",
            role="admin",
        )
        self.add_user(
            id=JANE_ID,
            email="jane@example.com",
            name="Jane Doe",
            external_id="user-123",
        )
        self.add_ticket(
            id=SEED_TICKET_ID,
            subject="Cannot login to mobile app",
            description="The app says my password is wrong, but it is not.",
            requester_id=JANE_ID,
        )

    def snapshot(self) -> JSONObject:
        """Users and tickets, each ticket with its comments and their bodies."""
        return {
            "me": ME_ID,
            "users": {str(key): user.to_json() for key, user in self.users.items()},
            "tickets": {
                str(key): {
                    **ticket.to_json(),
                    "comments": [comment.to_json() for comment in ticket.comments],
                    "comment_bodies": [comment.body for comment in ticket.comments],
                }
                for key, ticket in self.tickets.items()
            },
        }

    def new_id(self) -> int:
        """A fresh id for a comment, audit, user or ticket."""
        with self.lock:
            self.next_id += 1
            return self.next_id

    def add_user(
        self,
        *,
        id: int | None = None,
        email: str | None = None,
        name: str | None = None,
        external_id: str | None = None,
        role: str = "end-user",
    ) -> User:
        """Create or replace a user."""
        with self.lock:
            user_id = id if id is not None else self.new_id()
            user = User(
                id=user_id,
                email=email,
                name=name or f"Sandbox user {user_id}",
                external_id=external_id,
                role=role,
            )
            self.users[user_id] = user
            return user

    def add_ticket(
        self,
        *,
        id: int | None = None,
        subject: str | None = None,
        requester_id: int = JANE_ID,
        description: str = "",
        status: str = "open",
        tags: Iterable[str] = (),
    ) -> Ticket:
        """Create or replace a ticket, creating its requester if unknown."""
        with self.lock:
            ticket_id = id if id is not None else self.new_id()
            if requester_id not in self.users:
                self.add_user(
                    id=requester_id,
                    email=f"user{requester_id}@example.com",
                    external_id=f"user-{requester_id}",
                )
            ticket = Ticket(
                id=ticket_id,
                subject=subject or f"Sandbox ticket {ticket_id}",
                requester_id=requester_id,
                description=description,
                status=status,
            )
            ticket.add_tags(part for tag in tags for part in tag.split())
            self.tickets[ticket_id] = ticket
            return ticket

    def ticket(self, ticket_id: int) -> Ticket | None:
        """The ticket, created now if unknown and auto-creation is on."""
        with self.lock:
            found = self.tickets.get(ticket_id)
            if found is None and self.options["auto_create_tickets"]:
                found = self.add_ticket(id=ticket_id)
            return found

    def user(self, user_id: int) -> User | None:
        """The user, created now if unknown and auto-creation is on."""
        with self.lock:
            found = self.users.get(user_id)
            if found is None and self.options["auto_create_users"]:
                found = self.add_user(
                    id=user_id,
                    email=f"user{user_id}@example.com",
                    external_id=f"user-{user_id}",
                )
            return found

    def fault_answer(self, kind: Literal["fail", "rate_limit"]) -> Response:
        """A 429 with Retry-After as Zendesk words it, or a JSON server error."""
        if kind == "rate_limit":
            return Response(
                "Rate limit for ticket updates exceeded, "
                "please wait before updating this ticket again",
                429,
                {"Retry-After": str(self.faults.retry_after)},
                mimetype="text/plain",
            )
        return answer(
            {"error": "InternalError", "description": "Internal server error"},
            self.faults.fail_status,
        )


def create_app(state: ZendeskState | None = None) -> Flask:
    """The Zendesk emulator app, holding its data in ``state``."""
    state = state or ZendeskState()
    app = create_emulator_app(state)

    def route(path: str, methods: list[str]) -> Callable[[Any], Any]:
        """Register a view under ``path`` and ``path.json``, as Zendesk answers."""

        def register(view: Any) -> Any:
            app.add_url_rule(path, view_func=view, methods=methods)
            app.add_url_rule(f"{path}.json", view_func=view, methods=methods)
            return view

        return register

    @app.before_request
    def authenticate() -> Response | None:
        if request.path.startswith("/_sandbox") or _authenticated():
            return None
        return answer({"error": "Couldn't authenticate you"}, 401)

    @route("/api/v2/users/me", ["GET"])
    def show_me() -> Response:
        with state.lock:
            return answer({"user": state.users[ME_ID].to_json()})

    @route("/api/v2/users/<int:user_id>", ["GET"])
    def show_user(user_id: int) -> Response:
        user = state.user(user_id)
        if user is None:
            return _not_found()
        return answer({"user": user.to_json()})

    @route("/api/v2/tickets/<int:ticket_id>", ["GET"])
    def show_ticket(ticket_id: int) -> Response:
        ticket = state.ticket(ticket_id)
        if ticket is None:
            return _not_found()
        with state.lock:
            return answer({"ticket": ticket.to_json()})

    @route("/api/v2/tickets/<int:ticket_id>", ["PUT"])
    def update_ticket(ticket_id: int) -> Response:
        body = json_object()
        changes = body.get("ticket") if body else None
        if not isinstance(changes, dict):
            return answer(
                {"error": "ParameterMissing", "description": "ticket is required"}, 400
            )
        comment = changes.get("comment")
        if comment is not None and not _comment_text(comment):
            return _invalid("Body: cannot be blank", "BlankValue")
        tag_fields = ("tags", "additional_tags", "remove_tags")
        if any(
            name in changes and _tag_list(changes[name]) is None for name in tag_fields
        ):
            return _invalid("Tags: must be a list of strings", "InvalidValue")

        ticket = state.ticket(ticket_id)
        if ticket is None:
            return _not_found()
        with state.lock:
            events: list[JSONObject] = []
            if isinstance(comment, dict):
                public = comment.get("public", True)
                added = Comment(
                    id=state.new_id(),
                    body=_comment_text(comment),
                    public=public is not False,
                    author_id=ME_ID,
                )
                ticket.comments.append(added)
                events.append(added.to_json())
            _apply_tag_changes(ticket, changes)
            if isinstance(changes.get("status"), str):
                ticket.status = changes["status"]
            ticket.updated_at = now_iso()
            audit = {
                "id": state.new_id(),
                "ticket_id": ticket.id,
                "created_at": ticket.updated_at,
                "author_id": ME_ID,
                "events": events,
            }
            return answer({"ticket": ticket.to_json(), "audit": audit})

    @route("/api/v2/tickets/<int:ticket_id>/comments", ["GET"])
    def list_comments(ticket_id: int) -> Response:
        ticket = state.ticket(ticket_id)
        if ticket is None:
            return _not_found()
        page = request.args.get("page", "1")
        per_page = request.args.get("per_page", str(COMMENTS_PER_PAGE))
        if not (page.isdigit() and per_page.isdigit() and int(page) and int(per_page)):
            return answer(
                {"error": "InvalidPaginationParameter", "description": "Bad page"}, 400
            )
        number, size = int(page), min(int(per_page), COMMENTS_PER_PAGE)
        with state.lock:
            comments = [comment.to_json() for comment in ticket.comments]
        if request.args.get("sort_order") == "desc":
            comments.reverse()

        def link(to: int) -> str | None:
            if to < 1 or (to - 1) * size >= len(comments):
                return None
            return (
                f"{request.base_url}?page={to}&per_page={size}"
                f"&sort_order={request.args.get('sort_order', 'asc')}"
            )

        return answer(
            {
                "comments": comments[(number - 1) * size : number * size],
                "count": len(comments),
                "next_page": link(number + 1),
                "previous_page": link(number - 1),
            }
        )

    @route("/api/v2/tickets/<int:ticket_id>/tags", ["GET", "PUT", "POST", "DELETE"])
    def ticket_tags(ticket_id: int) -> Response:
        tags: list[str] = []
        if request.method != "GET":
            body = json_object()
            given = _tag_list(body.get("tags")) if body else None
            if given is None:
                return _invalid("Tags: must be a list of strings", "InvalidValue")
            tags = given

        ticket = state.ticket(ticket_id)
        if ticket is None:
            return _not_found()
        with state.lock:
            if request.method == "PUT":
                ticket.add_tags(tags)
            elif request.method == "POST":
                ticket.tags = []
                ticket.add_tags(tags)
            elif request.method == "DELETE":
                ticket.tags = [tag for tag in ticket.tags if tag not in tags]
            if request.method != "GET":
                ticket.updated_at = now_iso()
            return answer({"tags": list(ticket.tags)})

    @app.post("/_sandbox/users")
    def control_add_user() -> Response:
        body = json_object()
        problem = _user_problem(body)
        if body is None or problem is not None:
            return answer({"error": problem or "send a JSON object"}, 400)
        user = state.add_user(**_only(body, _USER_FIELDS))
        return answer({"user": user.to_json()}, 201)

    @app.post("/_sandbox/tickets")
    def control_add_ticket() -> Response:
        body = json_object()
        problem = _ticket_problem(body)
        if body is None or problem is not None:
            return answer({"error": problem or "send a JSON object"}, 400)
        with state.lock:
            requester = body.get("requester")
            if isinstance(requester, dict):
                body["requester_id"] = state.add_user(
                    **_only(requester, _USER_FIELDS)
                ).id
            ticket = state.add_ticket(**_only(body, _TICKET_FIELDS))
            return answer({"ticket": ticket.to_json()}, 201)

    @app.errorhandler(404)
    def unknown_path(_: Exception) -> Response:
        return answer({"error": "InvalidEndpoint", "description": "Not found"}, 404)

    @app.errorhandler(405)
    def wrong_method(_: Exception) -> Response:
        return answer({"error": "InvalidEndpoint", "description": "Not allowed"}, 405)

    return app


def _authenticated() -> bool:
    """Whether the request carries the sandbox token, as Basic or Bearer auth."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip() == SANDBOX_ZENDESK_TOKEN
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return decoded == f"{SANDBOX_ZENDESK_EMAIL}/token:{SANDBOX_ZENDESK_TOKEN}"


def _comment_text(comment: Any) -> str:
    """The comment's text (``body`` or ``html_body``), or "" when blank."""
    if not isinstance(comment, dict):
        return ""
    for name in ("body", "html_body"):
        value = comment.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _tag_list(value: Any) -> list[str] | None:
    """Tags as Zendesk stores them (a space splits a tag), or None if malformed."""
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        return None
    return [part for tag in value for part in tag.split()]


def _apply_tag_changes(ticket: Ticket, changes: JSONObject) -> None:
    if "tags" in changes:
        ticket.tags = []
        ticket.add_tags(_tag_list(changes["tags"]) or [])
    ticket.add_tags(_tag_list(changes.get("additional_tags", [])) or [])
    removed = set(_tag_list(changes.get("remove_tags", [])) or [])
    ticket.tags = [tag for tag in ticket.tags if tag not in removed]


_USER_FIELDS = ("id", "email", "name", "external_id", "role")
_TICKET_FIELDS = ("id", "subject", "requester_id", "description", "status", "tags")


def _user_problem(body: JSONObject | None) -> str | None:
    """Why ``body`` cannot describe a user, or None when it can."""
    if body is None:
        return "send a JSON object"
    unknown = sorted(set(body) - set(_USER_FIELDS))
    if unknown:
        return f"unknown user fields: {', '.join(unknown)}"
    if not _whole_or_absent(body.get("id")):
        return "id must be a whole number"
    for name in ("email", "name", "external_id", "role"):
        if body.get(name) is not None and not isinstance(body[name], str):
            return f"{name} must be a string"
    return None


def _ticket_problem(body: JSONObject | None) -> str | None:
    """Why ``body`` cannot describe a ticket, or None when it can."""
    if body is None:
        return "send a JSON object"
    unknown = sorted(set(body) - {*_TICKET_FIELDS, "requester"})
    if unknown:
        return f"unknown ticket fields: {', '.join(unknown)}"
    for name in ("id", "requester_id"):
        if not _whole_or_absent(body.get(name)):
            return f"{name} must be a whole number"
    for name in ("subject", "description", "status"):
        if body.get(name) is not None and not isinstance(body[name], str):
            return f"{name} must be a string"
    if "tags" in body and _tag_list(body["tags"]) is None:
        return "tags must be a list of strings"
    requester = body.get("requester")
    if requester is not None:
        if not isinstance(requester, dict):
            return "requester must be an object"
        return _user_problem(requester)
    return None


def _whole_or_absent(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _only(body: JSONObject, names: Iterable[str]) -> JSONObject:
    return {name: body[name] for name in names if name in body}


def _not_found() -> Response:
    return answer({"error": "RecordNotFound", "description": "Not found"}, 404)


def _invalid(description: str, error: str) -> Response:
    return answer(
        {
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {"base": [{"description": description, "error": error}]},
        },
        422,
    )
