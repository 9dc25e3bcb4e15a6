"""The web application: every webhook answer in the contract, counted, stored or not."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from relay import migrate
from relay.app import create_app
from relay.config import IntercomSettings, Settings, ZendeskSettings
from relay.rules import parse_rules
from relay.store import Store
from tests import factories as f

ADMIN_TOKEN = "admin-token-for-tests"


def make_settings(tmp_path, **changes) -> Settings:
    settings = Settings(
        bugpilot_api_key="ws-key",
        bugpilot_workspace_id="ws_1",
        database_url=f"sqlite:///{tmp_path / 'relay.db'}",
        admin_token=ADMIN_TOKEN,
        max_body_bytes=64 * 1024,
        zendesk=ZendeskSettings(
            url="http://127.0.0.1:9",
            webhook_secrets=("old-secret", f.ZENDESK_SECRET),
            oauth_token="t",
        ),
        intercom=IntercomSettings(
            api_url="http://127.0.0.1:9",
            access_token="t",
            client_secrets=(f.INTERCOM_SECRET,),
            admin_id="991267696",
        ),
    )
    return settings.replace(**changes)


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    store = Store.from_url(f"sqlite:///{tmp_path / 'relay.db'}")
    migrate.upgrade(store.engine)
    yield store
    store.close()


@pytest.fixture
def client(tmp_path, store: Store) -> FlaskClient:
    app = create_app(make_settings(tmp_path), store=store, rules=parse_rules(f.RULES))
    return app.test_client()


def rows(store: Store) -> tuple[int, int]:
    with store.engine.connect() as conn:
        events = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
        jobs = conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one()
    return events, jobs


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def post_zendesk(client: FlaskClient, payload, **header_options):
    body = f.encode(payload)
    return client.post(
        "/webhooks/zendesk",
        data=body,
        headers=f.zendesk_headers(body, **header_options),
    )


def post_intercom(client: FlaskClient, payload):
    body = f.encode(payload)
    return client.post(
        "/webhooks/intercom", data=body, headers=f.intercom_headers(body)
    )


# -- accepted and ignored ------------------------------------------------------


def test_a_tags_changed_event_is_stored_and_accepted(client, store) -> None:
    before = counter("relay_webhooks_total", provider="zendesk", outcome="accepted")
    response = post_zendesk(client, f.zendesk_tags_changed())
    assert response.status_code == 202
    assert response.json["status"] == "accepted"
    assert len(response.json["jobs"]) == 1
    assert rows(store) == (1, 1)
    after = counter("relay_webhooks_total", provider="zendesk", outcome="accepted")
    assert after == before + 1
    assert response.headers["X-Request-Id"]


def test_the_same_event_again_is_ignored_as_a_duplicate(client, store) -> None:
    payload = f.zendesk_tags_changed()
    assert post_zendesk(client, payload).status_code == 202
    again = post_zendesk(client, payload)
    assert again.status_code == 200
    assert again.json == {"status": "ignored", "reason": "duplicate"}
    assert rows(store) == (1, 1)


def test_the_trigger_body_is_accepted_and_deduped_on_the_invocation_id(
    client, store
) -> None:
    payload = f.zendesk_trigger()
    assert post_zendesk(client, payload, invocation="8350205582").status_code == 202
    again = post_zendesk(client, payload, invocation="8350205582")
    assert again.json["reason"] == "duplicate"


def test_any_secret_in_the_rotation_list_verifies(client) -> None:
    response = post_zendesk(client, f.zendesk_tags_changed(), secret="old-secret")
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (f.zendesk_tags_changed(added=("unrelated",)), "no_rule"),
        (f.zendesk_tags_changed(added=()), "no_tags_added"),
        (
            {
                **f.zendesk_tags_changed(),
                "type": "zen:event-type:ticket.status_changed",
            },
            "unsupported_event",
        ),
    ],
)
def test_signed_events_relay_does_not_act_on_get_200(client, store, payload, reason):
    response = post_zendesk(client, payload)
    assert response.status_code == 200
    assert response.json == {"status": "ignored", "reason": reason}
    assert rows(store) == (0, 0)


def test_the_cooldown_ignores_a_second_tag_on_the_same_ticket(client, store) -> None:
    assert post_zendesk(client, f.zendesk_tags_changed()).status_code == 202
    again = post_zendesk(client, f.zendesk_tags_changed())
    assert again.json == {"status": "ignored", "reason": "cooldown"}
    assert rows(store) == (1, 1)


def test_intercom_ping_and_conversation_tag(client, store) -> None:
    ping = post_intercom(client, f.intercom_ping())
    assert ping.status_code == 200 and ping.json["reason"] == "ping"
    tagged = post_intercom(client, f.intercom_conversation_tagged())
    assert tagged.status_code == 202
    assert rows(store) == (1, 1)


def test_changes_by_relays_own_user_are_ignored(client, store) -> None:
    client.application.extensions["relay"].own_actors["intercom"] = "991267696"
    response = post_intercom(
        client, f.intercom_conversation_tagged(applied_by="991267696")
    )
    assert response.json == {"status": "ignored", "reason": "own_change"}
    assert rows(store) == (0, 0)


# -- rejected --------------------------------------------------------------------


def assert_rejected(response, store, status: int, reason: str, provider="zendesk"):
    assert response.status_code == status, response.json
    assert response.json["error"] == reason
    assert rows(store) == (0, 0)


def test_a_missing_signature_is_401(client, store) -> None:
    before = counter(
        "relay_webhook_rejections_total", provider="zendesk", reason="missing_signature"
    )
    body = f.encode(f.zendesk_tags_changed())
    response = client.post(
        "/webhooks/zendesk", data=body, headers={"Content-Type": "application/json"}
    )
    assert_rejected(response, store, 401, "missing_signature")
    after = counter(
        "relay_webhook_rejections_total", provider="zendesk", reason="missing_signature"
    )
    assert after == before + 1


def test_a_wrong_signature_is_401(client, store) -> None:
    response = post_zendesk(client, f.zendesk_tags_changed(), secret="not-the-secret")
    assert_rejected(response, store, 401, "invalid_signature")
    body = f.encode(f.intercom_conversation_tagged())
    headers = f.intercom_headers(body, secret="wrong")
    response = client.post("/webhooks/intercom", data=body, headers=headers)
    assert_rejected(response, store, 401, "invalid_signature")


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_a_timestamp_outside_the_tolerance_is_401_either_way(
    client, store, offset: int
) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))
    response = post_zendesk(client, f.zendesk_tags_changed(), timestamp=stamp)
    assert_rejected(response, store, 401, "stale_timestamp")


def test_a_provider_that_is_not_configured_is_404(tmp_path, store) -> None:
    app = create_app(
        make_settings(tmp_path, intercom=None), store=store, rules=parse_rules(f.RULES)
    )
    response = post_intercom(app.test_client(), f.intercom_conversation_tagged())
    assert_rejected(response, store, 404, "provider_disabled")


def test_a_body_over_the_limit_is_413(client, store) -> None:
    payload = f.zendesk_tags_changed()
    payload["detail"]["description"] = "x" * (70 * 1024)
    assert_rejected(post_zendesk(client, payload), store, 413, "body_too_large")


def test_a_body_over_the_limit_without_a_length_is_413(client, store) -> None:
    payload = f.zendesk_tags_changed()
    payload["detail"]["description"] = "x" * (70 * 1024)
    body = f.encode(payload)
    headers = f.zendesk_headers(body)

    response = client.post(
        "/webhooks/zendesk",
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_rejected(response, store, 413, "body_too_large")


def test_a_body_that_is_not_json_content_is_415(client, store) -> None:
    body = f.encode(f.zendesk_tags_changed())
    headers = {**f.zendesk_headers(body), "Content-Type": "text/plain"}
    response = client.post("/webhooks/zendesk", data=body, headers=headers)
    assert_rejected(response, store, 415, "unsupported_media_type")


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b'{"a": NaN}'])
def test_malformed_json_is_400(client, store, body: bytes) -> None:
    response = client.post(
        "/webhooks/zendesk", data=body, headers=f.zendesk_headers(body)
    )
    assert_rejected(response, store, 400, "malformed_json")


@pytest.mark.parametrize(
    "payload",
    [[], {"type": "zen:event-type:ticket.tags_changed"}, {"ticket_id": 5}, "text"],
)
def test_json_of_the_wrong_shape_is_422_with_details(client, store, payload) -> None:
    response = post_zendesk(client, payload)
    assert_rejected(response, store, 422, "invalid_payload")
    assert isinstance(response.json["details"], dict)


def test_deeply_nested_json_is_422(client, store) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = client.post(
        "/webhooks/zendesk", data=body, headers=f.zendesk_headers(body)
    )
    assert response.status_code in (413, 422)
    assert rows(store) == (0, 0)


def test_a_store_that_cannot_persist_is_503_with_retry_after(
    client, store, monkeypatch
) -> None:
    def broken(*_args, **_kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(store, "ingest", broken)
    response = post_zendesk(client, f.zendesk_tags_changed())
    assert_rejected(response, store, 503, "store_unavailable")
    assert response.headers["Retry-After"]


# -- health, admin -----------------------------------------------------------------


def test_health_and_readiness(client, store, monkeypatch) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").status_code == 200

    def down() -> None:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("gone"))

    monkeypatch.setattr(store, "ping", down)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["reasons"] == ["store_unreachable"]


def test_without_valid_rules_relay_is_unready(tmp_path, store) -> None:
    (tmp_path / "rules.yaml").write_text("version: 1\nrules: []\n")
    app = create_app(
        make_settings(tmp_path, rules_file=str(tmp_path / "rules.yaml")), store=store
    )
    client = app.test_client()
    assert client.get("/readyz").json["reasons"] == ["no_valid_rules"]
    response = post_zendesk(client, f.zendesk_tags_changed())
    assert response.status_code == 503
    assert rows(store) == (0, 0)


def test_admin_is_404_without_a_token_and_401_with_a_wrong_one(tmp_path, store):
    app = create_app(
        make_settings(tmp_path, admin_token=None),
        store=store,
        rules=parse_rules(f.RULES),
    )
    assert app.test_client().get("/admin/jobs").status_code == 404
    app = create_app(make_settings(tmp_path), store=store, rules=parse_rules(f.RULES))
    client = app.test_client()
    assert client.get("/admin/jobs").status_code == 401
    wrong = client.post("/admin/jobs/retry", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json == {"error": "unauthorized"}


def test_admin_lists_shows_and_refuses_to_retry_a_live_job(client, store) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    job_id = post_zendesk(client, f.zendesk_tags_changed()).json["jobs"][0]
    listed = client.get("/admin/jobs?state=pending", headers=auth).json
    assert [job["id"] for job in listed["jobs"]] == [job_id]
    shown = client.get(f"/admin/jobs/{job_id}", headers=auth).json
    assert shown["state"] == "pending" and shown["history"] == []
    refused = client.post(f"/admin/jobs/{job_id}/retry", headers=auth)
    assert refused.status_code == 409
    assert refused.json == {"error": "job_not_dead"}
    assert client.get("/admin/jobs/999", headers=auth).status_code == 404
    explained = client.get(
        "/admin/rules/explain?provider=zendesk&tag=bugpilot_screenshot", headers=auth
    ).json
    assert explained["rules"] == ["screenshot"]


def test_metrics_are_served(client) -> None:
    post_zendesk(client, f.zendesk_tags_changed())
    text = client.get("/metrics").get_data(as_text=True)
    assert "relay_webhooks_total" in text
    assert 'relay_jobs{state="pending"} 1.0' in text
