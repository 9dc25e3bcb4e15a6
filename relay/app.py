"""The web side: ``create_app(settings)`` builds the Flask application.

A webhook request is verified, parsed, matched against the rules and stored in
one transaction; nothing outbound happens while the helpdesk waits. Every way
out of the webhook view is counted once and logged once.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException

from relay import __version__, metrics
from relay.config import Settings
from relay.errors import (
    BodyTooLarge,
    InvalidPayload,
    MalformedJSON,
    ProviderDisabled,
    RulesError,
    StoreUnavailable,
    UnsupportedMediaType,
    WebhookRejected,
)
from relay.logging import get_logger
from relay.model import Ignored, TagEvent
from relay.providers import intercom, zendesk
from relay.rules import Rules, load_rules
from relay.store import STORE_ERRORS, IngestResult, Store

log = get_logger("relay.web")

PROVIDERS = ("zendesk", "intercom")
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
OPENAPI = Path(__file__).with_name("openapi.yaml")
MAX_JOB_ID = 2**63 - 1
"""Job ids are 64-bit in the store; a larger number names no job."""
RETRY_AFTER = str(StoreUnavailable.retry_after)


@dataclass
class RulesHolder:
    """The rules in force; a failed reload keeps the previous ones."""

    path: str
    rules: Rules | None = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> Rules:
        """Read the rules file; on failure keep the old rules and re-raise."""
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            with self.lock:
                self.error = "; ".join(exc.problems)
            raise
        with self.lock:
            self.rules, self.error = rules, None
        return rules


@dataclass
class Runtime:
    """What the views share: settings, store, rules and the own-actor ids."""

    settings: Settings
    store: Store
    rules: RulesHolder
    own_actors: dict[str, str] = field(default_factory=dict)

    def verifier(self, provider: str) -> Callable[[bytes, Mapping[str, str]], None]:
        settings = self.settings
        if provider == "zendesk" and settings.zendesk is not None:
            secrets = settings.zendesk.webhook_secrets
            tolerance = settings.signature_tolerance
            return lambda body, headers: zendesk.verify_signature(
                body, headers, secrets, tolerance=tolerance
            )
        if provider == "intercom" and settings.intercom is not None:
            client_secrets = settings.intercom.client_secrets
            return lambda body, headers: intercom.verify_signature(
                body, headers, client_secrets
            )
        raise ProviderDisabled(f"{provider} is not configured")


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    rules: Rules | None = None,
    learn_own_actors: Callable[[Runtime], None] | None = None,
) -> Flask:
    """Build the web application; tests pass their own settings, store and rules."""
    app = Flask("relay")
    holder = RulesHolder(settings.rules_file, rules=rules)
    if rules is None:
        try:
            holder.load()
        except RulesError:
            # Readiness reports it; the command line refuses to start before this.
            log.error("rules invalid", path=settings.rules_file, problems=holder.error)
    runtime = Runtime(
        settings=settings,
        store=store or Store.from_url(settings.database_url),
        rules=holder,
    )
    app.extensions["relay"] = runtime
    metrics.BUILD_INFO.labels(__version__).set(1)

    app.register_blueprint(webhooks)
    app.register_blueprint(service)
    app.register_blueprint(admin)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)

    if learn_own_actors is not None:
        threading.Thread(target=learn_own_actors, args=(runtime,), daemon=True).start()
    return app


def runtime() -> Runtime:
    value: Runtime = current_app.extensions["relay"]
    return value


def _start_request() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=g.request_id)


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    if response.status_code == 503:
        response.headers.setdefault("Retry-After", RETRY_AFTER)
    return response


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    reason = (exc.name or "error").lower().replace(" ", "_")
    return jsonify(error=reason), exc.code or 500


def _unexpected_error(exc: Exception) -> tuple[Response, int]:
    log.exception("unexpected error", path=request.path)
    return jsonify(error="internal_error"), 500


# -- webhooks ---------------------------------------------------------------

webhooks = Blueprint("webhooks", __name__)


@webhooks.post("/webhooks/<any(zendesk, intercom):provider>")
def receive(provider: str) -> tuple[Response, int]:
    """Verify, parse, match and store one delivery, then answer."""
    started = time.perf_counter()
    state = runtime()
    delivery_id: str | None = None
    try:
        verify = state.verifier(provider)
        body = _read_body(state.settings.max_body_bytes)
        verify(body, _headers())
        payload = _decode_json(body)
        parsed = _parse(provider, payload)
        delivery_id = parsed.delivery_id
        result = _enqueue(state, provider, parsed)
    except WebhookRejected as exc:
        return _reject(provider, exc, started, delivery_id)

    duration = time.perf_counter() - started
    metrics.WEBHOOK_DURATION.labels(provider).observe(duration)
    if result.ignored:
        metrics.WEBHOOKS.labels(provider, "ignored").inc()
        log.info(
            "webhook ignored",
            provider=provider,
            delivery_id=delivery_id,
            outcome="ignored",
            reason=result.ignored,
            duration_ms=round(duration * 1000, 2),
        )
        return jsonify(status="ignored", reason=result.ignored), 200

    metrics.WEBHOOKS.labels(provider, "accepted").inc()
    log.info(
        "webhook accepted",
        provider=provider,
        delivery_id=delivery_id,
        outcome="accepted",
        reason=None,
        jobs=list(result.job_ids),
        duration_ms=round(duration * 1000, 2),
    )
    return jsonify(status="accepted", jobs=list(result.job_ids)), 202


def _read_body(limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading them all."""
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"{length} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"more than {limit} bytes")
    return body


