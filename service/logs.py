"""Logging for the app, uvicorn and gunicorn: text or one JSON object a line, secrets redacted.

Structured fields travel as `extra=` on the record (`log.info("connection opened",
extra={"conn": ..., "client": ..., "path": ...})`): JSON lines carry them as keys, text lines
append them as `key=value`, so the two formats say the same thing. uvicorn's access and
WebSocket lines get their client, method, path and status from their arguments; any other
line's `conn=`, `code=`... words become fields too.

A redaction filter sits on every handler (and service.redaction redacts each record as it is
made), so a token or key in a query string or header never reaches a log line, whoever wrote
it; string fields are redacted here as well.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

from .redaction import RedactingFilter, redact

LOGGERS = (
    "service",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn.error",
    "gunicorn.access",
)

FIELDS_IN_MESSAGE = ("conn", "client", "path", "code", "reason", "channel", "status")
"""`name=value` words picked out of a message written without `extra=` (other code's lines)."""

_WORDS = re.compile(r"\b(" + "|".join(FIELDS_IN_MESSAGE) + r")=(\"[^\"]*\"|'[^']*'|[^\s,;]+)")
_UVICORN_WEBSOCKET = '%s - "WebSocket %s"'
# Record attributes that are not fields: logging's own, and uvicorn's ANSI-coloured copy of
# its message.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: its extras, or what its arguments say."""
    fields = {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }
    args = record.args if isinstance(record.args, tuple) else ()
    if record.name == "uvicorn.access" and len(args) == 5:
        client, method, path, _version, status = args
        fields.update(client=client, method=method, path=path, status=status)
    elif isinstance(record.msg, str) and record.msg.startswith(_UVICORN_WEBSOCKET) and args:
        fields.update(client=args[0], path=args[1] if len(args) > 1 else "")
        if len(args) > 2:
            fields["status"] = args[2]
    return {
        key: redact(value) if isinstance(value, str) else value for key, value in fields.items()
    }


def _words(message: str) -> dict[str, str]:
    return {key: value.strip("\"'") for key, value in _WORDS.findall(message)}


def _format_time(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, logger, pid, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        entry: dict[str, Any] = {
            "time": _format_time(record.created),
            "level": record.levelname.lower(),
            "message": message,
            "logger": record.name,
            "pid": record.process or os.getpid(),
        }
        for key, value in _words(message).items():
            entry.setdefault(key, value)
        for key, value in record_fields(record).items():
            entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines for development: the message, then its extra fields as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        }
        if not extras:
            return line
        return line + "".join(f" {key}={_text_value(value)}" for key, value in extras.items())


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = redact(str(value))
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def make_handler(fmt: str, stream: Any = None) -> logging.Handler:
    """A stream handler writing `fmt` (`text` or `json`) lines, redacting each record."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    return handler


def configure_logging(*, level: str = "info", fmt: str = "text") -> None:
    """Route the service's, uvicorn's and gunicorn's loggers to one redacting handler."""
    numeric = 5 if level == "trace" else getattr(logging, level.upper(), logging.INFO)
    handler = make_handler(fmt)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(numeric)
    # The websockets state machine's own chatter ("connection open"...) is debug detail.
    logging.getLogger("service.protocol").setLevel(max(numeric, logging.WARNING))
