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
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values must never reach a log line (tokens, passwords, SAML XML).
_SECRET_KEY = re.compile(
    r"(token|password|passwd|secret|authorization|saml_?response|samlresponse|assertion|private_?key|cookie|dsn)",
    re.IGNORECASE,
)
# user:password@ inside URLs.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z+]+://)(?P<user>[^:/@\s]*):[^@/\s]+@")


# Secrets recognised by their value, wherever they appear (a key name is not enough:
# aiohttp logs a malformed Authorization header inside its exception message). SCIM
# tokens start with prv_ (provisio_lib.tokens), SSO app secrets with pas_ (provisio sso).
_SECRET_VALUES = (
    (re.compile(r"\b(prv|pas)_[A-Za-z0-9_\-]+"), r"\1_[redacted]"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\"]+"), r"\1\2[redacted]"),
    (re.compile(r"(?i)\b(authorization|cookie|set-cookie|x-api-key)(\s*:\s*)[^\r\n'\"]*"), r"\1\2[redacted]"),
)
# aiohttp's "line too long" errors quote the line read so far: a request line holds the
# filter values (user names, emails), a header line its value.
_LINE_READ = re.compile(r"(when reading:?\s*)(?:bytearray\()?b?(['\"]).*?\2\)?", re.DOTALL)
_QUERY = re.compile(r"\?[^\s'\"]+")


def redact_url(url: str) -> str:
    return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url)


def redact_text(text: str) -> str:
    """``text`` with every secret recognisable by its value replaced by [redacted]."""
    if "://" in text:
        text = redact_url(text)
    for pattern, repl in _SECRET_VALUES:
        text = pattern.sub(repl, text)
    return text


def redact(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if event.get("exc_info"):
        # Rendered here so the traceback text (exception messages quote request data)
        # is redacted like every other value.
        event = structlog.processors.format_exc_info(logger, method, event)
    for key in list(event):
        value = event[key]
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = redact_text(value)
    return event


class RedactingFilter(logging.Filter):
    """For stdlib records (aiohttp.server / aiohttp.access / aiohttp.web, asyncpg, …):
    the message and the traceback are rendered and redacted once, so no handler or
    formatter downstream can print the raw text. aiohttp records also lose quoted request
    lines and query strings (filter values)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_provisio_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in a library's call: keep the record
            message = str(record.msg)
        aiohttp = record.name.startswith("aiohttp")
        record.msg = self._clean(message, aiohttp)
        record.args = None
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = self._clean(text, aiohttp)
            record.exc_info = None
        record._provisio_redacted = True
        return True

    @staticmethod
    def _clean(text: str, aiohttp: bool) -> str:
        if aiohttp:
            text = _QUERY.sub("?[redacted]", _LINE_READ.sub(r"\1[redacted]", text))
        return redact_text(text)


REDACTED_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.client", "aiohttp.internal")


def install_redacting_filter(handler: logging.Handler | None = None) -> None:
    """Add the filter to aiohttp's loggers (whatever handler they reach) and ``handler``."""
    for name in REDACTED_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in lg.filters):
            lg.addFilter(RedactingFilter())
    if handler is not None and not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


def _exc_text(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A stdlib record's traceback, already redacted by RedactingFilter (exc_text)."""
    record = event.get("_record")
    if record is not None and record.exc_text and "exception" not in event:
        event["exception"] = record.exc_text
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
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries (aiohttp, faststream, asyncpg) log through stdlib: send them through
    # the same renderer so one process writes one format.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, _exc_text, *shared],
        )
    )
    install_redacting_filter(handler)
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
