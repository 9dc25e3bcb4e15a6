"""Settings from the environment: defaults, secrets from files, clear failures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay.config import Settings, parse_duration
from relay.errors import ConfigError

BASE = {"BUGPILOT_API_KEY": "ws-key", "BUGPILOT_WORKSPACE_ID": "ws_1"}


def test_defaults_follow_the_design() -> None:
    settings = Settings.from_env(BASE)
    assert settings.bind == "0.0.0.0:8080"
    assert settings.web_workers == 2
    assert settings.database_url == "sqlite:///relay.db"
    assert settings.rules_file == "rules.yaml"
    assert settings.admin_token is None
    assert settings.max_body_bytes == 1_048_576
    assert settings.signature_tolerance == 300
    assert settings.cooldown == 600
    assert settings.worker_threads == 8
    assert settings.log_level == "info"
    assert settings.log_format == "json"
    assert settings.bugpilot_api_url == "https://widget-api.bugpilot.io"
    assert settings.max_job_age == 86400
    assert settings.zendesk is None
    assert settings.intercom is None


@pytest.mark.parametrize("missing", ["BUGPILOT_API_KEY", "BUGPILOT_WORKSPACE_ID"])
def test_a_missing_required_value_names_the_variable(missing: str) -> None:
    env = {key: value for key, value in BASE.items() if key != missing}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == missing


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RELAY_WEB_WORKERS", "two"),
        ("RELAY_WEB_WORKERS", "0"),
        ("RELAY_MAX_BODY_BYTES", "-1"),
        ("RELAY_BIND", "8080"),
        ("RELAY_LOG_FORMAT", "xml"),
        ("RELAY_MAX_JOB_AGE", "forever"),
        ("BUGPILOT_API_URL", "widget-api.bugpilot.io"),
        ("RELAY_SANDBOX", "maybe"),
    ],
)
def test_a_malformed_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, variable: value})
    assert caught.value.variable == variable


def test_secrets_can_come_from_files(tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("ws-from-file\n")
    secrets_file = tmp_path / "zendesk"
    secrets_file.write_text("one, two\n")
    settings = Settings.from_env(
        {
            "BUGPILOT_API_KEY_FILE": str(key_file),
            "BUGPILOT_WORKSPACE_ID": "ws_1",
            "ZENDESK_WEBHOOK_SECRETS_FILE": str(secrets_file),
            "ZENDESK_URL": "https://acme.zendesk.com/",
            "ZENDESK_OAUTH_TOKEN": "oauth",
        }
    )
    assert settings.bugpilot_api_key == "ws-from-file"
    assert settings.zendesk is not None
    assert settings.zendesk.webhook_secrets == ("one", "two")
    assert settings.zendesk.url == "https://acme.zendesk.com"


def test_an_unreadable_secret_file_names_the_file_variable(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, "RELAY_ADMIN_TOKEN_FILE": str(tmp_path / "absent")})
    assert caught.value.variable == "RELAY_ADMIN_TOKEN_FILE"


def test_zendesk_is_enabled_by_its_secret_and_needs_its_credentials() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {**BASE, "ZENDESK_WEBHOOK_SECRETS": "s", "ZENDESK_URL": "https://a.b"}
        )
    assert caught.value.variable == "ZENDESK_EMAIL"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                **BASE,
                "ZENDESK_WEBHOOK_SECRETS": "s",
                "ZENDESK_EMAIL": "a@b.c",
                "ZENDESK_API_TOKEN": "t",
            }
        )
    assert caught.value.variable == "ZENDESK_URL"


def test_intercom_is_enabled_by_its_secret_and_needs_a_token() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, "INTERCOM_CLIENT_SECRETS": "a,b"})
    assert caught.value.variable == "INTERCOM_ACCESS_TOKEN"
    settings = Settings.from_env(
        {**BASE, "INTERCOM_CLIENT_SECRETS": "a,b", "INTERCOM_ACCESS_TOKEN": "t"}
    )
    assert settings.intercom is not None
    assert settings.intercom.client_secrets == ("a", "b")
    assert settings.intercom.api_url == "https://api.intercom.io"


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = Settings.from_env({**BASE, "RELAY_ADMIN_TOKEN": "admin-secret-value"})
    assert "ws-key" not in repr(settings)
    assert "admin-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("500ms", 0.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_the_command_exits_2_with_one_line_naming_the_variable(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "worker"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RELAY_WEB_WORKERS": "x"},
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "BUGPILOT_API_KEY" in lines[0]
