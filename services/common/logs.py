"""JSON logs that an on-call engineer can join to traces, and that leak nothing.

Every line carries the current trace id, span id and Stripe event id (when there is one), so a
log line leads to the whole trace of the webhook that caused it. A redacting filter masks
Stripe secrets and e-mail addresses in every message and argument: customer e-mails and keys
must never reach a log aggregator, whatever a developer writes in a log call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

#: The Stripe event being handled in this task, for log correlation.
current_event_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_event_id", default=None)

_SECRET = re.compile(r"\b(whsec|sk_live|sk_test|rk_live|rk_test|sk|rk)_[A-Za-z0-9_]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")


def redact(text: str) -> str:
    """Mask secrets, e-mail addresses and URL passwords in free text."""
    text = _SECRET.sub(lambda m: m.group(1) + "_[redacted]", text)
    text = _EMAIL.sub("[email]", text)
    return _URL_PASSWORD.sub(r"\1[redacted]@", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, *, service: str | None = None) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        event_id = current_event_id.get()
        if event_id:
            entry["event_id"] = event_id
        service = getattr(record, "service", None) or current_service.get() or self.service
        if service:
            entry["service"] = service
        for key in ("subject", "outcome", "attempt", "count"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


#: The deployable (or part of `syncmesh up`) doing the work in this task: each log line names it.
current_service: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_service", default=None)


#: The least severe level any line is shown at. The command-line tools raise it to WARNING
#: (unless `--verbose`) so their human output is not interleaved with JSON log lines.
_floor = logging.NOTSET


def set_level_floor(level: str) -> None:
    """Show nothing below `level`, whatever `setup_logging` is later asked for."""
    global _floor
    _floor = logging.getLevelNamesMapping()[level]


def setup_logging(level: str = "INFO", *, stream: Any = None, service: str | None = None) -> None:
    """Route every logger through one JSON handler on stderr (idempotent). `service` names the
    process in every line that no task has named more precisely (`current_service`)."""
    level = logging.getLevelName(max(logging.getLevelNamesMapping()[level], _floor))
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_syncmesh", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service=service))
    handler._syncmesh = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # Third-party chatter that would drown the mesh's own lines at INFO.
    for noisy in ("aiohttp.access", "nats", "asyncio", "stripe", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
