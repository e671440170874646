"""Settings -> uvicorn options, shared by `ws-service serve` and the gunicorn worker."""

from __future__ import annotations

from typing import Any

from .protocol import DirectWebSocketProtocol
from .settings import Settings
from .upgrade import UpgradeProtocol

UVICORN_SHUTDOWN_MARGIN = 2
"""uvicorn's drain ends this many seconds before gunicorn's graceful_timeout kills the worker."""


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """WebSocket and proxy options that `uvicorn.Config` takes, from one Settings."""
    return {
        "loop": "auto",
        # uvicorn's own HTTP protocol ("auto") behind a shortcut for WebSocket handshakes.
        "http": UpgradeProtocol,
        "ws": DirectWebSocketProtocol,
        "ws_max_size": settings.max_message_bytes,
        "ws_ping_interval": settings.ping_interval or None,
        "ws_ping_timeout": settings.ping_timeout or None,
        # permessage-deflate costs tens of KiB per connection and CPU per message; the
        # pre-built shared frames of fan-out need it off.
        "ws_per_message_deflate": False,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "timeout_graceful_shutdown": max(1, settings.graceful_timeout - UVICORN_SHUTDOWN_MARGIN),
        "server_header": False,
        "lifespan": "on",
    }


def serve(settings: Settings) -> None:
    """Run one uvicorn process as configured (what `make run` does).

    As `uvicorn.run`, with the draining server the gunicorn worker uses too.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE  # what uvicorn.run exits with

    from .draining import DrainingServer

    options = uvicorn_options(settings)
    if settings.tls_enabled:
        options["ssl_certfile"] = str(settings.ssl_certfile)
        options["ssl_keyfile"] = str(settings.ssl_keyfile)
    config = uvicorn.Config(
        "service.app:app",
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=True,
        **options,
    )
    server = DrainingServer(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
