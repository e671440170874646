"""uvicorn's websockets-sansio protocol with a direct path for the hub.

Stock ASGI costs a queue hand-off, a task switch and a frame encode per message and per
recipient. This subclass lets a connection that asks for it (the `ws.direct` scope extension)
take its messages as a synchronous callback, Node-style, and write pre-built frames straight
to the transport. Everything else (handshake, pings, close handshake, limits) stays uvicorn's.

Writes never wait: while the kernel buffer is full (`pause_writing`) frames wait in a bounded
backlog; one frame past the bound closes the connection 1008 "slow consumer". A close to a
peer that does not read cannot finish, so every close we start is aborted after a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State

from .closecodes import CloseCode
from .errors import ConnectionClosing, SlowConsumer

EXTENSION = "ws.direct"
_QUIET = logging.getLogger("service.protocol")
_UVICORN_QUIET = logging.getLogger("uvicorn.error.websocket")
_UVICORN_QUIET.setLevel(logging.WARNING)
CLOSE_DEADLINE = 5.0
"""Seconds a started close may take before the socket is aborted (the peer is not reading)."""

MessageHandler = Callable[[bytes, bool], None]


class Inbox:
    """The three asyncio.Queue methods uvicorn uses, without the Queue's four deques and Event.

    On the direct path the app task only ever waits here for the disconnect event, so a full
    asyncio.Queue per idle connection (about 2.5 KiB) buys nothing.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets-sansio plus `attach()`, `write_frame()` and `close_now()` for the hub."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # websockets logs "connection open" and uvicorn '"WebSocket /ws" [accepted]' at INFO
        # for every client: our own "connection opened/closed/refused" lines say more, once.
        # Errors still reach uvicorn.error's handlers through the child logger.
        self.conn.logger = _QUIET
        self.logger = _UVICORN_QUIET
        self.queue = Inbox()  # type: ignore[assignment]
        self.on_message: MessageHandler | None = None
        self.backlog: collections.deque[bytes] | None = None  # None while the socket is writable
        self.backlog_limit = 1000
        self.backlog_count = 0  # messages in the backlog (a batch frame holds several)
        self.failure: BaseException | None = None
        self.cork: list[bytes] | None = None
        self.abort_timer: Any = None

    # Handshake

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the upgrade request was invalid
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            # The parsed handshake (two header maps) is dead weight for the connection's life.
            self.request = self.response = None  # type: ignore[assignment]
            self._restart_frame_parser()
            return
        # uvicorn logs "returned without completing handshake" after every denial response:
        # noise any client could trigger at will. A denial is a complete answer.
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True

    def _restart_frame_parser(self) -> None:
        """Swap websockets' handshake parser for a plain frame parser.

        ServerProtocol.parse() keeps the parsed request in its generator frame for the whole
        connection (about 2.5 KiB). A fresh Protocol.parse() at the same point, the top of the
        frame loop with nothing buffered, parses identically without it.
        """
        conn = self.conn
        if conn.reader.buffer or conn.state is not State.OPEN:
            return  # a client that pipelined frames: leave its parser be
        old, conn.parser = conn.parser, WsProtocol.parse(conn)
        next(conn.parser)
        old.close()

    # Direct path

    def attach(self, on_message: MessageHandler, *, backlog_limit: int) -> None:
        """Deliver inbound messages to `on_message(data, is_text)` from now on."""
        self.backlog_limit = backlog_limit
        self.on_message = on_message

    def write_frame(self, frame: bytes, count: int = 1) -> bool:
        """Queue pre-built frames (`count` messages); False when closing. Never waits."""
        if self.close_sent or self.disconnected:
            return False
        cork = self.cork
        if cork is not None:
            cork.append(frame)
            return True
        return self._write(frame, count)

    def _write(self, frame: bytes, count: int = 1) -> bool:
        backlog = self.backlog
        if backlog is None:
            self.transport.write(frame)
            return True
        self.backlog_count += count
        if self.backlog_count > self.backlog_limit:
            self.fail(SlowConsumer())
            return False
        backlog.append(frame)
        return True

    # Corking: replies produced while one chunk of input is handled leave in one write.
    # A client with ten messages in flight gets ten echoes for one send() instead of ten;
    # anything else we write in between (pong, close) flushes the cork first to keep order.

    def data_received(self, data: bytes) -> None:
        if self.on_message is None:
            super().data_received(data)
            return
        self.cork = []
        try:
            super().data_received(data)
        finally:
            self.uncork()

    def uncork(self) -> None:
        cork, self.cork = self.cork, None
        if not cork or self.close_sent or self.disconnected:
            return
        if self.backlog is None:
            self.transport.write(cork[0] if len(cork) == 1 else b"".join(cork))
            return
        for frame in cork:
            if not self._write(frame):
                return

    def handle_ping(self) -> None:
        self.uncork()
        super().handle_ping()

    def handle_close(self, event: Any) -> None:
        self.uncork()
        super().handle_close(event)

    def handle_parser_exception(self) -> None:
        self.uncork()
        super().handle_parser_exception()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.backlog is None:
            self.backlog = collections.deque()
            self.backlog_count = 0

    def resume_writing(self) -> None:
        super().resume_writing()
        backlog, self.backlog = self.backlog, None
        if backlog and not self.close_sent:
            self.transport.write(b"".join(backlog))

    def send_receive_event_to_app(self) -> None:
        handler = self.on_message
        if handler is None:
            super().send_receive_event_to_app()
            return
        frames = self.frames
        data = bytes(frames[0]) if len(frames) == 1 else b"".join(frames)
        self.frames = []
        if self.close_sent:
            return
        is_text = self.curr_msg_data_type == "text"
        try:
            if is_text:
                data.decode()  # the client must send valid UTF-8 (RFC 6455 8.1)
            handler(data, is_text)
        except UnicodeDecodeError:
            self.close_now(1007, "invalid utf-8")
        except BaseException as exc:  # handed to the connection's task, which logs it
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """End the connection because of `exc`; the connection's task re-raises it."""
        if self.failure is None:
            self.failure = exc
        if isinstance(exc, ConnectionClosing):
            self.close_now(exc.code, str(exc))
        else:
            self.close_now(CloseCode.INTERNAL_ERROR, "")

    def close_now(self, code: int, reason: str = "") -> None:
        """Send a close frame now, end the app's receive loop, and abort at the deadline."""
        if self.close_sent or self.disconnected or self.transport.is_closing():
            return
        self.uncork()  # replies made before the failure still go first
        self.backlog = None  # what the peer has not taken yet is dropped with it
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()  # to read the peer's closing reply
        # As uvicorn's close_timer: the socket closes when the peer answers (handle_close),
        # not when the app returns; closing with unread input would send a RST that can
        # destroy our close frame. A peer that never answers is aborted at the deadline.
        self.close_timer = self.loop.call_later(CLOSE_DEADLINE, self.transport.abort)

    # Closes that uvicorn starts itself must not hang on a peer that stopped reading either.

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.INTERNAL_ERROR})
        self._abort_later()

    def shutdown(self) -> None:
        """The server is stopping: readiness fails at once, closes (1012) spread out.

        uvicorn calls this for every connection at the same instant; thousands of clients
        closed together would reconnect together. Each close waits a random share of
        `drain_spread` seconds (uvicorn keeps waiting for open connections meanwhile).
        """
        runtime = self.app_state.get("runtime")
        if runtime is not None:
            runtime.draining = True
        spread = getattr(runtime, "drain_spread", 0.0)
        if spread > 0 and self.handshake_complete and not self.close_sent:
            self.loop.call_later(random.uniform(0, spread), self._shutdown_now)
        else:
            self._shutdown_now()

    def _shutdown_now(self) -> None:
        if self.disconnected:
            return
        super().shutdown()
        self._abort_later()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        self.backlog = None
        super().connection_lost(exc)

    def _abort_later(self) -> None:
        if self.abort_timer is None and not self.disconnected:
            self.abort_timer = self.loop.call_later(CLOSE_DEADLINE, self.transport.abort)
