"""No loops and no duplicates: own changes, old tags, cooldown, redelivery.

Real gunicorn against the emulators. Relay learns its own Zendesk user from
``/api/v2/users/me`` after start-up, so the own-change tests poll until it has,
with one gunicorn worker so that what one answer shows holds for the next.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from relay.sandbox.intercom import SEED_CONVERSATION_ID
from relay.sandbox.zendesk import ME_ID
from tests import factories as f
from tests.delivery.deploy import (
    ok_captures,
    open_store,
    send_intercom,
    send_zendesk,
    use_rules,
    wait_finished,
    wait_until,
    zendesk_notes,
)
from tests.deployment import Relay

pytestmark = pytest.mark.e2e

ONE_PROCESS = "1"
"""Each gunicorn worker learns its own actors; with one, learnt is learnt."""


def answer(response: requests.Response) -> tuple[int, dict[str, Any]]:
    return response.status_code, response.json()


def ignored(reason: str) -> tuple[int, dict[str, str]]:
    return 200, {"status": "ignored", "reason": reason}


def job_count(relay: Relay) -> int:
    store = open_store(relay)
    try:
        return len(store.list_jobs(limit=500))
    finally:
        store.close()


def test_a_tag_added_by_relays_own_zendesk_user_is_ignored(relay: Relay) -> None:
    use_rules(relay)
    relay.start_web(RELAY_WEB_WORKERS=ONE_PROCESS)
    own = str(ME_ID)

    # Until relay knows its own user, an unrelated tag matches no rule.
    def learnt() -> bool:
        event = f.zendesk_tags_changed(added=("unrelated",), actor=own)
        return answer(send_zendesk(relay, event)) == ignored("own_change")

    wait_until(learnt, timeout=30, message="own Zendesk user never learnt")

    event = f.zendesk_tags_changed(ticket="8001", actor=own)
    assert answer(send_zendesk(relay, event)) == ignored("own_change")
    someone = f.zendesk_tags_changed(ticket="8001", actor="8447388090494")
    assert send_zendesk(relay, someone).status_code == 202
    assert job_count(relay) == 1


def test_a_tag_added_by_relays_own_intercom_admin_is_ignored(relay: Relay) -> None:
    use_rules(relay)
    relay.start_web(RELAY_WEB_WORKERS=ONE_PROCESS)
    own = relay.env["INTERCOM_ADMIN_ID"]

    def learnt() -> bool:
        event = f.intercom_conversation_tagged(tag="unrelated", applied_by=own)
        return answer(send_intercom(relay, event)) == ignored("own_change")

    wait_until(learnt, timeout=30, message="own Intercom admin never learnt")
    event = f.intercom_conversation_tagged(applied_by=own)
    assert answer(send_intercom(relay, event)) == ignored("own_change")
    assert send_intercom(relay, f.intercom_conversation_tagged()).status_code == 202
    assert job_count(relay) == 1


def test_only_tags_just_added_count(relay: Relay) -> None:
    use_rules(relay)
    relay.start_web()

    # The trigger tag is on the ticket already; another tag was added.
    old_tag = f.zendesk_tags_changed(added=("vip",))
    old_tag["detail"]["tags"] = ["bugpilot_screenshot", "vip"]
    assert answer(send_zendesk(relay, old_tag)) == ignored("no_rule")

    # Relay's own tag removal comes back as an event with nothing added.
    removal = f.zendesk_tags_changed(added=())
    removal["event"]["tags_removed"] = ["bugpilot_screenshot"]
    assert answer(send_zendesk(relay, removal)) == ignored("no_tags_added")
    assert job_count(relay) == 0


def test_the_same_ticket_and_rule_cool_down(relay: Relay) -> None:
    use_rules(relay)
    relay.start_web(RELAY_COOLDOWN="600")

    first = f.zendesk_tags_changed(ticket="8101")
    assert send_zendesk(relay, first).status_code == 202
    again = f.zendesk_tags_changed(ticket="8101")
    assert answer(send_zendesk(relay, again)) == ignored("cooldown")
    other_ticket = f.zendesk_tags_changed(ticket="8102")
    assert send_zendesk(relay, other_ticket).status_code == 202
    other_rule = f.zendesk_tags_changed(ticket="8101", added=("bugpilot_patient",))
    assert send_zendesk(relay, other_rule).status_code == 202
    assert job_count(relay) == 3


def test_a_delivery_sent_again_is_stored_once_and_delivered_once(
    relay: Relay,
) -> None:
    use_rules(relay)
    relay.start_web()
    relay.start_worker()

    event = f.zendesk_tags_changed(ticket="8201", event_id=str(uuid.uuid4()))
    accepted = send_zendesk(relay, event)
    assert accepted.status_code == 202
    assert answer(send_zendesk(relay, event)) == ignored("duplicate")

    trigger = f.encode(f.zendesk_trigger(ticket="8202"))
    headers = f.zendesk_headers(
        trigger, secret=relay.env["ZENDESK_WEBHOOK_SECRETS"], invocation="8350205582"
    )
    url = f"{relay.url}/webhooks/zendesk"
    assert requests.post(url, data=trigger, headers=headers, timeout=10).ok
    resent = requests.post(url, data=trigger, headers=headers, timeout=10)
    assert answer(resent) == ignored("duplicate")

    notification = f.intercom_conversation_tagged(notification_id="notif_same")
    assert send_intercom(relay, notification).status_code == 202
    assert answer(send_intercom(relay, notification)) == ignored("duplicate")

    store = open_store(relay)
    jobs = store.list_jobs(limit=10)
    assert len(jobs) == 3
    wait_finished(store, [job["id"] for job in jobs], relay)
    store.close()
    assert sorted(ok_captures(relay.sandbox).values()) == [1, 1, 1]
    assert len(zendesk_notes(relay.sandbox, "8201")) == 1
    conversation = relay.intercom.state()["conversations"][SEED_CONVERSATION_ID]
    assert len(conversation["note_bodies"]) == 1
