"""Plain HTTP: the seed's banner, health and readiness, the publish API and the demo page."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.requests import ClientDisconnect

from ..channels import check_name
from ..errors import ChannelNotPermitted, PayloadTooLarge, Unavailable
from ..messages import Message
from ..runtime import Runtime

BANNER = "WebSocket Server is running"


def http_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()
    stats = runtime.stats

    @router.get("/", response_class=PlainTextResponse, summary="The seed's banner")
    async def index() -> str:
        return BANNER

    @router.get("/healthz", summary="Liveness of this worker: cheap, no auth")
    async def healthz() -> dict[str, object]:
        return {
            "status": "ok",
            "version": runtime.version,
            "pid": runtime.pid,
            "connections": stats.connections_active,
            "broker": runtime.broker.state.value,
            "draining": runtime.draining,
        }

    @router.get("/readyz", summary="Readiness: broker connected and not draining")
    async def readyz() -> JSONResponse:
        reasons = runtime.not_ready()
        body = {
            "status": "not ready" if reasons else "ready",
            "reasons": reasons,
            "broker": runtime.broker.state.value,
            "pid": runtime.pid,
        }
        return JSONResponse(body, status_code=503 if reasons else 200)

    @router.post(
        "/api/channels/{channel}/messages",
        status_code=202,
        summary="Publish the body to a channel: text/* as text, anything else as binary",
    )
    async def publish(channel: str, request: Request) -> JSONResponse:
        check_name(channel)
        headers = {k: v for k, v in request.headers.items()}
        principal = runtime.auth.authenticate(
            headers=headers, query=dict(request.query_params), subprotocols=()
        )
        if not principal.may_join(channel):
            raise ChannelNotPermitted(f"token does not permit channel {channel!r}")
        if runtime.draining:
            raise Unavailable("server is draining, retry shortly")
        limit = runtime.max_message_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes, limit {limit}")
        body = bytearray()
        try:
            async for chunk in request.stream():  # bounded: never holds more than the limit
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(f"body over {limit} bytes")
        except ClientDisconnect:
            # Left mid-body: nothing to publish and no one to answer. Not an error to log
            # with a traceback (any client could flood the log that way).
            return JSONResponse({"error": "client_disconnected"}, status_code=400)
        content_type = request.headers.get("content-type", "")
        is_text = content_type.startswith("text/")
        if is_text:
            try:
                bytes(body).decode()
            except UnicodeDecodeError:
                is_text = False  # not valid text: deliver the bytes untouched, as binary
        runtime.hub.publish(channel, Message(bytes(body), text=is_text))
        return JSONResponse(
            {
                "status": "accepted",
                "channel": channel,
                "bytes": len(body),
                "kind": "text" if is_text else "binary",
                "local_subscribers": runtime.hub.subscribers(channel),
            },
            status_code=202,
        )

    @router.get("/demo", response_class=HTMLResponse, summary="The browser demo page")
    async def demo() -> str:
        return resources.files("service").joinpath("static/demo.html").read_text()

    return router
