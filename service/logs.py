"""Logging for the app, uvicorn and gunicorn: text or one JSON object a line, secrets redacted.

A redaction filter sits on every handler, so a token or key in a query string or header never
reaches a log line, whoever wrote it (uvicorn logs WebSocket paths with their query string).
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

_FIELDS = re.compile(r"\b(conn|client|path|code|reason|channel|status)=(\"[^\"]*\"|'[^']*'|\S+)")

LOGGERS = (
    "service",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn.error",
    "gunicorn.access",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, logger, pid, and key=value fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": message,
            "logger": record.name,
            "pid": record.process or os.getpid(),
        }
        for key, value in _FIELDS.findall(message):
            entry.setdefault(key, value.strip("\"'"))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def make_handler(fmt: str, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
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
