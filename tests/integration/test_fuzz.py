"""Property-based fuzzing of every inbound path of a real server: never a 500, never a crash.

Hypothesis generates messages, channel names, tokens, raw frames, headers and bodies; each
example goes to the same running `ws-service serve`. At the end the process must be alive,
healthy, hold no leaked connection slot, and have logged no traceback.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from service.channels import is_valid_name
from tests.support import ServerProcess, get_json, scaled, wait_until

LIMIT = 1024
API_KEY = "fuzz-key-0123456789abcdef"
AUTH = {"X-API-Key": API_KEY}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    env = {
        "WS_AUTH_MODE": "api_key,jwt",
        "WS_API_KEYS": API_KEY,
        "WS_JWT_SECRET": "fuzz-secret-" + "x" * 32,
        "WS_MAX_MESSAGE_BYTES": str(LIMIT),
        # Small, so a leaked slot would show up as a 503 within the run.
        "WS_MAX_CONNECTIONS": "8",
        "WS_LOG_LEVEL": "warning",
    }
    with ServerProcess(env) as proc:
        yield proc
        # Whatever was thrown at it: alive, healthy, no slot held, no traceback.
        assert proc.proc is not None and proc.proc.poll() is None, "server died"
        wait_until(
            lambda: get_json(proc.http_url + "/healthz")[1]["connections"] == 0,
            5,
            what="every connection released",
        )
        log = proc.log_text()
        assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def handshake_status(url: str, **kwargs: Any) -> int:
    """101 when the server upgrades (the connection is closed at once), else the HTTP status."""
    try:
        with connect(url, open_timeout=scaled(5), **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


endpoints = st.sampled_from(["/ws", "/ws/broadcast", "/ws/channels/fuzz.a"])
payloads = st.one_of(st.binary(max_size=LIMIT + 64), st.text(max_size=LIMIT // 2 + 16))


@FUZZ
@given(path=endpoints, data=payloads)
def test_any_message_is_echoed_or_closed_1009(srv: ServerProcess, path: str, data: Any) -> None:
    """Any text or binary message comes back intact if within the limit, else closes 1009."""
    size = len(data.encode() if isinstance(data, str) else data)
    prefix = "Echo: " if path == "/ws" else ""
    expected = (prefix + data) if isinstance(data, str) else prefix.encode() + data
    with connect(srv.ws_url + path, additional_headers=AUTH, max_size=None) as ws:
        ws.send(data)
        if size <= LIMIT:
            assert ws.recv(timeout=scaled(5)) == expected
        else:
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=scaled(5))
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009


@FUZZ
@given(
    name=st.one_of(
        st.text(max_size=140),
        st.text(alphabet="Aa0_.:-/ %é\x00", max_size=140),  # mostly near-valid names
    )
)
def test_any_channel_name_is_joined_or_refused_cleanly(srv: ServerProcess, name: str) -> None:
    """A valid channel name is joined; anything else is 400 or 404, never a 500."""
    url = srv.ws_url + "/ws/channels/" + quote(name, safe="")
    status = handshake_status(url, additional_headers=AUTH)
    if is_valid_name(name):
        assert status == 101
    else:
        assert status in (400, 404), (name, status)


token_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300
)
jwt_shaped = st.tuples(
    st.sampled_from(["eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJub25lIn0", "eyJ9", "e30"]),
    st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=60),
    st.text(alphabet="ABCDEFabcdef0123456789-_", max_size=60),
).map(".".join)


@FUZZ
@given(token=st.one_of(token_text, jwt_shaped), where=st.sampled_from(["query", "header", "proto"]))
def test_any_token_is_refused_401(srv: ServerProcess, token: str, where: str) -> None:
    """Random tokens, anywhere a token may be, are 401: never a 500, never admitted."""
    kwargs: dict[str, Any] = {}
    url = srv.ws_url + "/ws"
    if where == "query":
        url += "?token=" + quote(token, safe="")
    elif where == "header":
        kwargs["additional_headers"] = {"Authorization": f"Bearer {token}"}
    else:
        if any(c in token for c in '(),/:;<=>?@[\\]{}"'):  # not a subprotocol token (RFC 7230)
            token = quote(token, safe="").replace("%", "_")
        kwargs["subprotocols"] = ["bearer", token]
    assert handshake_status(url, **kwargs) == 401


def raw_handshake(port: int, path: str = "/ws") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(5))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nX-API-Key: {API_KEY}\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        assert chunk, "no handshake answer"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response[:100]
    return sock


@FUZZ
@given(junk=st.binary(min_size=1, max_size=2 * LIMIT))
def test_raw_bytes_after_the_upgrade_never_crash_the_server(
    srv: ServerProcess, junk: bytes
) -> None:
    """Arbitrary bytes where frames belong (bad opcodes, unmasked, huge lengths) end cleanly."""
    sock = raw_handshake(srv.port)
    try:
        sock.sendall(junk)
        sock.settimeout(0.05)
        with contextlib.suppress(OSError):
            sock.recv(4096)  # a close frame, an echo, or nothing yet: all fine
    finally:
        sock.close()


header_names = st.one_of(
    st.sampled_from(["Content-Type", "X-API-Key", "Authorization", "Origin", "Cookie", "Expect"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=20),
).filter(lambda n: n.lower() not in ("content-length", "transfer-encoding", "host", "connection"))
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=200,
)
methods = st.sampled_from(["POST", "GET", "PUT", "DELETE", "OPTIONS", "PATCH"])


def http_status(port: int, request: bytes) -> int:
    """Send one raw HTTP/1.1 request and return the response's status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(5)) as sock:
        sock.sendall(request)
        response = b""
        while b"\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response[9:12])


@FUZZ
@given(
    method=methods,
    name=st.text(max_size=40),
    query=st.text(max_size=40),
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
    body=st.binary(max_size=LIMIT + 64),
    keyed=st.booleans(),
)
def test_any_http_request_to_the_api_is_never_a_500(
    srv: ServerProcess,
    method: str,
    name: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    keyed: bool,
) -> None:
    """Random channel names, query strings, headers and bodies: a 2xx or 4xx, never a 5xx."""
    path = f"/api/channels/{quote(name, safe='')}/messages?{quote(query, safe='=&')}"
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    if keyed:
        lines.append(f"X-API-Key: {API_KEY}")
    lines += [f"{k}: {v}" for k, v in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    status = http_status(srv.port, request)
    assert 200 <= status < 500, (status, method, name, headers)
    if method == "POST" and keyed and is_valid_name(name) and len(body) > LIMIT:
        assert status in (400, 401, 413), status  # too big (unless the random headers refuse)


def test_server_survives_the_fuzzing(srv: ServerProcess) -> None:
    """After every fuzz run above the server still answers /healthz at once."""
    started = time.monotonic()
    status, health = get_json(srv.http_url + "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert time.monotonic() - started < scaled(1.0)
