"""structlog set-up, once per process.

JSON lines when stdout is not a terminal (containers), coloured console output on a
TTY. ``correlation_id``, ``tenant`` and ``event_id`` are bound per request or message
through contextvars. A redaction processor drops secrets and SAML payloads, whatever
the call site passes.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# Keys whose values must never reach a log line (tokens, passwords, SAML XML).
_SECRET_KEY = re.compile(
    r"(token|password|passwd|secret|authorization|saml_?response|samlresponse|assertion|private_?key|cookie|dsn)",
    re.IGNORECASE,
)
# user:password@ inside URLs.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z+]+://)(?P<user>[^:/@\s]*):[^@/\s]+@")


def redact_url(url: str) -> str:
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url)


def redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key == "event":
            continue
        if _SECRET_KEY.search(key):
            event[key] = "[redacted]"
        elif isinstance(event[key], str) and "://" in event[key]:
            event[key] = redact_url(event[key])
    return event


def configure_logging(level: str = "INFO", fmt: str = "auto", service: str | None = None) -> None:
    """Configure structlog and the stdlib root logger for this process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if service:
        shared.insert(0, _bind_service(service))
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries (aiohttp, faststream, asyncpg) log through stdlib: send them through
    # the same renderer so one process writes one format.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _bind_service(service: str) -> Any:
    def add_service(_l: Any, _m: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        return event

    return add_service


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
