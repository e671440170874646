"""uvicorn's `http` protocol slot: a plain WebSocket handshake skips two parsers.

uvicorn builds an HTTP protocol for every connection, parses the request with httptools,
then, for an upgrade, writes the request back out as bytes for websockets to parse and check
again. That round trip was a third of a handshake's server CPU. Here a connection's first
chunk is read once:

- a complete handshake that websockets would accept (`read_handshake`) goes straight to our
  WebSocket protocol, already parsed;
- any other upgrade request in one chunk goes to it as bytes, for websockets to parse, check
  and answer, as before;
- everything else (plain HTTP, a request split over several reads) goes to uvicorn's own HTTP
  protocol, unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from websockets import http11
from websockets.headers import parse_connection, parse_subprotocol
from websockets.utils import accept_key

from .protocol import DirectWebSocketProtocol

TOKEN = rb"[-!#$%&\'*+.^_`|~0-9a-zA-Z]+"
VALUE = rb"[\x09\x20-\x7e\x80-\xff]*"
"""websockets' grammar for header names and values (http11._token_re, _value_re; a test pins
them): no CR or LF in either, so the regex below splits lines unambiguously."""

_HANDSHAKE = re.compile(
    rb"GET ([\x21-\x7e]+) HTTP/1\.1\r\n((?:" + TOKEN + b":" + VALUE + rb"\r\n)*)\r\n"
)
_REQUEST_LINE = re.compile(rb"GET [\x21-\x7e]+ HTTP/1\.1")
_MANY = b"\x00"  # stands for a header sent more than once
_WATCHED = frozenset(
    [
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"origin",
        b"content-length",
        b"transfer-encoding",
    ]
)


@dataclasses.dataclass(slots=True)
class Handshake:
    """A handshake request websockets would accept, in the shapes uvicorn's scope wants."""

    target: str
    headers: list[tuple[bytes, bytes]]  # ASGI: names lower case, values as received
    accept: str  # Sec-WebSocket-Accept
    subprotocols: list[str]
    origin: str | None


def read_handshake(data: bytes, *, extensions: bool = False) -> Handshake | None:
    """`data` when websockets would parse it and accept the handshake, else None.

    Only what both of websockets' steps (Request.parse, ServerProtocol.process_request) are
    sure to accept passes: one complete request within websockets' limits and grammar, no body,
    one Upgrade `websocket`, one Connection listing `upgrade`, one valid key, version 13, at
    most one Origin, a well-formed subprotocol list. Whatever else, None: websockets itself
    then parses and answers the request. `extensions`: the server negotiates extensions (a
    Sec-WebSocket-Extensions header is then left to websockets).
    """
    match = _HANDSHAKE.fullmatch(data)
    if match is None:
        return None
    target, block = match.groups()
    limit = http11.MAX_LINE_LENGTH - 2  # websockets' line limit counts the CRLF
    lines = block.split(b"\r\n")
    lines.pop()  # the block ends with CRLF
    if len(target) + 13 > limit or len(lines) > http11.MAX_NUM_HEADERS:
        return None
    headers = []
    found: dict[bytes, bytes] = {}
    for line in lines:
        if len(line) > limit:
            return None
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        headers.append((name, value))
        if name in _WATCHED:
            found[name] = _MANY if name in found else value
    get = found.get
    if get(b"content-length") is not None or get(b"transfer-encoding") is not None:
        return None
    if get(b"origin") == _MANY or (extensions and get(b"sec-websocket-extensions")):
        return None
    if (get(b"upgrade") or b"").lower() != b"websocket" or get(b"sec-websocket-version") != b"13":
        return None
    connection = get(b"connection")
    if connection is None or connection == _MANY:
        return None
    if connection.lower() != b"upgrade":
        try:
            options = parse_connection(connection.decode("latin-1"))
        except Exception:
            return None
        if not any(option.lower() == "upgrade" for option in options):
            return None
    key = get(b"sec-websocket-key")
    if key is None or key == _MANY:
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    subprotocols: list[str] = []
    offered = get(b"sec-websocket-protocol")
    if offered is not None:
        if offered == _MANY:
            return None
        text = offered.decode("latin-1")
        try:
            parse_subprotocol(text)  # websockets refuses a malformed list
        except Exception:
            return None
        subprotocols = [token.strip() for token in text.split(",")]  # as uvicorn lists them
    origin = get(b"origin")
    return Handshake(
        target=target.decode("ascii"),
        headers=headers,
        accept=accept_key(key.decode("ascii")),
        subprotocols=subprotocols,
        origin=origin.decode("latin-1") if origin is not None else None,
    )


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` in lower-cased `head`; None when absent or repeated."""
    start = head.find(name)
    if start < 0 or head.find(name, start + len(name)) >= 0:
        return None
    start += len(name)
    return head[start : head.index(b"\r\n", start)].strip(b" \t")


def is_plain_upgrade(data: bytes) -> bool:
    """True for one complete WebSocket upgrade request that httptools would upgrade too.

    Only the common shape qualifies (one Upgrade header `websocket`, one Connection header
    listing `upgrade`, nothing after the blank line): the rest takes uvicorn's usual path.
    """
    if not data.startswith(b"GET ") or not data.endswith(b"\r\n\r\n"):
        return False
    if not _REQUEST_LINE.fullmatch(data, 0, data.index(b"\r\n")):
        return False
    head = data.lower()
    if _header(head, b"\r\nupgrade:") != b"websocket":
        return False
    connection = _header(head, b"\r\nconnection:")
    return connection is not None and b"upgrade" in [t.strip() for t in connection.split(b",")]


class UpgradeProtocol(asyncio.Protocol):
    """Waits for a connection's first bytes, then hands the connection to the right protocol."""

    http_protocol_class: type[asyncio.Protocol] = AutoHTTPProtocol

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.loop = _loop
        self.transport: asyncio.Transport | None = None
        self.cycle = None  # like an HTTP protocol still waiting for its request (worker.in_flight)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)

    def eof_received(self) -> None:
        pass

    def shutdown(self) -> None:
        """Stopping before the first request arrived: nothing to answer, close."""
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        config, state, app_state = self.config, self.server_state, self.app_state
        ws_class = config.ws_protocol_class
        # Only our protocol takes raw requests: it gives ASGI lower-case header names.
        direct = ws_class is not None and issubclass(ws_class, DirectWebSocketProtocol)
        protocol: asyncio.Protocol
        handshake = (
            read_handshake(data, extensions=config.ws_per_message_deflate) if direct else None
        )
        if handshake is not None:
            protocol = ws_class(
                config=config, server_state=state, app_state=app_state, request_parsed=True
            )
        elif direct and is_plain_upgrade(data):
            protocol = ws_class(config=config, server_state=state, app_state=app_state)
        else:
            protocol = self.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=app_state, _loop=self.loop
            )
        state.connections.discard(self)
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        if handshake is not None:
            protocol.accept_handshake(handshake)  # type: ignore[attr-defined]
        else:
            protocol.data_received(data)
