"""Every error relay raises on purpose, and the reason code each one carries.

The reason is a short machine-readable string. It is what webhook answers put in
their ``error`` field, what logs record and what metrics use as a label, so it
must stay bounded and stable.

    RelayError
    ├── ConfigError                 start-up: a variable is missing or malformed
    ├── RulesError                  the rules file cannot be used
    ├── WebhookRejected             an inbound delivery gets a 4xx or 503 answer
    │   ├── MissingSignature        401 missing_signature
    │   ├── InvalidSignature        401 invalid_signature
    │   ├── StaleTimestamp          401 stale_timestamp
    │   ├── ProviderDisabled        404 provider_disabled
    │   ├── BodyTooLarge            413 body_too_large
    │   ├── UnsupportedMediaType    415 unsupported_media_type
    │   ├── MalformedJSON           400 malformed_json
    │   ├── InvalidPayload          422 invalid_payload (with details)
    │   └── StoreUnavailable        503 store_unavailable
    └── DeliveryError               an outbound call to Bugpilot or a helpdesk failed
        ├── TransientError          worth another try later
        │   ├── RateLimited         429, possibly with Retry-After
        │   └── UserNotConnected    Bugpilot: the end user is not online right now
        └── PermanentError          retrying cannot help; the job is dead
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RelayError(Exception):
    """Root of relay's own errors; ``reason`` is the machine-readable code."""

    reason = "error"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or self.reason)
        if reason is not None:
            self.reason = reason


class ConfigError(RelayError):
    """A configuration value is missing or malformed."""

    reason = "config_error"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class RulesError(RelayError):
    """The rules file is unusable; ``problems`` holds one line per fault."""

    reason = "invalid_rules"

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path = path
        self.problems = problems


class WebhookRejected(RelayError):
    """An inbound delivery that relay answers with an error status."""

    status = 400
    retry_after: int | None = None

    def body(self) -> dict[str, Any]:
        return {"error": self.reason}


class MissingSignature(WebhookRejected):
    reason = "missing_signature"
    status = 401


class InvalidSignature(WebhookRejected):
    reason = "invalid_signature"
    status = 401


class StaleTimestamp(WebhookRejected):
    reason = "stale_timestamp"
    status = 401


class ProviderDisabled(WebhookRejected):
    reason = "provider_disabled"
    status = 404


class BodyTooLarge(WebhookRejected):
    reason = "body_too_large"
    status = 413


class UnsupportedMediaType(WebhookRejected):
    reason = "unsupported_media_type"
    status = 415


class MalformedJSON(WebhookRejected):
    reason = "malformed_json"
    status = 400


class InvalidPayload(WebhookRejected):
    reason = "invalid_payload"
    status = 422

    def __init__(self, details: Mapping[str, Any] | str) -> None:
        if isinstance(details, str):
            details = {"_schema": [details]}
        super().__init__("payload does not have the expected shape")
        self.details = dict(details)

    def body(self) -> dict[str, Any]:
        return {"error": self.reason, "details": self.details}


class StoreUnavailable(WebhookRejected):
    reason = "store_unavailable"
    status = 503
    retry_after = 5


class DeliveryError(RelayError):
    """An outbound call failed.

    ``destination`` is ``bugpilot``, ``zendesk`` or ``intercom``; ``http_status``
    and ``error_code`` say what the other side answered, when it answered at all.
    """

    reason = "delivery_error"

    def __init__(
        self,
        message: str,
        *,
        destination: str,
        reason: str | None = None,
        http_status: int | None = None,
        error_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.destination = destination
        self.http_status = http_status
        self.error_code = error_code
        self.retry_after = retry_after


class TransientError(DeliveryError):
    """Another try later may succeed."""

    reason = "transient"


class RateLimited(TransientError):
    """The other side asked relay to slow down."""

    reason = "rate_limited"


class UserNotConnected(TransientError):
    """Bugpilot cannot reach the end user's browser right now."""

    reason = "user_not_connected"


class PermanentError(DeliveryError):
    """Retrying cannot help: the request itself is wrong or not allowed."""

    reason = "permanent"
