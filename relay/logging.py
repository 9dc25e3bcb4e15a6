"""Structured logs: JSON lines by default, readable lines for people.

Every line is an event phrase plus fields. Processes bind the request id, the
delivery id or the job id once with ``structlog.contextvars``; the scrubber
below runs last before rendering, so no secret, token, signature or full email
address reaches the output whichever code logged it. Gunicorn's own loggers go
through the same pipeline.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_KEYS = re.compile(
    r"(secret|token|signature|password|authorization|api_key|apikey|cookie)", re.I
)
EMAIL = re.compile(
    r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})"
)
URL_CREDENTIALS = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")


def mask_email(text: str) -> str:
    """Keep an email's first letter and its domain: ``j***@example.com``."""
    return EMAIL.sub(r"\1***@\2", text)


def scrub(value: Any) -> Any:
    """Mask emails and URL passwords in strings, recursively."""
    if isinstance(value, str):
        return URL_CREDENTIALS.sub(r"\1***@", mask_email(value))
    if isinstance(value, dict):
        return {key: _scrub_item(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


def _scrub_item(key: Any, value: Any) -> Any:
    if isinstance(key, str) and SECRET_KEYS.search(key) and value not in (None, ""):
        return "[redacted]"
    return scrub(value)


def _scrub_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {key: _scrub_item(key, value) for key, value in event_dict.items()}


def configure(level: str = "info", fmt: str = "json") -> None:
    """Route structlog and the standard library's logging to stderr in one shape."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _scrub_processor,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared[:-2],
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared[:-2],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _scrub_processor,
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


def get_logger(name: str) -> Any:
    """A structlog logger named after the module that logs."""
    return structlog.get_logger(name)
