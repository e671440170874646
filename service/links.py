"""How a session reaches its socket: directly under our uvicorn protocol, or through ASGI.

Both links give the session the same four things: `offer()` a message without awaiting,
`fail()` the connection from outside its task (slow consumer, token expiry), `run()` until the
connection ends, and `close()` it with a code. `DirectLink` is what production runs;
`AsgiLink` serves any other ASGI server (and Starlette's TestClient) with a bounded queue and
a sender task, so the behaviour stays the same when the fast path is not there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any

from .closecodes import CloseCode
from .errors import ConnectionClosing, SlowConsumer
from .messages import Batch, Message
from .protocol import DirectWebSocketProtocol

Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
MessageHandler = Callable[[bytes, bool], None]
ASGI_CLOSE_TIMEOUT = 5.0


class DirectLink:
    """Writes pre-built frames to the transport of a `DirectWebSocketProtocol`."""

    __slots__ = ("proto",)

    def __init__(self, proto: DirectWebSocketProtocol) -> None:
        self.proto = proto

    def offer(self, message: Message | Batch) -> bool:
        return self.proto.write_frame(message.frame, message.count)

    @property
    def queue_depth(self) -> int:
        """Messages waiting for the socket to drain (none while it is writable)."""
        proto = self.proto
        return proto.backlog_count if proto.backlog is not None else 0

    def fail(self, exc: BaseException) -> None:
        self.proto.fail(exc)

    async def run(self, on_message: MessageHandler, receive: Receive, *, queue_limit: int) -> int:
        proto = self.proto
        proto.attach(on_message, backlog_limit=queue_limit)
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                break
            # Arrived before attach() took over: handle it the same way.
            on_message(*_payload(event))
        if proto.failure is not None:
            raise proto.failure
        return int(event.get("code", CloseCode.NO_STATUS))

    async def close(self, code: int, reason: str = "") -> None:
        self.proto.close_now(code, reason)

    async def stop(self) -> None:
        """Nothing to stop: the direct path has no task of its own."""


class AsgiLink:
    """A bounded outbound queue drained by this connection's own sender task."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: collections.deque[Message] = collections.deque()
        self._ready = asyncio.Event()
        self._limit = 1000
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._failure: BaseException | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def offer(self, message: Message | Batch) -> bool:
        if self._closed or self._failure is not None:
            return False
        messages = message.messages if isinstance(message, Batch) else (message,)
        if len(self._queue) + len(messages) > self._limit:
            self.fail(SlowConsumer())
            return False
        self._queue.extend(messages)
        self._ready.set()
        return True

    def fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            if self._reader is not None:
                self._reader.cancel()  # wakes run() out of receive(); it re-raises exc

    async def run(self, on_message: MessageHandler, receive: Receive, *, queue_limit: int) -> int:
        self._limit = queue_limit
        self._reader = asyncio.current_task()
        self._sender = asyncio.create_task(self._drain())
        try:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    self._closed = True
                    return int(event.get("code", CloseCode.NO_STATUS))
                on_message(*_payload(event))
        except asyncio.CancelledError:
            if self._failure is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise self._failure from None

    async def _drain(self) -> None:
        queue, ready = self._queue, self._ready
        while True:
            await ready.wait()
            while queue:
                await self._send(queue.popleft().as_asgi())
            ready.clear()

    async def close(self, code: int, reason: str = "") -> None:
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
        # A peer that stopped reading must not hold the task: bounded like the direct path.
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(
                self._send({"type": "websocket.close", "code": code, "reason": reason}),
                ASGI_CLOSE_TIMEOUT,
            )

    async def stop(self) -> None:
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(BaseException):
                await self._sender


def _payload(event: dict[str, Any]) -> tuple[bytes, bool]:
    text = event.get("text")
    if text is not None:
        return text.encode(), True
    return bytes(event.get("bytes") or b""), False


def link_for(scope: dict[str, Any], send: Send) -> DirectLink | AsgiLink:
    proto = scope.get("extensions", {}).get("ws.direct")
    if isinstance(proto, DirectWebSocketProtocol):
        return DirectLink(proto)
    return AsgiLink(send)


__all__ = ["AsgiLink", "ConnectionClosing", "DirectLink", "link_for"]
