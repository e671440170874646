"""gunicorn settings, all from ws-service's Settings (`config/gunicorn.conf.py` loads this).

gunicorn re-reads this file in the master on SIGHUP, so everything here is idempotent.
"""

from __future__ import annotations

import sys

from service import metrics
from service.errors import ConfigError
from service.logs import configure_logging
from service.settings import get_settings

try:
    _settings = get_settings()
except ConfigError as _exc:
    # One line per problem, then exit: never a half-configured master.
    for _line in _exc.lines:
        print(f"ws-service: {_line}", file=sys.stderr)
    raise SystemExit(2) from None

configure_logging(level=_settings.log_level, fmt=_settings.log_format)

# Where and how many.
bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "service.worker.Worker"

# Stop and reload: uvicorn's own drain ends first (see service/serve.py), gunicorn kills at
# graceful_timeout, supervisor/systemd wait longer still. Must be an int for gunicorn.
graceful_timeout = int(_settings.graceful_timeout)
# Heartbeat timeout for a worker stuck in a loop; WebSockets live much longer, that is fine.
timeout = 30
# A recycled worker drops every WebSocket it holds: never recycle by request count.
max_requests = 0

# Trust X-Forwarded-For / -Proto only from these proxies (the per-address limit uses them).
forwarded_allow_ips = _settings.forwarded_allow_ips

if _settings.ssl_certfile is not None:
    certfile = str(_settings.ssl_certfile)
    keyfile = str(_settings.ssl_keyfile)

# Logs go to stderr (supervisor/journald collect them); our handlers format and redact.
errorlog = "-"
accesslog = None
loglevel = _settings.log_level if _settings.log_level != "trace" else "debug"
logconfig_dict = {"version": 1, "disable_existing_loggers": False, "root": {}}

# gunicorn 25+ opens a control socket under $HOME by default; two instances of one user would
# share it and ProtectHome blocks it. We do not use it.
control_socket_disable = True


def on_starting(server: object) -> None:
    metrics.prepare_multiprocess()


def child_exit(server: object, worker: object) -> None:
    metrics.mark_dead(worker.pid)  # type: ignore[attr-defined]
