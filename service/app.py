"""The composition point: Settings in, a FastAPI app with its Runtime out."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import WebSocketRoute

from . import __version__
from .auth import Authenticator
from .errors import HandshakeRefused
from .metrics import metrics_router, start_sync
from .pubsub import broker_from_url
from .routes.http import http_router
from .routes.websocket import WebSocketDispatch
from .runtime import Runtime
from .settings import Settings, get_settings

log = logging.getLogger("service.app")


def build_runtime(settings: Settings) -> Runtime:
    return Runtime(
        broker=broker_from_url(
            settings.broker_url, prefix=settings.redis_prefix, outbox_limit=10000
        ),
        authenticator=Authenticator(
            modes=settings.auth_mode,
            api_keys=[k.get_secret_value() for k in settings.api_keys],
            jwt_secret=settings.jwt_secret.get_secret_value(),
            jwt_public_key_file=settings.jwt_public_key_file,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        ),
        allowed_origins=settings.allowed_origins,
        max_connections=settings.max_connections,
        max_connections_per_ip=settings.max_connections_per_ip,
        max_message_bytes=settings.max_message_bytes,
        rate_limit=settings.rate_limit,
        rate_burst=settings.rate_burst,
        send_queue=settings.send_queue,
        echo_prefix=settings.echo_prefix,
        drain_spread=settings.drain_spread,
        version=__version__,
    )


class WebSocketService(FastAPI):
    """FastAPI, with its WebSocket endpoints reached before the middleware stack.

    Each middleware layer keeps a coroutine frame alive for a connection's whole life: about
    5 KiB per idle WebSocket, and time on every handshake. Our endpoints catch their own
    errors, so they need none of it; anything else goes through FastAPI as usual.
    """

    websocket_dispatch: WebSocketDispatch | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and self.websocket_dispatch is not None:
            endpoint = self.websocket_dispatch.match(scope)
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; tests pass their own Settings, production reads the environment."""
    settings = settings or get_settings()
    runtime = build_runtime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Runtime]]:
        if not settings.auth_enabled:
            log.warning(
                "authentication is off (WS_AUTH_MODE=none): any client may connect and publish"
            )
        await runtime.start()
        sync = start_sync(runtime)
        log.info(
            "worker ready pid=%d broker=%s auth=%s",
            runtime.pid,
            runtime.broker.name,
            ",".join(settings.auth_mode) or "none",
        )
        try:
            # Lifespan state reaches every connection's protocol (scope["state"] and
            # app_state): shutdown marks the worker draining through it.
            yield {"runtime": runtime}
        finally:
            await sync.stop()
            await runtime.stop()

    # The interactive API docs load Swagger UI from a CDN and describe the attack surface:
    # development only.
    dev = settings.env != "production"
    app = WebSocketService(
        title="ws-service",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if dev else None,
        redoc_url="/redoc" if dev else None,
        openapi_url="/openapi.json" if dev else None,
    )
    app.state.runtime = runtime
    app.state.settings = settings

    @app.exception_handler(HandshakeRefused)
    async def refused(request: Request, exc: HandshakeRefused) -> JSONResponse:
        runtime.stats.rejected[exc.reason] += 1
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status)

    app.include_router(http_router(runtime))
    if settings.metrics:
        app.include_router(metrics_router(runtime))
    dispatch = app.websocket_dispatch = WebSocketDispatch(runtime)
    # The same endpoints as ordinary routes: reached when the fast match does not apply
    # (a root_path, say), and listed like any other route.
    app.router.routes.extend(
        [
            WebSocketRoute("/ws", dispatch.echo),
            WebSocketRoute("/ws/broadcast", dispatch.broadcast),
            WebSocketRoute("/ws/channels/{channel}", dispatch.channel),
            WebSocketRoute("/{path:path}", dispatch.unknown),
        ]
    )
    app.mount("/static", StaticFiles(packages=[("service", "static")]), name="static")
    return app


def __getattr__(name: str) -> FastAPI:
    # `service.app:app` is built on first access, so importing create_app never reads the
    # environment (tests build apps from their own Settings).
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
