"""The real server (`ws-service serve`, uvicorn, our direct protocol) with real clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import ServerProcess, get_json, scaled, wait_until

LIMIT = 4096


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    env = {"WS_MAX_MESSAGE_BYTES": str(LIMIT), "WS_SEND_QUEUE": "50", "WS_LOG_LEVEL": "info"}
    with ServerProcess(env) as proc:
        yield proc


@pytest.fixture(scope="module")
def pure_echo() -> Iterator[ServerProcess]:
    with ServerProcess({"WS_ECHO_PREFIX": ""}) as proc:
        yield proc


async def test_echo_keeps_text_and_binary(srv: ServerProcess) -> None:
    """Text comes back as text and binary as binary, each with `Echo: ` before it."""
    async with connect(srv.ws_url + "/ws") as ws:
        await ws.send("hi")
        assert await ws.recv() == "Echo: hi"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"Echo: \x00\xff"
        await ws.send("héllo ✓")
        assert await ws.recv() == "Echo: héllo ✓"


async def test_empty_prefix_is_pure_echo(pure_echo: ServerProcess) -> None:
    """WS_ECHO_PREFIX='' returns each message unchanged."""
    async with connect(pure_echo.ws_url + "/ws") as ws:
        await ws.send("same")
        assert await ws.recv() == "same"
        await ws.send(b"\x01")
        assert await ws.recv() == b"\x01"


async def test_broadcast_reaches_all_clients_including_sender(srv: ServerProcess) -> None:
    """One message on /ws/broadcast arrives at each of 20 clients, the sender too."""
    clients = [await connect(srv.ws_url + "/ws/broadcast") for _ in range(20)]
    try:
        await clients[3].send("to everyone")
        got = await asyncio.gather(*(asyncio.wait_for(c.recv(), scaled(5)) for c in clients))
        assert got == ["to everyone"] * 20
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_channels_are_isolated(srv: ServerProcess) -> None:
    """Clients on `red` never see `blue` traffic."""
    async with (
        connect(srv.ws_url + "/ws/channels/red") as red,
        connect(srv.ws_url + "/ws/channels/blue") as blue,
    ):
        await blue.send("blue only")
        await red.send("red only")
        assert await red.recv() == "red only"
        assert await blue.recv() == "blue only"
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(red.recv(), 0.3)


async def test_one_order_for_every_subscriber(srv: ServerProcess) -> None:
    """Three concurrent senders, ten subscribers: every subscriber sees the same sequence."""
    url = srv.ws_url + "/ws/channels/ordered"
    subs = [await connect(url) for _ in range(10)]
    senders = [await connect(url) for _ in range(3)]
    per_sender = 100

    async def send_all(i: int, ws) -> None:  # type: ignore[no-untyped-def]
        for n in range(per_sender):
            await ws.send(f"{i}:{n}")

    async def collect(ws) -> list[str]:  # type: ignore[no-untyped-def]
        return [await asyncio.wait_for(ws.recv(), scaled(10)) for _ in range(3 * per_sender)]

    try:
        collectors = [asyncio.create_task(collect(s)) for s in subs]
        await asyncio.gather(*(send_all(i, s) for i, s in enumerate(senders)))
        results = await asyncio.gather(*collectors)
        assert all(r == results[0] for r in results)
        for i in range(3):  # and each sender's own messages stay in its order
            mine = [m for m in results[0] if m.startswith(f"{i}:")]
            assert mine == [f"{i}:{n}" for n in range(per_sender)]
    finally:
        await asyncio.gather(*(c.close() for c in subs + senders))


def _post(request: urllib.request.Request) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


async def test_publish_api_text_and_binary(srv: ServerProcess) -> None:
    """POST bodies reach channel subscribers: text/* as text, others as binary."""
    async with connect(srv.ws_url + "/ws/channels/news") as ws:
        for body, ctype, expected in (
            (b"breaking", "text/plain; charset=utf-8", "breaking"),
            (b"\x89PNG\r\n", "application/octet-stream", b"\x89PNG\r\n"),
        ):
            request = urllib.request.Request(
                srv.http_url + "/api/channels/news/messages",
                data=body,
                headers={"Content-Type": ctype},
                method="POST",
            )
            status, answer = await asyncio.to_thread(_post, request)
            assert status == 202 and answer["channel"] == "news"
            assert await asyncio.wait_for(ws.recv(), scaled(5)) == expected


async def test_message_at_limit_passes_and_one_byte_over_closes_1009(srv: ServerProcess) -> None:
    """WS_MAX_MESSAGE_BYTES is inclusive; one byte more ends the connection with 1009."""
    async with connect(srv.ws_url + "/ws/channels/big", max_size=None) as ws:
        await ws.send(b"x" * LIMIT)
        assert await ws.recv() == b"x" * LIMIT
        await ws.send(b"x" * (LIMIT + 1))
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), scaled(5))
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


@pytest.mark.parametrize(
    ("path", "status"),
    [("/ws/channels/bad%20name", 400), ("/ws/channels/" + "a" * 129, 400), ("/nowhere", 404)],
)
async def test_bad_paths_are_refused_before_upgrade(
    srv: ServerProcess, path: str, status: int
) -> None:
    """Bad channel names get 400 and unknown paths 404, with a short body."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(srv.ws_url + path):
            pass
    assert info.value.response.status_code == status
    assert info.value.response.body


def test_healthz_and_readyz_fields(srv: ServerProcess) -> None:
    """/healthz has status, version, pid, connections; /readyz is 200 and names the broker."""
    status, health = get_json(srv.http_url + "/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["pid"] == srv.pid and isinstance(health["connections"], int)
    assert health["version"]
    status, ready = get_json(srv.http_url + "/readyz")
    assert status == 200 and ready["broker"] == "up"


def _raw_handshake(port: int, path: str) -> socket.socket:
    """A WebSocket client that we can make stop reading: a bare socket after the 101."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _close_code(stream: bytes) -> int | None:
    """Walk server frames in `stream` and return the close frame's code, if any."""
    i = 0
    while i + 2 <= len(stream):
        opcode, length = stream[i] & 0x0F, stream[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", stream[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", stream[i : i + 8])
            i += 8
        if opcode == 0x8:
            return int(struct.unpack("!H", stream[i : i + 2])[0])
        i += length
    return None


async def test_client_that_never_reads_is_closed_1008_without_delaying_others(
    srv: ServerProcess,
) -> None:
    """A stuck reader overflows its own queue, gets 1008, and the others keep their pace."""
    stuck = _raw_handshake(srv.port, "/ws/channels/flood")
    async with connect(srv.ws_url + "/ws/channels/flood", max_size=None) as fast:
        payload = "p" * 4000
        started = time.monotonic()
        for n in range(1200):  # ~4.8 MB: far past the socket buffers and WS_SEND_QUEUE=50
            await fast.send(f"{n}:{payload}")
            assert (await asyncio.wait_for(fast.recv(), scaled(5))).startswith(f"{n}:")
        elapsed = time.monotonic() - started
    assert elapsed < scaled(10), f"healthy client slowed down: {elapsed:.1f}s"

    # Now read what the stuck client was sent: its stream ends with a 1008 close frame.
    stuck.settimeout(scaled(10))
    received = b""
    try:
        while True:
            chunk = stuck.recv(65536)
            if not chunk:
                break
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    stuck.close()
    assert _close_code(received) == 1008
    assert "slow consumer" in wait_until(
        lambda: "slow consumer" in srv.log_text() and srv.log_text(), 5, what="log line"
    )
