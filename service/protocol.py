"""uvicorn's websockets-sansio protocol with a direct path for the hub.

Stock ASGI costs a queue hand-off, a task switch and a frame encode per message and per
recipient. This subclass lets a connection that asks for it (the `ws.direct` scope extension)
take its messages as a synchronous callback, Node-style, and write pre-built frames straight
to the transport. Everything else (pings, close handshake, limits) stays uvicorn's, and so do
the handshake's checks: websockets' own, with the 101 written as bytes (upgrade.py has the
short path for a plain handshake).

Writes never wait: while the kernel buffer is full (`pause_writing`) frames wait in a bounded
backlog; one frame past the bound closes the connection 1008 "slow consumer". A close to a
peer that does not read cannot finish, so every close we start is aborted after a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets import __version__ as websockets_version
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol

from .closecodes import CloseCode
from .errors import ConnectionClosing, SlowConsumer

if TYPE_CHECKING:
    from .upgrade import Handshake

EXTENSION = "ws.direct"
_QUIET = logging.getLogger("service.protocol")
_UVICORN_QUIET = logging.getLogger("uvicorn.error.websocket")
_UVICORN_QUIET.setLevel(logging.WARNING)
CLOSE_DEADLINE = 5.0
"""Seconds a started close may take before the socket is aborted (the peer is not reading)."""

MessageHandler = Callable[[bytes, bool], None]

_ACCEPT_HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 30\r\n"
    b"connection: close\r\n\r\n"
    b"Invalid HTTP request received."
)
"""uvicorn's answer to a request its HTTP parser cannot read."""
# Header values back to bytes as uvicorn does: websockets 17 decodes them as ISO-8859-1,
# earlier versions as ASCII with surrogate escapes.
_HEADER_ENCODING, _HEADER_ERRORS = (
    ("latin-1", "strict") if websockets_version >= "17.0" else ("ascii", "surrogateescape")
)


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


