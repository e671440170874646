"""upgrade.read_handshake against websockets itself, and our protocol against uvicorn's."""

from __future__ import annotations

import logging

import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets import http11
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from service.protocol import DirectWebSocketProtocol
from service.upgrade import TOKEN, VALUE, read_handshake

BASE = [
    b"GET /ws?a=b HTTP/1.1",
    b"Host: x",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
]
# Lines that swap in for one of BASE's, or join them: valid, odd and broken.
VARIANTS = {
    0: [
        b"GET /ws HTTP/1.0",
        b"POST /ws HTTP/1.1",
        b"GET /w\xc3\xa9 HTTP/1.1",
        b"GET /a%20b?q HTTP/1.1",
    ],
    2: [b"Upgrade: WebSocket", b"Upgrade: websocket, h2c", b"Upgrade:websocket", b"Upgrade: h2c"],
    3: [b"Connection: keep-alive, Upgrade", b"Connection: close", b"Connection: Upgrade,,"],
    4: [b"Sec-WebSocket-Key: c2hvcnQ=", b"Sec-WebSocket-Key:  dGhlIHNhbXBsZSBub25jZQ== "],
    5: [b"Sec-WebSocket-Version: 8", b"Sec-WebSocket-Version: 13 "],
}
EXTRAS = [
    b"X-A: \xe9t\xe9",
    b"Bad Name: x",
    b"X-B:  spaced \t",
    b"X-C: a\rb",
    b"X-D: a\x00b",
    b"X-H: a\nb",
    b"noColon",
    b"",
    b"\tX-G: folded",
    b"X-E: " + b"a" * 9000,
    b"Transfer-Encoding: chunked",
    b"Content-Length: 0",
    b"Origin: http://a",
    b"Sec-WebSocket-Protocol: bearer, tok.en",
    b"Sec-WebSocket-Protocol: a b",
    b"Sec-WebSocket-Extensions: permessage-deflate",
    b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==",
    b"UPGRADE: WebSocket",
    b"connection: keep-alive",
]


def websockets_answer(data: bytes) -> tuple[Request, ServerProtocol, str] | None:
    """What websockets makes of `data`: the request, protocol and accept key, or None."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Request.parse(reader.read_line)
    try:
        next(parser)
    except StopIteration as done:
        request = done.value
    except Exception:
        return None
    else:
        return None  # incomplete
    if reader.buffer:
        return None
    server = ServerProtocol(extensions=[], logger=logging.getLogger("test"))
    response = server.accept(request)
    if response.status_code != 101:
        return None
    return request, server, response.headers["Sec-WebSocket-Accept"]


def test_grammar_is_websockets_own() -> None:
    """The header grammar read_handshake uses is the one websockets parses with."""
    assert TOKEN == http11._token_re.pattern
    assert VALUE == http11._value_re.pattern


def test_a_plain_handshake_takes_the_short_path() -> None:
    """The request every client sends is read here, with websockets' accept key."""
    data = b"\r\n".join(BASE) + b"\r\n\r\n"
    handshake = read_handshake(data)
    answer = websockets_answer(data)
    assert handshake is not None and answer is not None
    assert handshake.accept == answer[2] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@settings(max_examples=400, deadline=None)
@given(
    swaps=st.dictionaries(st.sampled_from(sorted(VARIANTS)), st.integers(0, 3), max_size=3),
    extras=st.lists(st.tuples(st.integers(1, 6), st.sampled_from(EXTRAS)), max_size=3),
)
def test_short_path_accepts_only_what_websockets_accepts(
    swaps: dict[int, int], extras: list[tuple[int, bytes]]
) -> None:
    """Whatever read_handshake takes, websockets accepts too, with the same scope inputs."""
    lines = list(BASE)
    for index, choice in swaps.items():
        lines[index] = VARIANTS[index][choice % len(VARIANTS[index])]
    for position, line in extras:
        lines.insert(position, line)
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    handshake = read_handshake(data)
    if handshake is None:
        return  # websockets decides, as before
    answer = websockets_answer(data)
    assert answer is not None, data
    request, server, accept = answer
    assert handshake.accept == accept
    assert handshake.target == request.path
    assert handshake.origin == server.origin
    expected = [(k.lower().encode(), v.encode("latin-1")) for k, v in request.headers.raw_items()]
    assert handshake.headers == expected
    offered = request.headers.get_all("Sec-WebSocket-Protocol")
    assert handshake.subprotocols == [t.strip() for h in offered for t in h.split(",")]


def test_extension_offers_are_left_to_websockets_when_negotiated() -> None:
    """With permessage-deflate on, an offer takes websockets' path (it negotiates)."""
    data = b"\r\n".join([*BASE, b"Sec-WebSocket-Extensions: permessage-deflate"]) + b"\r\n\r\n"
    assert read_handshake(data, extensions=False) is not None
    assert read_handshake(data, extensions=True) is None


async def test_direct_protocol_sets_every_attribute_uvicorn_sets() -> None:
    """Our restated __init__ leaves out nothing uvicorn's protocol sets (a uvicorn upgrade)."""

    async def app(scope: object, receive: object, send: object) -> None:
        pass

    config = uvicorn.Config(app, ws=DirectWebSocketProtocol, ws_per_message_deflate=False)
    config.load()
    state = ServerState()
    stock = WebSocketsSansIOProtocol(config=config, server_state=state, app_state={})
    ours = DirectWebSocketProtocol(config=config, server_state=state, app_state={})
    missing = [name for name in vars(stock) if not hasattr(ours, name)]
    assert missing == []
