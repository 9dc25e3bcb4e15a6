"""Structured logs: JSON lines by default, readable lines for people.

Every line is an event phrase plus fields. Processes bind the request id, the
delivery id or the job id once with ``structlog.contextvars``; the scrubber
below runs last before rendering, so no secret, token, signature or full email
address reaches the output whichever code logged it. Gunicorn's own loggers,
Python warnings and uncaught exceptions go through the same pipeline, so in JSON
mode every line a relay process writes is one JSON object.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from types import TracebackType
from typing import Any

import structlog

SECRET_KEYS = re.compile(
    r"(secret|token|signature|password|authorization|api_key|apikey|cookie)", re.I
)
EMAIL = re.compile(
    r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})"
)
URL_CREDENTIALS = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")
REDACTED = "[redacted]"

# Exact secret values (API keys, webhook secrets) redacted wherever they turn
# up: a secret can reach a line under a harmless key, in a URL or a traceback.
# Shorter values are left alone so that common words are not blanked out.
_hidden: tuple[str, ...] = ()
_MIN_HIDDEN_LENGTH = 6


def hide_values(values: Iterable[str | None]) -> None:
    """Redact these exact strings (configured secrets) from every later line."""
    global _hidden
    wanted = {value for value in values if value and len(value) >= _MIN_HIDDEN_LENGTH}
    # Longest first, so a secret that contains another is redacted whole.
    _hidden = tuple(sorted(wanted | set(_hidden), key=len, reverse=True))


def mask_email(text: str) -> str:
    """Keep an email's first letter and its domain: ``j***@example.com``."""
    return EMAIL.sub(r"\1***@\2", text)


def scrub(value: Any) -> Any:
    """Mask emails, URL passwords and hidden values in strings, recursively."""
    if isinstance(value, str):
        for secret in _hidden:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return URL_CREDENTIALS.sub(r"\1***@", mask_email(value))
    if isinstance(value, dict):
        return {key: _scrub_item(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


def _scrub_item(key: Any, value: Any) -> Any:
    if isinstance(key, str) and SECRET_KEYS.search(key) and value not in (None, ""):
        return REDACTED
    return scrub(value)


def _scrub_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {key: _scrub_item(key, value) for key, value in event_dict.items()}


def _add_pid(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Gunicorn's master, its workers and the worker process may share one
    # stream; the pid tells which process did the work.
    event_dict["pid"] = os.getpid()
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "logger", "pid", "event")


def _leading_keys_first(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # The same first keys on every JSON line, whoever logged it.
    ordered = {key: event_dict[key] for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def configure(level: str = "info", fmt: str = "json") -> None:
    """Route structlog and the standard library's logging to stderr in one shape."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_pid,
        structlog.processors.format_exc_info,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    # The scrubber runs in the formatter, after the lines of other libraries
    # have joined the pipeline, so it sees every line exactly once.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _scrub_processor,
            _leading_keys_first,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("gunicorn.error", "gunicorn.access"):
        gunicorn_logger = logging.getLogger(name)
        gunicorn_logger.handlers[:] = []
        gunicorn_logger.propagate = True
    for noisy in ("urllib3", "werkzeug", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException],
    value: BaseException,
    traceback: TracebackType | None,
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    get_logger("relay").critical(
        "uncaught exception", exc_info=(kind, value, traceback)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    get_logger("relay").error(
        "uncaught exception in thread",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def get_logger(name: str) -> Any:
    """A structlog logger named after the module that logs."""
    return structlog.get_logger(name)
