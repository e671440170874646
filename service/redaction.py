"""Secrets never reach a log line: tokens, API keys and passwords are cut out of messages.

A filter on every handler, so it applies whoever wrote the line (uvicorn logs WebSocket paths
with their query string, gunicorn access logs carry full URLs, uvicorn's trace level logs
raw headers). Query parameters are matched by their decoded name, so `?%74oken=` is caught
like `?token=`; anything shaped like a JWT is cut wherever it appears.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
SECRET_NAMES = frozenset(
    {
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "jwt",
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "key",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "authorization",
    }
)

# name=value in a query string or a key=value log field; the name is checked once decoded.
# A value runs to whitespace, `&` or `#`; a `"` ends it only where a quoted line closes.
_PAIR = re.compile(
    r"(?P<name>[^\s=&?;\"'<>(),{}\[\]]+)=(?P<value>(?!\[redacted\])(?:[^&#\s\"]|\"(?=\S))*)"
)
# Authorization schemes, and the subprotocol pair `bearer, <token>`.
_BEARER = re.compile(r"(?i)\b(bearer)([\s,]+)(?!\[redacted)[^\s\"',;)\]}]+")
_BASIC = re.compile(r"(?i)\b(basic)(\s+)[A-Za-z0-9+/=]{8,}")
# Header values as written in text (`X-API-Key: v`) or in a repr (`(b'x-api-key', b'v')`).
_HEADER = re.compile(
    r"(?i)\b(x-api-key|authorization|proxy-authorization|cookie)"
    r"(\s*:\s*|['\"]\s*,\s*b?['\"])(?!\[redacted)[^'\"\r\n]+"
)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s]*):([^@\s/]+)@")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_MARKERS = ("=", "bearer", "basic", "://", "eyj", "key", "authorization", "cookie")


def _pair(match: re.Match[str]) -> str:
    name, value = match.group("name", "value")
    if not value:
        return match.group(0)
    if unquote_plus(name).strip().lower().lstrip("-_") in SECRET_NAMES:
        return f"{name}={REDACTED}"
    # `path=/ws?token=...`: the value holds a query string of its own.
    return f"{name}={_PAIR.sub(_pair, value)}" if "=" in value else match.group(0)


def redact(text: str) -> str:
    """Remove tokens, keys and passwords from a log line."""
    lowered = text.lower()
    if not any(marker in lowered for marker in _MARKERS):
        return text
    text = _PAIR.sub(_pair, text)
    text = _HEADER.sub(rf"\1\2{REDACTED}", text)
    text = _BEARER.sub(rf"\1\2{REDACTED}", text)
    text = _BASIC.sub(rf"\1\2{REDACTED}", text)
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = _JWT.sub(REDACTED, text)
    return text


_EXCEPTIONS = logging.Formatter()


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place: its arguments, its message, and any traceback."""
    if isinstance(record.args, tuple) and record.args:
        # Argument by argument first, so formatters that unpack args (uvicorn's access
        # formatter) keep working.
        record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        return  # a broken format string: logging reports it as usual
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(_EXCEPTIONS.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """For handlers: redacts each record they are given."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install_record_factory() -> None:
    """Redact every record when it is made, whichever handler ends up writing it.

    A handler filter only sees the handlers we configured; uvicorn-worker hands uvicorn's
    loggers gunicorn's own handlers, and anything else may add one. Installing again (a
    gunicorn reload re-imports this module) replaces the previous copy instead of stacking.
    """
    current = logging.getLogRecordFactory()
    base = getattr(current, "redaction_base", current)

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        redact_record(record)
        return record

    factory.redaction_base = base  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# On import: logs.py imports this module in every process that logs (the gunicorn master,
# before it forks workers, and `ws-service serve`).
install_record_factory()