def _decode_json(body: bytes) -> Any:
    if request.mimetype != "application/json" and not request.mimetype.endswith(
        "+json"
    ):
        raise UnsupportedMediaType(request.mimetype or "none")
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
        # An escaped lone surrogate is valid JSON syntax but not text that can
        # be stored or sent on; encoding finds every one. Only a \uD8xx-\uDFxx
        # escape can make one, so most bodies skip the second pass.
        if SURROGATE_ESCAPE.search(body):
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise InvalidPayload("JSON nested too deeply") from None
    except UnicodeEncodeError:
        raise InvalidPayload("text holds a lone surrogate") from None
    except (json.JSONDecodeError, _NotJSON, UnicodeDecodeError):
        raise MalformedJSON("body is not valid JSON") from None
    except ValueError:
        # Python refuses integers of more than a few thousand digits.
        raise InvalidPayload("a number is too long") from None
    return payload


class _NotJSON(ValueError):
    """A constant Python's parser reads and JSON does not have."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not JSON")


def _parse(provider: str, payload: Any) -> TagEvent | Ignored:
    if provider == "zendesk":
        return zendesk.parse_event(payload, _headers())
    return intercom.parse_event(payload, _headers())


def _headers() -> Mapping[str, str]:
    # werkzeug's Headers looks names up case-insensitively, as the providers need.
    return cast(Mapping[str, str], request.headers)


def _enqueue(state: Runtime, provider: str, parsed: TagEvent | Ignored) -> IngestResult:
    """Match the rules and store the event with its jobs; no outbound call."""
    if isinstance(parsed, Ignored):
        return IngestResult(ignored=parsed.reason)
    own = state.own_actors.get(provider)
    if own and parsed.actor_id == own:
        return IngestResult(ignored="own_change")
    rules = state.rules.rules
    if rules is None:
        raise StoreUnavailable("no valid rules are loaded", reason="rules_unavailable")
    matches = rules.match_tags(provider, parsed.tags_added)
    if not matches:
        return IngestResult(ignored="no_rule")
    try:
        result = state.store.ingest(parsed, matches, cooldown=state.settings.cooldown)
    except DataError:
        # A value the store refuses (too long for its column, a NUL character)
        # is refused again on every retry: the payload is at fault, not the store.
        raise InvalidPayload("a value does not fit the store") from None
    except STORE_ERRORS as exc:
        raise StoreUnavailable(type(exc).__name__) from exc
    for _job_id, rule in result.jobs:
        metrics.JOBS_ENQUEUED.labels(provider, rule.name, rule.action).inc()
    return result


def _reject(
    provider: str, exc: WebhookRejected, started: float, delivery_id: str | None
) -> tuple[Response, int]:
    duration = time.perf_counter() - started
    metrics.WEBHOOK_DURATION.labels(provider).observe(duration)
    metrics.WEBHOOKS.labels(provider, "rejected").inc()
    metrics.WEBHOOK_REJECTIONS.labels(provider, exc.reason).inc()
    level = log.error if exc.status >= 500 else log.warning
    level(
        "webhook rejected",
        provider=provider,
        delivery_id=delivery_id,
        outcome="rejected",
        reason=exc.reason,
        status=exc.status,
        duration_ms=round(duration * 1000, 2),
    )
    response = jsonify(exc.body())
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response, exc.status


# -- health, metrics, spec -----------------------------------------------------

service = Blueprint("service", __name__)


@service.get("/healthz")
def healthz() -> Response:
    """The process is alive."""
    return jsonify(status="ok")


@service.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when the store answers and valid rules are loaded."""
    state = runtime()
    reasons = []
    try:
        state.store.ping()
    except STORE_ERRORS:
        reasons.append("store_unreachable")
    if state.rules.rules is None:
        reasons.append("no_valid_rules")
    if reasons:
        return jsonify(status="unready", reasons=reasons), 503
    return jsonify(status="ready"), 200


@service.get("/metrics")
def metrics_view() -> Response:
    """Prometheus exposition for every process sharing the metrics directory."""
    text = metrics.render(runtime().store.job_counts)
    return Response(text, mimetype="text/plain; version=0.0.4; charset=utf-8")


@service.get("/openapi.yaml")
def openapi() -> Response:
    """The OpenAPI description of this service."""
    return Response(OPENAPI.read_bytes(), mimetype="application/yaml")


# -- admin ----------------------------------------------------------------------

admin = Blueprint("admin", __name__, url_prefix="/admin")


