"""The provider-neutral shapes that flow from a webhook to a job.

A provider module turns a signed delivery into a ``TagEvent`` (or ``Ignored``);
the rules turn a ``TagEvent`` into jobs; the worker hands each job's target back
to the provider's ``Helpdesk`` client to look up the customer and write the note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

TargetKind = Literal["ticket", "conversation", "contact"]


@dataclass(frozen=True)
class Requester:
    """The end user behind a ticket, as far as the helpdesk knows them."""

    email: str | None = None
    external_id: str | None = None
    remote_id: str | None = None
    """The helpdesk's own id: Zendesk user id or Intercom contact id."""

    @property
    def complete(self) -> bool:
        return bool(self.email and self.external_id)


@dataclass(frozen=True)
class TagEvent:
    """Tags were just added to a ticket, conversation or contact."""

    provider: str
    delivery_id: str
    target_kind: TargetKind
    target_id: str
    tags_added: tuple[str, ...]
    requester: Requester = field(default_factory=Requester)
    subject: str = ""
    actor_id: str | None = None
    """Who added the tags, where the provider says: Zendesk ``detail.actor_id``,
    Intercom ``applied_by.id`` of an admin."""
    tag_ids: tuple[tuple[str, str], ...] = ()
    """(tag name, provider tag id) pairs; Intercom removes tags by id."""

    def tag_id(self, name: str) -> str | None:
        return dict(self.tag_ids).get(name)


@dataclass(frozen=True)
class Ignored:
    """A signed delivery that relay acknowledges but does not act on."""

    reason: str
    delivery_id: str | None = None


@dataclass(frozen=True)
class Target:
    """Where a job's note goes, and what it needs to find the customer."""

    provider: str
    kind: TargetKind
    id: str
    tag: str
    tag_id: str | None = None


class Helpdesk(Protocol):
    """What the worker needs from a helpdesk client (Zendesk or Intercom)."""

    provider: str

    def own_actor_id(self) -> str | None:
        """The id of the user or admin relay acts as, to ignore its own changes."""

    def lookup_requester(self, requester: Requester) -> Requester:
        """Fill in email and external id from the helpdesk's user or contact record."""

    def write_note(self, target: Target, body: str) -> None:
        """Write ``body`` as an internal note on the target."""

    def note_exists(self, target: Target, text: str) -> bool:
        """True when an internal note on the target already contains ``text``."""

    def remove_tag(self, target: Target) -> None:
        """Take the trigger tag off the target."""