class ParsedServerProtocol(ServerProtocol):
    """websockets' server side for a handshake request parsed before it was created.

    Its parser starts at the frame loop: no request-parsing generators to start, and none to
    swap out after the 101 (see `_restart_frame_parser`). The frame loop waits for data before
    it reads the negotiated extensions, as it does after a parsed request.
    """

    def parse(self) -> Generator[None]:
        return WsProtocol.parse(self)


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets-sansio plus `attach()`, `write_frame()` and `close_now()` for the hub."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        request_parsed: bool = False,
    ) -> None:
        # WebSocketsSansIOProtocol.__init__, restated (tests pin that no attribute is missing)
        # without what a handshake pays for nothing: an asyncio.Queue that Inbox replaces and
        # logger look-ups.
        if not config.loaded:
            config.load()  # pragma: no cover
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        # websockets logs "connection open" and uvicorn '"WebSocket /ws" [accepted]' at INFO
        # for every client: our own "connection opened/closed/refused" lines say more, once.
        # Errors still reach uvicorn.error's handlers through the child logger.
        self.logger = _UVICORN_QUIET
        self.root_path = config.root_path
        self.asgi_version = config.asgi_version
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.transport = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None  # type: ignore[assignment]
        self.queue = Inbox()  # type: ignore[assignment]
        self.handshake_initiated = False
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer = None
        self.close_timeout = 10.0
        self.initial_response = None
        extensions = []
        if config.ws_per_message_deflate:
            extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
        # With the request parsed already (upgrade.py), websockets' parser reads frames only.
        conn_class = ParsedServerProtocol if request_parsed else ServerProtocol
        self.conn = conn_class(extensions=extensions, max_size=config.ws_max_size, logger=_QUIET)
        self.read_paused = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.ping_interval = config.ws_ping_interval
        self.ping_timeout = config.ws_ping_timeout
        self.ping_timer = None
        self.pong_timer = None
        self.pending_ping_payload = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0
        self.frames = []
        self.curr_msg_data_type = "bytes"
        # Ours
        self.accept_head: bytes | None = None  # the 101's first lines, until it is sent
        self.on_message: MessageHandler | None = None
        self.backlog: collections.deque[bytes] | None = None  # None while the socket is writable
        self.backlog_limit = 1000
        self.backlog_count = 0  # messages in the backlog (a batch frame holds several)
        self.failure: BaseException | None = None
        self.cork: list[bytes] | None = None
        self.abort_timer: Any = None

    # Handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """uvicorn's, with both addresses from the transport's own extra info.

        uvicorn asks a socket object for them (get_local_addr, get_remote_addr): four times
        the cost, on every handshake.
        """
        self.connections.add(self)
        self.transport = transport  # type: ignore[assignment]
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple) and len(local) >= 2:
            self.server = (str(local[0]), int(local[1]))
        elif isinstance(local, str):
            self.server = (local, None)  # a unix socket
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        self.scheme = "wss" if transport.get_extra_info("sslcontext") else "ws"

    def handle_connect(self, event: Request) -> None:
        """uvicorn's handle_connect, with the 101 prepared as bytes instead of a Response.

        websockets' own checks decide (process_request); anything they refuse takes uvicorn's
        path, which runs them again and sends websockets' refusal.
        """
        conn = self.conn
        try:
            accept, extension, subprotocol = conn.process_request(event)
        except Exception:
            super().handle_connect(event)
            return
        head = _ACCEPT_HEAD + accept.encode() + b"\r\n"
        if extension is not None:
            head += b"Sec-WebSocket-Extensions: " + extension.encode() + b"\r\n"
        if subprotocol is not None:
            head += b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n"
        subprotocols: list[str] = []
        headers = []
        # ASGI header names are lower case; websockets keeps the client's spelling.
        for name, value in event.headers.raw_items():
            lower = name.lower()
            headers.append((lower.encode(), value.encode(_HEADER_ENCODING, _HEADER_ERRORS)))
            if lower == "sec-websocket-protocol":
                subprotocols.extend([token.strip() for token in value.split(",")])
        self._start(head, event.path, headers, subprotocols)

    def accept_handshake(self, handshake: Handshake) -> None:
        """Start the app for a request checked already (upgrade.read_handshake).

        The connection then stands where websockets leaves it after accepting a request with
        no extension or subprotocol negotiated (ServerProtocol.process_request).
        """
        self.conn.origin = handshake.origin  # type: ignore[assignment]
        head = _ACCEPT_HEAD + handshake.accept.encode() + b"\r\n"
        self._start(head, handshake.target, handshake.headers, handshake.subprotocols)

    def _start(
        self,
        accept_head: bytes,
        target: str,
        headers: list[tuple[bytes, bytes]],
        subprotocols: list[str],
    ) -> None:
        """As the end of uvicorn's handle_connect: the scope, then the app's task."""
        self.conn.accept_called = True
        self.handshake_initiated = True
        self.accept_head = accept_head
        raw_path, _, query_string = target.partition("?")
        root_path = self.root_path
        extensions: dict[str, Any] = {"websocket.http.response": {}, EXTENSION: self}
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": root_path,
            "path": root_path + unquote(raw_path),
            "raw_path": root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query_string.encode("ascii"),
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": extensions,
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def send(self, message: Any) -> None:
        head = self.accept_head
        if (
            head is not None
            and message["type"] == "websocket.accept"
            and not self.handshake_complete
            and self.initial_response is None
        ):
            self.accept_head = None
            self._accept(head, message)
            return
        await super().send(message)
        # uvicorn logs "returned without completing handshake" after every denial response:
        # noise any client could trigger at will. A denial is a complete answer.
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True

    def _accept(self, head: bytes, message: Any) -> None:
        """Send the 101 as uvicorn would, from bytes: no Headers, no Response, no Date.

        The headers are uvicorn's: websockets' own, the server's defaults (its cached date),
        the app's, then the subprotocol the app chose.
        """
        if self.transport.is_closing():
            return
        parts = [head]
        for name, value in self.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in message.get("headers") or ():
            parts += (bytes(name).lower(), b": ", bytes(value), b"\r\n")
        subprotocol = message.get("subprotocol")
        if subprotocol:
            parts += (b"Sec-WebSocket-Protocol: ", subprotocol.encode(), b"\r\n")
        parts.append(b"\r\n")
        self.handshake_complete = True
        self.conn.state = State.OPEN  # what ServerProtocol.send_response(101) does
        self.transport.write(b"".join(parts))
        self.start_keepalive()
        self._restart_frame_parser()

    def _refuse_unreadable(self) -> None:
        """websockets could not read the request: answer and close, as an HTTP parser would.

        websockets only queues its 414/431 (which uvicorn never sends) or nothing at all, and
        the client would wait for an answer until it gives up.
        """
        if self.close_sent:
            return
        self.handshake_complete = self.close_sent = True
        self.transport.write(b"".join(self.conn.data_to_send()) or _BAD_REQUEST)
        self.transport.close()

    def _restart_frame_parser(self) -> None:
        """Swap websockets' handshake parser for a plain frame parser.

        ServerProtocol.parse() keeps the parsed request in its generator frame for the whole
        connection (about 2.5 KiB). A fresh Protocol.parse() at the same point, the top of the
        frame loop with nothing buffered, parses identically without it.
        """
        conn = self.conn
        if isinstance(conn, ParsedServerProtocol):
            return  # reads frames only already
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
            if not self.handshake_initiated and self.conn.handshake_exc is not None:
                self._refuse_unreadable()
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
        """The server is stopping (service.draining has marked it draining): closes spread out.

        uvicorn calls this for every connection at the same instant; thousands of clients
        closed together would reconnect together. Each close waits a random share of
        `drain_spread` seconds (uvicorn keeps waiting for open connections meanwhile).
        """
        spread = getattr(self.app_state.get("runtime"), "drain_spread", 0.0)
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
