"""The opening handshake on the real server: the short path (upgrade.py) and the long ones."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.support import ServerProcess, scaled

KEY = "handshake-test-key-0123456789"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    env = {"WS_AUTH_MODE": "api_key", "WS_API_KEYS": KEY, "WS_LOG_LEVEL": "warning"}
    with ServerProcess(env) as proc:
        yield proc


def _request(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _handshake(
    key: str, *, path: str = "/ws", extra: tuple[str, ...] = (), connection: str = "Upgrade"
) -> bytes:
    return _request(
        [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            f"Connection: {connection}",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *extra,
        ]
    )


def _exchange(port: int, *chunks: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send `chunks` (a pause between them); return the status, headers and body received."""
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(5)) as sock:
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(0.05)
            sock.sendall(chunk)
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(4096)
            assert more, f"closed without an answer: {data!r}"
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(n.strip().lower(), v.strip()) for n, _, v in (h.partition(":") for h in lines)]
        length = dict(headers).get("content-length")
        while length is not None and len(body) < int(length):
            more = sock.recv(4096)
            assert more
            body += more
    return int(status_line.split()[1]), headers, body


def _accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def _new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def test_101_carries_the_headers_a_client_checks(srv: ServerProcess) -> None:
    """The 101 has Upgrade, Connection, the right Sec-WebSocket-Accept and a Date, once each."""
    key = _new_key()
    status, headers, _ = _exchange(srv.port, _handshake(key, extra=(f"X-API-Key: {KEY}",)))
    assert status == 101
    names = [name for name, _ in headers]
    assert sorted(names) == ["connection", "date", "sec-websocket-accept", "upgrade"]
    found = dict(headers)
    assert found["upgrade"] == "websocket" and found["connection"] == "Upgrade"
    assert found["sec-websocket-accept"] == _accept(key)


async def test_bearer_subprotocol_is_selected_and_messages_flow(srv: ServerProcess) -> None:
    """A client offering `bearer` gets it back in the 101 and then talks as usual."""
    async with connect(
        srv.ws_url + "/ws", subprotocols=["bearer"], additional_headers={"X-API-Key": KEY}
    ) as ws:
        assert ws.subprotocol == "bearer"
        await ws.send("hi")
        assert await ws.recv() == "Echo: hi"


SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
QUERY = f"/ws?api_key={KEY}"
MIXED_CASE = _handshake(SAMPLE_KEY, extra=(f"x-API-kEY: {KEY}", "ORIGIN: http://example.test"))
FIREFOX = _handshake(SAMPLE_KEY, path=QUERY, connection="keep-alive, Upgrade")
PLAIN = _handshake(SAMPLE_KEY, path=QUERY)


@pytest.mark.parametrize(
    "chunks",
    [[MIXED_CASE], [FIREFOX], [PLAIN[:30], PLAIN[30:]]],
    ids=["mixed-case-names", "keep-alive-upgrade", "two-reads"],
)
def test_unusual_but_valid_handshakes_open(srv: ServerProcess, chunks: list[bytes]) -> None:
    """Header case, `keep-alive, Upgrade` and a request in two reads all get the 101."""
    status, headers, _ = _exchange(srv.port, *chunks)
    assert status == 101
    assert dict(headers)["sec-websocket-accept"] == _accept(SAMPLE_KEY)


@pytest.mark.parametrize(
    ("key", "extra", "status", "says"),
    [
        ("short", (), 400, b"Sec-WebSocket-Key"),
        (None, (), 400, b"Sec-WebSocket-Key"),
        ("version", ("Sec-WebSocket-Version: 8",), 400, b"Sec-WebSocket-Version"),
        ("body", ("Content-Length: 5",), 400, b"Invalid HTTP request"),
        ("no credentials", (), 401, b"missing credentials"),
    ],
)
def test_bad_handshakes_are_refused_with_a_reason(
    srv: ServerProcess, key: str | None, extra: tuple[str, ...], status: int, says: bytes
) -> None:
    """websockets' refusals (bad key, version), an unreadable request and our 401 answer."""
    lines = [f"GET /ws{'' if key == 'no credentials' else '?api_key=' + KEY} HTTP/1.1"]
    lines += ["Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {'c2hvcnQ=' if key == 'short' else _new_key()}")
    if key != "version":
        lines.append("Sec-WebSocket-Version: 13")
    answer = _exchange(srv.port, _request(lines + list(extra)))
    assert answer[0] == status
    assert says in answer[2]
