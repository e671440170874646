"""gunicorn's logger class, routed through ws-service's one redacting handler.

gunicorn's stock logger puts its own stream handler on `gunicorn.error` and, with a
`logconfig_dict`, lets lines propagate to the root handler as well: every line came out twice,
once unredacted in gunicorn's format. uvicorn-worker copies `gunicorn.error`'s handlers onto
`uvicorn.error` (and `gunicorn.access`'s onto `uvicorn.access`), so the handler set here is the
one that gunicorn's, uvicorn's and the app's lines all go through: text or JSON, redacted.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn import glogging

from .logs import configure_logging


class Logger(glogging.Logger):
    """gunicorn's logger with the root handler of `service.logs` on its two loggers."""

    fmt = "text"
    """`text` or `json`; set by `logger_class()` from the gunicorn config."""
    level = "info"
    """WS_LOG_LEVEL, which may be `trace` (uvicorn's), a level gunicorn's loglevel lacks."""

    def setup(self, cfg: Any) -> None:
        # gunicorn calls this at start and again on every SIGHUP with the re-read config,
        # whose logger_class carries the format in force now.
        self.cfg = cfg
        self._access_log_enabled = self._compute_access_log_enabled()
        chosen = cfg.logger_class
        fmt = getattr(chosen, "fmt", self.fmt)
        level = getattr(chosen, "level", cfg.loglevel.lower())
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        configure_logging(level=level, fmt=fmt)
        handlers = list(logging.getLogger().handlers)
        for log in (self.error_log, self.access_log):
            log.handlers = handlers
            log.setLevel(self.loglevel)
            log.propagate = False  # the root has the same handler: once is enough


def logger_class(*, fmt: str, level: str) -> type[Logger]:
    """A Logger subclass writing `fmt` lines at `level`, for gunicorn's `logger_class`."""
    return type("Logger", (Logger,), {"fmt": fmt, "level": level, "__module__": __name__})
