"""The outbound HTTP side shared by the Bugpilot, Zendesk and Intercom clients.

One ``Outbound`` per destination owns a ``requests.Session``, a timeout on every
call, a circuit breaker, a rate limit and the short retries inside one attempt.
What the other side answered is turned into the ``DeliveryError`` tree from
``relay.errors``; the worker decides from that whether the job waits, retries
later or is dead.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
import tenacity

from relay import metrics
from relay.errors import (
    DeliveryError,
    PermanentError,
    RateLimited,
    TransientError,
)

DEFAULT_TIMEOUT = (3.05, 10.0)
RETRY_AFTER_CAP = 3600.0
"""No Retry-After makes relay wait longer than this between attempts."""
IN_ATTEMPT_WAIT_CAP = 5.0
"""A Retry-After up to this long is waited out inside the attempt."""

PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 422})

Classifier = Callable[[requests.Response], None]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class CircuitBreaker:
    """Stops calls to a failing destination and lets one probe through later.

    Closed: calls pass and consecutive failures are counted. Open: calls fail at
    once until ``reset_after`` seconds have passed. Half-open: one call passes;
    its success closes the circuit, its failure opens it again.
    """

    def __init__(
        self,
        destination: str,
        *,
        threshold: int = 5,
        reset_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.destination = destination
        self.threshold = threshold
        self.reset_after = reset_after
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        metrics.CIRCUIT_OPEN.labels(destination).set(0)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None

    def before_call(self) -> None:
        """Raise ``TransientError(circuit_open)`` while calls must not be made."""
        with self._lock:
            if self._opened_at is None:
                return
            if self._probing or self.clock() - self._opened_at < self.reset_after:
                raise TransientError(
                    f"{self.destination} circuit is open",
                    destination=self.destination,
                    reason="circuit_open",
                    retry_after=self.reset_after,
                )
            self._probing = True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            if self._opened_at is not None:
                self._opened_at = None
                metrics.CIRCUIT_OPEN.labels(self.destination).set(0)

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._opened_at = self.clock()
                self._probing = False
                metrics.CIRCUIT_OPEN.labels(self.destination).set(1)


class RateLimit:
    """A token bucket: at most ``per_minute`` calls a minute from this process."""

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, min(per_minute / 6.0, 50.0))
        self.clock = clock
        self.sleep = sleep
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take one token, sleeping until one is free."""
        while True:
            with self._lock:
                now = self.clock()
                self._tokens = min(
                    self.capacity, self._tokens + (now - self._stamp) * self.rate
                )
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                wait = (1.0 - self._tokens) / self.rate
            self.sleep(wait)


def classify_helpdesk(response: requests.Response, destination: str) -> None:
    """Raise the ``DeliveryError`` a helpdesk answer means; return if it is 2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    code = _error_code(response)
    message = f"{destination} answered {status}" + (f" {code}" if code else "")
    if status == 429:
        raise RateLimited(
            message,
            destination=destination,
            http_status=status,
            error_code=code,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in PERMANENT_STATUSES:
        raise PermanentError(
            message,
            destination=destination,
            reason=f"{destination}_http_{status}",
            http_status=status,
            error_code=code,
        )
    raise TransientError(
        message,
        destination=destination,
        reason=f"{destination}_http_{status}",
        http_status=status,
        error_code=code,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def _error_code(response: requests.Response) -> str | None:
    """The short error code in a Zendesk or Intercom error body, if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, str):
        return error[:64]
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("code")
        if isinstance(code, str):
            return code[:64]
    return None


class Outbound:
    """Calls one destination with a timeout, a breaker, a rate limit and retries."""

    def __init__(
        self,
        destination: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        rate_per_minute: float | None = None,
        breaker: CircuitBreaker | None = None,
        tries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.destination = destination
        self.base_url = base_url.rstrip("/")
        if session is None:
            session = requests.Session()
            # Enough pooled connections for every worker thread: a connection
            # set up afresh for each call costs more than the call itself.
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session
        self.session.headers.update(headers or {})
        self.timeout = timeout
        self.limit = (
            RateLimit(rate_per_minute, sleep=sleep) if rate_per_minute else None
        )
        self.breaker = breaker or CircuitBreaker(destination)
        self.tries = tries
        self.sleep = sleep
        self.observe = observe

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        classify: Classifier | None = None,
        observe: Callable[[float], None] | None = None,
    ) -> requests.Response:
        """Send one request, retrying transient failures briefly; return the answer.

        Raises ``TransientError`` (including ``RateLimited`` with a long
        Retry-After) when the short retries run out, and ``PermanentError`` at once.
        ``observe``, when given, receives each HTTP call's duration instead of the
        destination-wide callback.
        """
        check = classify or (
            lambda response: classify_helpdesk(response, self.destination)
        )
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self._worth_retrying_now),
            stop=tenacity.stop_after_attempt(self.tries),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        timer = observe or self.observe
        return retrying(self._send_once, method, path, json, headers, check, timer)

    def _send_once(
        self,
        method: str,
        path: str,
        json: Any,
        headers: Mapping[str, str] | None,
        check: Classifier,
        observe: Callable[[float], None] | None,
    ) -> requests.Response:
        self.breaker.before_call()
        if self.limit is not None:
            self.limit.acquire()
        url = path if path.startswith("http") else self.base_url + path
        started = time.perf_counter()
        try:
            response = self.session.request(
                method,
                url,
                json=json,
                headers=dict(headers or {}),
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            self.breaker.record_failure()
            raise TransientError(
                f"{self.destination} timed out",
                destination=self.destination,
                reason="timeout",
            ) from exc
        except requests.RequestException as exc:
            self.breaker.record_failure()
            raise TransientError(
                f"{self.destination} unreachable: {type(exc).__name__}",
                destination=self.destination,
                reason="connection_error",
            ) from exc
        finally:
            if observe is not None:
                observe(time.perf_counter() - started)

        if response.status_code >= 500:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        check(response)
        return response

    @staticmethod
    def _worth_retrying_now(exc: BaseException) -> bool:
        if not isinstance(exc, TransientError) or exc.reason == "circuit_open":
            return False
        if exc.reason == "user_not_connected":
            return False
        return exc.retry_after is None or exc.retry_after <= IN_ATTEMPT_WAIT_CAP

    @staticmethod
    def _wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, DeliveryError) and exc.retry_after is not None:
            return float(exc.retry_after)
        backoff: float = min(0.25 * 2 ** (state.attempt_number - 1), 2.0)
        return backoff + random.uniform(0, 0.25)
