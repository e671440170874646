"""gunicorn settings, all from ws-service's Settings (`config/gunicorn.conf.py` loads this).

A composition point: it reads Settings once per load and gives gunicorn plain values. gunicorn
re-reads its config in the master on SIGHUP, so loading this module twice must be harmless:
it only assigns names and defines hooks (the one side effect, the metrics directory, happens
in `on_starting`, which gunicorn runs once per master).

The stop and reload chain, shortest first (each step must end before the next one kills it):
WS_DRAIN_SPREAD (closes spread out) < uvicorn's graceful shutdown (WS_GRACEFUL_TIMEOUT - 2)
< gunicorn graceful_timeout (WS_GRACEFUL_TIMEOUT) < supervisor stopwaitsecs / systemd
TimeoutStopSec (deploy/). Keepalive: WS_PING_INTERVAL < Nginx proxy_read_timeout.
"""

from __future__ import annotations

import sys
from typing import Any

from service import metrics
from service.errors import ConfigError
from service.gunicorn_logging import logger_class as _logger_class
from service.settings import get_settings

try:
    _settings = get_settings()
except ConfigError as _exc:
    # One line per problem, then exit 2: never a half-configured master (the systemd unit
    # does not restart on exit status 2).
    for _line in _exc.lines:
        print(f"ws-service: {_line}", file=sys.stderr)
    raise SystemExit(2) from None

# --- Where and how many -------------------------------------------------------------------

# WS_HOST:WS_PORT (PORT from a Procfile runner works too). Behind Nginx keep it on loopback.
bind = [f"{_settings.host}:{_settings.port}"]
# WS_WORKERS: one asyncio process per core is the ceiling; each holds its own WebSockets and
# they meet through the broker (redis://) only. See docs/deploy.md, "Workers per core".
workers = _settings.workers
# uvicorn-worker's UvicornWorker (uvicorn's own is deprecated), subclassed to pass our
# WebSocket options and to let in-flight handshakes finish before a worker stops.
worker_class = "service.worker.Worker"
# Handshakes that arrive while workers are replaced on SIGHUP wait here in the kernel until a
# new worker accepts them, instead of being refused. The kernel caps it at net.core.somaxconn.
backlog = 2048
# Import the app in each worker, not in the master: a SIGHUP then serves newly installed code,
# and Prometheus' multiprocess directory is set up (on_starting) before any metric exists.
preload_app = False

# --- Stop, reload, liveness ---------------------------------------------------------------

# Seconds a stopping worker gets to close its WebSockets (1012, spread over WS_DRAIN_SPREAD)
# before gunicorn kills it; uvicorn's own drain ends 2 s earlier (service/serve.py). An int:
# gunicorn rejects a float here.
graceful_timeout = int(_settings.graceful_timeout)
# A worker whose event loop has not reported for this long is stuck: gunicorn kills and
# replaces it. Open WebSockets do not count against it, only a blocked loop does.
timeout = 30
# A recycled worker drops every WebSocket it holds: never recycle by request count.
max_requests = 0
max_requests_jitter = 0
# Idle keep-alive seconds for plain HTTP (health checks, publish API); WebSockets have pings.
keepalive = 5

# --- Proxy and TLS ------------------------------------------------------------------------

# Trust X-Forwarded-For / -Proto only from these addresses (Nginx). The per-address limit and
# the logs then see the real client; from anyone else the headers are ignored.
forwarded_allow_ips = _settings.forwarded_allow_ips

if _settings.ssl_certfile is not None:
    # wss:// served by gunicorn itself, for deployments without a TLS proxy.
    certfile = str(_settings.ssl_certfile)
    keyfile = str(_settings.ssl_keyfile)

# --- Logs ---------------------------------------------------------------------------------

# stderr, collected by supervisor (rotated there) or journald. One handler for gunicorn's,
# uvicorn's and the app's lines: text or JSON per WS_LOG_FORMAT, secrets redacted.
errorlog = "-"
logger_class = _logger_class(fmt=_settings.log_format, level=_settings.log_level)
loglevel = _settings.log_level if _settings.log_level != "trace" else "debug"
# uvicorn writes the access lines (through the same handler, query tokens redacted);
# gunicorn's own access log would never see an ASGI request.
accesslog = None
# Keep gunicorn's hands off stdout/stderr: supervisor and journald already capture them.
capture_output = False
# Shown by ps and top as "gunicorn: master [ws]" (with setproctitle installed).
proc_name = "ws"

# --- Control socket -----------------------------------------------------------------------

# gunicorn 25+ opens a control socket under $XDG_RUNTIME_DIR or ~/.gunicorn: two instances
# of one user would share it and systemd's ProtectHome blocks it. Signals do all we need.
control_socket_disable = True


# --- Hooks: one log line per worker life event, metrics bookkeeping -----------------------


def on_starting(server: Any) -> None:
    """Master, once: a clean metrics directory before any worker exists."""
    # `gunicorn -w N` overrides WS_WORKERS after Settings checked it: check again here.
    if server.cfg.workers > 1 and _settings.broker_is_memory:
        print(
            f"ws-service: WS_BROKER_URL: memory:// works in one process only but gunicorn "
            f"runs {server.cfg.workers} workers; use redis://host:port/db",
            file=sys.stderr,
        )
        raise SystemExit(2)
    metrics.prepare_multiprocess()


def when_ready(server: Any) -> None:
    server.log.info(
        "master ready pid=%d workers=%d graceful_timeout=%ds", server.pid, workers, graceful_timeout
    )


def on_reload(server: Any) -> None:
    server.log.info("reload: starting %d new worker(s), then draining the old ones", workers)


def post_worker_init(worker: Any) -> None:
    worker.log.info("worker booted pid=%d", worker.pid)


def worker_exit(server: Any, worker: Any) -> None:
    # (uvicorn-worker resets gunicorn's worker signal handlers, so worker_int and
    # worker_abort never run; the master logs a heartbeat timeout itself.)
    worker.log.info("worker exiting pid=%d", worker.pid)


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker process ended (whatever the cause)."""
    metrics.mark_dead(worker.pid)
    server.log.info("worker exited pid=%d", worker.pid)