@admin.before_request
def _require_token() -> tuple[Response, int] | None:
    token = runtime().settings.admin_token
    if not token:
        return jsonify(error="not_found"), 404
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        log.warning("admin call refused", path=request.path, reason="unauthorized")
        return jsonify(error="unauthorized"), 401
    return None


@admin.get("/jobs")
def list_jobs() -> tuple[Response, int]:
    """Jobs newest first, by state, paged with ``before``."""
    state = request.args.get("state") or None
    if state is not None and state not in ("pending", "noting", "done", "dead"):
        return jsonify(error="invalid_state"), 400
    try:
        limit = min(max(int(request.args.get("limit", "50")), 1), 500)
        before = int(request.args["before"]) if request.args.get("before") else None
    except ValueError:
        return jsonify(error="invalid_paging"), 400
    if before is not None and abs(before) > MAX_JOB_ID:
        return jsonify(error="invalid_paging"), 400
    rows = runtime().store.list_jobs(state=state, limit=limit, before=before)
    jobs = [job_json(row) for row in rows]
    next_before = jobs[-1]["id"] if len(jobs) == limit else None
    return jsonify(jobs=jobs, next_before=next_before), 200


@admin.get("/jobs/<int:job_id>")
def show_job(job_id: int) -> tuple[Response, int]:
    """One job with its attempt history."""
    row = runtime().store.get_job(job_id) if job_id <= MAX_JOB_ID else None
    if row is None:
        return jsonify(error="job_not_found"), 404
    body = job_json(row)
    body["history"] = [attempt_json(item) for item in row["history"]]
    return jsonify(body), 200


@admin.post("/jobs/<int:job_id>/retry")
def retry_job(job_id: int) -> tuple[Response, int]:
    """Send one dead job back to work."""
    if job_id > MAX_JOB_ID:
        return jsonify(error="job_not_found"), 404
    outcome = runtime().store.retry([job_id])[job_id]
    if outcome == "not_found":
        return jsonify(error="job_not_found"), 404
    if outcome == "not_dead":
        return jsonify(error="job_not_dead"), 409
    log.info("job replayed", job_id=job_id)
    return jsonify(status="retried", jobs=[job_id]), 200


@admin.post("/jobs/retry")
def retry_dead() -> tuple[Response, int]:
    """Send every dead job back to work."""
    store = runtime().store
    ids = store.dead_job_ids()
    retried = [job_id for job_id, what in store.retry(ids).items() if what == "retried"]
    log.info("dead jobs replayed", count=len(retried))
    return jsonify(status="retried", jobs=retried), 200


@admin.post("/jobs/purge")
def purge_jobs() -> tuple[Response, int]:
    """Delete done and dead jobs older than ``older_than`` seconds."""
    settings = runtime().settings
    raw = request.args.get("older_than")
    try:
        older_than = float(raw) if raw else settings.retention
    except ValueError:
        return jsonify(error="invalid_age"), 400
    # NaN would compare as older than everything on PostgreSQL.
    if not math.isfinite(older_than) or older_than < 0:
        return jsonify(error="invalid_age"), 400
    purged = runtime().store.purge(older_than=older_than)
    return jsonify(status="purged", purged=purged), 200


@admin.get("/rules/explain")
def explain_rules() -> tuple[Response, int]:
    """Which rules a tag would fire for a provider, and why the others would not."""
    provider = request.args.get("provider", "")
    tag = request.args.get("tag", "")
    if provider not in PROVIDERS or not tag:
        return jsonify(error="invalid_query"), 400
    rules = runtime().rules.rules
    if rules is None:
        return jsonify(error="no_valid_rules"), 503
    fired = [rule.name for rule in rules.match(provider, tag)]
    return jsonify(rules=fired, explanation=rules.explain(provider, tag)), 200


@admin.post("/rules/reload")
def reload_rules() -> tuple[Response, int]:
    """Read the rules file again; a bad file leaves the running rules in force."""
    holder = runtime().rules
    try:
        rules = holder.load()
    except RulesError as exc:
        log.warning("rules reload refused", problems=exc.problems)
        return jsonify(error="invalid_rules", problems=exc.problems), 422
    log.info("rules reloaded", count=len(rules.rules))
    return jsonify(status="reloaded", rules=len(rules.rules)), 200


def job_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public shape of a job row."""
    return {
        "id": row["id"],
        "state": row["state"],
        "provider": row["provider"],
        "target": {"kind": row["target_kind"], "id": row["target_id"]},
        "tag": row["tag"],
        "rule": row["rule"],
        "action": row["action"],
        "attempts": row["attempts"],
        "next_attempt_at": _iso(row["next_attempt_at"]),
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "finished_at": _iso(row["finished_at"]),
        "session_info_url": row["session_info_url"],
        "report_url": row["report_url"],
        "last_error": row["last_error"],
        "dead_reason": row["dead_reason"],
    }


def attempt_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public shape of one attempt in a job's history."""
    return {
        "at": _iso(row["at"]),
        "step": row["step"],
        "outcome": row["outcome"],
        "http_status": row["http_status"],
        "error_code": row["error_code"],
        "detail": row["detail"],
        "duration_ms": row["duration_ms"],
    }


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
