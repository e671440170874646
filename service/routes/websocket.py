"""The WebSocket endpoints as plain ASGI apps: echo, broadcast and named channels.

They sit under FastAPI's router but skip its per-connection dependency machinery: a
handshake is the hot path of a reconnect storm. Every connection ends in one
try/except/else/finally: a crash is logged with its traceback and closed 1011 with no details
for the client, and `finally` unregisters exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..channels import BROADCAST
from ..closecodes import CloseCode
from ..errors import ConnectionClosing, HandshakeRefused, NotFound, SlowConsumer
from ..links import link_for
from ..runtime import Runtime
from ..session import Session

log = logging.getLogger("service.connection")

Scope = dict[str, Any]


async def deny(scope: Scope, send: Any, refusal: HandshakeRefused) -> None:
    """Answer the handshake with the refusal's HTTP status and a one-line body."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": refusal.status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": refusal.detail.encode()})
    else:  # the server cannot send a response: plain rejection (403 by convention)
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class WebSocketEndpoint:
    """One of the contract's WebSocket paths; `mode` is echo, broadcast or channel."""

    def __init__(self, runtime: Runtime, *, mode: str) -> None:
        self.runtime = runtime
        self.mode = mode

    def channel_of(self, scope: Scope) -> str | None:
        if self.mode == "echo":
            return None
        if self.mode == "broadcast":
            return BROADCAST
        return str(scope.get("path_params", {}).get("channel", ""))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        runtime = self.runtime
        await receive()  # websocket.connect
        channel = self.channel_of(scope)
        client = _client(scope)
        try:
            principal = runtime.admit(scope, channel, client)
        except HandshakeRefused as refusal:
            runtime.stats.rejected[refusal.reason] += 1
            log.info(
                "handshake refused",
                extra={
                    "status": refusal.status,
                    "reason": refusal.reason,
                    "detail": refusal.detail,
                    "client": client,
                    "path": scope["path"],
                },
            )
            await deny(scope, send, refusal)
            return
        try:
            await self.serve(
                scope, receive, send, channel, client, principal.subprotocol, principal.expires_at
            )
        finally:
            runtime.release(client)

    async def serve(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        channel: str | None,
        client: str,
        subprotocol: str | None,
        expires_at: float | None,
    ) -> None:
        runtime, stats, hub = self.runtime, self.runtime.stats, self.runtime.hub
        link = link_for(scope, send)
        session = Session(
            conn_id=runtime.next_id(),
            client=client,
            path=scope["path"],
            channel=channel,
            link=link,
            hub=hub,
            stats=stats,
            echo_prefix=runtime.echo_prefix,
            max_bytes=runtime.max_message_bytes,
            bucket=runtime.new_bucket(),
        )
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        stats.connections_active += 1
        stats.connections_total += 1
        if log.isEnabledFor(logging.INFO):  # the fields cost more than the check
            log.info(
                "connection opened",
                extra={"conn": session.conn_id, "client": client, "path": session.path},
            )
        expiry = None
        if expires_at is not None:
            delay = max(0.0, expires_at - time.time())
            expiry = asyncio.get_running_loop().call_later(delay, session.expire)
        code: int = CloseCode.ABNORMAL
        reason = ""
        try:
            if channel is not None:
                await hub.join(channel, session)
            code = await link.run(session.on_message, receive, queue_limit=runtime.send_queue)
        except ConnectionClosing as exc:
            code, reason = exc.code, str(exc)
            if isinstance(exc, SlowConsumer):
                stats.slow_consumers += 1
            await link.close(code, reason)
        except Exception:
            log.exception("connection failed", extra={"conn": session.conn_id})
            code = CloseCode.INTERNAL_ERROR
            await link.close(code)
        finally:
            if expiry is not None:
                expiry.cancel()
            if channel is not None:
                await hub.leave(channel, session)
            await link.stop()
            stats.connections_active -= 1
            stats.closes[code] += 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "connection closed",
                    extra={
                        "conn": session.conn_id,
                        "code": int(code),
                        "reason": reason,
                        "duration": round(time.monotonic() - session.opened_at, 3),
                    },
                )


class UnknownWebSocketPath:
    """A handshake to any other path: 404 with a body, not Starlette's bare 403."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        self.runtime.stats.rejected["not_found"] += 1
        await deny(scope, send, NotFound(f"no WebSocket endpoint at {scope['path'][:100]!r}"))


CHANNEL_PREFIX = "/ws/channels/"


class WebSocketDispatch:
    """Find the endpoint of a WebSocket path with two string operations instead of a regex
    walk, for the app to call before FastAPI's middleware stack (see app.py)."""

    def __init__(self, runtime: Runtime) -> None:
        self.echo = WebSocketEndpoint(runtime, mode="echo")
        self.broadcast = WebSocketEndpoint(runtime, mode="broadcast")
        self.channel = WebSocketEndpoint(runtime, mode="channel")
        self.unknown = UnknownWebSocketPath(runtime)

    def match(self, scope: Scope) -> WebSocketEndpoint | None:
        path = scope["path"]
        if path == "/ws":
            return self.echo
        if path == "/ws/broadcast":
            return self.broadcast
        if path.startswith(CHANNEL_PREFIX) and "/" not in path[len(CHANNEL_PREFIX) :]:
            scope["path_params"] = {"channel": path[len(CHANNEL_PREFIX) :]}
            return self.channel
        return None
