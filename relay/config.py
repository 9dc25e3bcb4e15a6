"""Settings from the environment, read in this one place.

Every secret may instead be given as ``NAME_FILE``, the path of a file holding it
(how Kubernetes and Docker mount secrets). A missing or malformed value raises
``ConfigError`` naming the variable; the command line turns that into one line on
stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from relay.errors import ConfigError

SECRET_VARIABLES = (
    "RELAY_DATABASE_URL",
    "RELAY_ADMIN_TOKEN",
    "BUGPILOT_API_KEY",
    "ZENDESK_API_TOKEN",
    "ZENDESK_OAUTH_TOKEN",
    "ZENDESK_WEBHOOK_SECRETS",
    "INTERCOM_ACCESS_TOKEN",
    "INTERCOM_CLIENT_SECRETS",
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a bare number is seconds; ms, s, m, h, d suffixes."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class ZendeskSettings:
    url: str
    webhook_secrets: tuple[str, ...]
    email: str | None = None
    api_token: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)
    rate_limit: float = 400.0


@dataclass(frozen=True)
class IntercomSettings:
    api_url: str
    access_token: str = field(repr=False)
    client_secrets: tuple[str, ...] = field(repr=False)
    admin_id: str | None = None
    rate_limit: float = 1000.0


@dataclass(frozen=True)
class Settings:
    """Everything relay is configured with; build it with ``from_env``."""

    bugpilot_api_key: str = field(repr=False)
    bugpilot_workspace_id: str
    bugpilot_api_url: str = "https://widget-api.bugpilot.io"
    bugpilot_rate_limit: float = 600.0
    bind: str = "0.0.0.0:8080"
    web_workers: int = 2
    database_url: str = "sqlite:///relay.db"
    rules_file: str = "rules.yaml"
    admin_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 1_048_576
    signature_tolerance: int = 300
    cooldown: int = 600
    worker_threads: int = 8
    lease_seconds: int = 60
    max_job_age: float = 86400.0
    retry_base: float = 5.0
    retry_cap: float = 900.0
    poll_interval: float = 0.5
    drain_timeout: float = 30.0
    web_threads: int = 4
    worker_metrics_bind: str | None = None
    retention: float = 7 * 86400.0
    log_level: str = "info"
    log_format: str = "json"
    sandbox: bool = False
    zendesk: ZendeskSettings | None = None
    intercom: IntercomSettings | None = None

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests use this)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (``os.environ`` by default)."""
        env = _Env(os.environ if environ is None else environ)

        zendesk = None
        zendesk_secrets = env.secret_list("ZENDESK_WEBHOOK_SECRETS")
        if zendesk_secrets:
            email = env.text("ZENDESK_EMAIL")
            api_token = env.secret("ZENDESK_API_TOKEN")
            oauth_token = env.secret("ZENDESK_OAUTH_TOKEN")
            if not oauth_token and not (email and api_token):
                variable = "ZENDESK_API_TOKEN" if email else "ZENDESK_EMAIL"
                raise ConfigError(
                    variable,
                    "required for Zendesk (or set ZENDESK_OAUTH_TOKEN)",
                )
            zendesk = ZendeskSettings(
                url=env.url("ZENDESK_URL", required=True),
                webhook_secrets=zendesk_secrets,
                email=email,
                api_token=api_token,
                oauth_token=oauth_token,
                rate_limit=env.number("ZENDESK_RATE_LIMIT", 400.0),
            )

        intercom = None
        intercom_secrets = env.secret_list("INTERCOM_CLIENT_SECRETS")
        if intercom_secrets:
            token = env.secret("INTERCOM_ACCESS_TOKEN")
            if not token:
                raise ConfigError("INTERCOM_ACCESS_TOKEN", "required for Intercom")
            intercom = IntercomSettings(
                api_url=env.url("INTERCOM_API_URL", "https://api.intercom.io"),
                access_token=token,
                client_secrets=intercom_secrets,
                admin_id=env.text("INTERCOM_ADMIN_ID"),
                rate_limit=env.number("INTERCOM_RATE_LIMIT", 1000.0),
            )

        log_format = env.text("RELAY_LOG_FORMAT") or "json"
        if log_format not in ("json", "console"):
            raise ConfigError("RELAY_LOG_FORMAT", "must be json or console")
        log_level = (env.text("RELAY_LOG_LEVEL") or "info").lower()
        if log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                "RELAY_LOG_LEVEL", "must be debug, info, warning or error"
            )

        return cls(
            bugpilot_api_key=env.secret("BUGPILOT_API_KEY", required=True) or "",
            bugpilot_workspace_id=env.text("BUGPILOT_WORKSPACE_ID", required=True)
            or "",
            bugpilot_api_url=env.url(
                "BUGPILOT_API_URL", "https://widget-api.bugpilot.io"
            ),
            bugpilot_rate_limit=env.number("BUGPILOT_RATE_LIMIT", 600.0),
            bind=env.bind("RELAY_BIND", "0.0.0.0:8080"),
            web_workers=env.integer("RELAY_WEB_WORKERS", 2, minimum=1),
            # The URL carries the database password, so it may come from a file.
            database_url=env.secret("RELAY_DATABASE_URL") or "sqlite:///relay.db",
            rules_file=env.text("RELAY_RULES_FILE") or "rules.yaml",
            admin_token=env.secret("RELAY_ADMIN_TOKEN"),
            max_body_bytes=env.integer("RELAY_MAX_BODY_BYTES", 1_048_576, minimum=1),
            signature_tolerance=env.integer("RELAY_SIGNATURE_TOLERANCE", 300),
            cooldown=env.integer("RELAY_COOLDOWN", 600),
            worker_threads=env.integer("RELAY_WORKER_THREADS", 8, minimum=1),
            lease_seconds=env.integer("RELAY_LEASE_SECONDS", 60, minimum=5),
            max_job_age=env.duration("RELAY_MAX_JOB_AGE", 86400.0),
            retry_base=env.duration("RELAY_RETRY_BASE", 5.0),
            retry_cap=env.duration("RELAY_RETRY_CAP", 900.0),
            poll_interval=env.duration("RELAY_POLL_INTERVAL", 0.5),
            drain_timeout=env.duration("RELAY_DRAIN_TIMEOUT", 30.0),
            web_threads=env.integer("RELAY_WEB_THREADS", 4, minimum=1),
            worker_metrics_bind=(
                env.bind("RELAY_WORKER_METRICS_BIND", "")
                if env.text("RELAY_WORKER_METRICS_BIND")
                else None
            ),
            retention=env.duration("RELAY_RETENTION", 7 * 86400.0),
            log_level=log_level,
            log_format=log_format,
            sandbox=env.flag("RELAY_SANDBOX"),
            zendesk=zendesk,
            intercom=intercom,
        )


