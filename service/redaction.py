"""Secrets never reach a log line: tokens, API keys and passwords are cut out of messages.

A filter on every handler, so it applies whoever wrote the line (uvicorn logs WebSocket paths
with their query string, gunicorn access logs carry full URLs).
"""

from __future__ import annotations

import logging
import re

_SECRET_QUERY = re.compile(
    r"(?i)\b(token|api_key|apikey|access_token|jwt|key|password|secret)=([^&\s\"']+)"
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_URL_PASSWORD = re.compile(r"(?i)\b(rediss?://[^:/@\s]*):([^@\s]+)@")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """Remove tokens, keys and passwords from a log line."""
    if "=" in text or "earer" in text or "://" in text or "eyJ" in text:
        text = _SECRET_QUERY.sub(r"\1=[redacted]", text)
        text = _BEARER.sub(r"\1 [redacted]", text)
        text = _URL_PASSWORD.sub(r"\1:[redacted]@", text)
        text = _JWT.sub("[redacted-jwt]", text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