class _Env:
    """Typed access to environment variables, each failure naming its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.environ.get(name, "").strip()
        if not value:
            if required:
                raise ConfigError(name, "is required")
            return None
        return value

    def secret(self, name: str, *, required: bool = False) -> str | None:
        path = self.environ.get(f"{name}_FILE", "").strip()
        if path:
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"{name}_FILE", f"cannot read {path}: {exc.strerror}"
                ) from None
            if not value:
                raise ConfigError(f"{name}_FILE", f"{path} is empty")
            return value
        return self.text(name, required=required)

    def secret_list(self, name: str) -> tuple[str, ...]:
        raw = self.secret(name)
        if raw is None:
            return ()
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(name, f"must be positive, got {raw}")
        return value

    def duration(self, name: str, default: float) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            return parse_duration(raw)
        except ValueError:
            raise ConfigError(
                name, f"must be a duration such as 90s, 30m or 24h, got {raw!r}"
            ) from None

    def flag(self, name: str) -> bool:
        raw = (self.text(name) or "").lower()
        if raw in ("", "0", "false", "no"):
            return False
        if raw in ("1", "true", "yes"):
            return True
        raise ConfigError(name, f"must be 1 or 0, got {raw!r}")

    def url(self, name: str, default: str = "", *, required: bool = False) -> str:
        raw = self.text(name, required=required) or default
        if not re.match(r"^https?://[^/\s]+", raw):
            raise ConfigError(name, f"must be an http(s) URL, got {raw!r}")
        return raw.rstrip("/")

    def bind(self, name: str, default: str) -> str:
        raw = self.text(name) or default
        _host, sep, port = raw.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(name, f"must be HOST:PORT, got {raw!r}")
        return raw
