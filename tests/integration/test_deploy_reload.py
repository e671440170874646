"""gunicorn with real uvicorn workers under traffic: SIGHUP reload and SIGTERM stop.

The production command (`gunicorn -c config/gunicorn.conf.py service.app:app`) on a free port.
During a reload new handshakes keep arriving from several probers; none may be refused.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from service.protocol import DirectWebSocketProtocol
from service.serve import UVICORN_SHUTDOWN_MARGIN
from service.settings import get_settings
from service.worker import Worker
from tests.support import BIN, ROOT, ServerProcess, get_json, scaled, wait_until

CLIENTS = 120
PROBERS = 12
GRACEFUL = 10
SPREAD = 1.0
GUNICORN = [str(BIN / "gunicorn"), "-c", str(ROOT / "config/gunicorn.conf.py"), "service.app:app"]


def gunicorn(tmp_path: Path, prefix: str) -> ServerProcess:
    env_file = tmp_path / "ws.env"
    env_file.write_text(f'WS_ECHO_PREFIX="{prefix}"\n')
    env = {
        "WS_ENV_FILE": str(env_file),
        "WS_GRACEFUL_TIMEOUT": str(GRACEFUL),
        "WS_DRAIN_SPREAD": str(SPREAD),
        "WS_LOG_LEVEL": "warning",
    }
    return ServerProcess(env, argv=GUNICORN)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with gunicorn(tmp_path, "v1: ") as proc:
        yield proc


async def open_clients(url: str, count: int, prefix: str) -> list[ClientConnection]:
    """`count` echo clients, each checked with one round trip."""

    async def one() -> ClientConnection:
        ws = await connect(url, open_timeout=scaled(10))
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), scaled(5)) == prefix + "hi"
        return ws

    clients: list[ClientConnection] = []
    for start in range(0, count, 40):  # in batches: the accept backlog stays small
        clients += await asyncio.gather(*(one() for _ in range(start, min(count, start + 40))))
    return clients


async def close_code(ws: ClientConnection, within: float) -> int | None:
    """The code of the close frame the server sent; None when the socket just dropped."""
    try:
        async with asyncio.timeout(scaled(within)):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    except TimeoutError:
        return -1


class Probers:
    """Open a new connection every few ms from several tasks; count what happens."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = asyncio.Event()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.refused: list[str] = []

    async def run(self, budget: int = 3000) -> None:
        while not self.stop.is_set() and sum(self.outcomes.values()) < budget:
            try:
                async with connect(self.url, open_timeout=scaled(10)) as ws:
                    try:
                        await ws.send("p")
                        reply = await asyncio.wait_for(ws.recv(), scaled(5))
                        self.outcomes[str(reply)] += 1
                    except ConnectionClosed:  # accepted, then 1012: not a refusal
                        self.outcomes["closed after open"] += 1
            except (InvalidHandshake, OSError, TimeoutError, EOFError) as exc:
                self.refused.append(repr(exc))
                self.outcomes["refused"] += 1
            await asyncio.sleep(0.004)


class SlowHandshake:
    """A raw WebSocket handshake sent in two halves, to be in flight at a chosen moment."""

    def __init__(self, port: int) -> None:
        self.port = port
        request = (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.first, self.rest = request[:30], request[30:]

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.first)
        await self.writer.drain()

    async def finish(self) -> tuple[bytes, int | None]:
        """Send the rest; return the status line and the code of the close frame that follows."""
        self.writer.write(self.rest)
        head, code = b"connection closed before an answer", None
        try:
            async with asyncio.timeout(scaled(GRACEFUL)):
                head = await self.reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 101"):
                    frame = await self.reader.readexactly(4)  # server frames: unmasked, short
                    if frame[0] == 0x88:
                        code = int.from_bytes(frame[2:4], "big")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.writer.close()
        return head.split(b"\r\n", 1)[0], code


def worker_pid(server: ServerProcess) -> int:
    return int(get_json(server.http_url + "/healthz")[1]["pid"])


async def test_sighup_replaces_workers_under_traffic_refusing_no_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    """SIGHUP with 120 clients open and probers connecting: no refusal, old clients 1012/1001."""
    old_pid = worker_pid(server)
    url = server.ws_url + "/ws"
    clients = await open_clients(url, CLIENTS, "v1: ")
    # Accepted by the old worker, request still incomplete when its shutdown begins.
    slow = SlowHandshake(server.port)
    await slow.start()
    probers = Probers(url)
    tasks = [asyncio.create_task(probers.run()) for _ in range(PROBERS)]
    await asyncio.sleep(0.3)
    # The reload re-reads WS_ENV_FILE: new workers answer with the new prefix.
    (tmp_path / "ws.env").write_text('WS_ECHO_PREFIX="v2: "\n')
    server.signal(signal.SIGHUP)
    try:
        await asyncio.sleep(0.5)
        slow_status, slow_code = await slow.finish()
        codes = await asyncio.gather(*(close_code(ws, GRACEFUL) for ws in clients))
        await asyncio.to_thread(
            wait_until, lambda: probers.outcomes["v2: p"] >= 20, 15, 0.05, "probes on new workers"
        )
    finally:
        probers.stop.set()
        await asyncio.gather(*tasks)
    assert set(codes) <= {1001, 1012}, collections.Counter(codes)
    assert slow_status == b"HTTP/1.1 101 Switching Protocols"
    assert slow_code in (1001, 1012)
    assert probers.refused == [], probers.outcomes
    assert probers.outcomes["v1: p"] > 0
    new_pid = worker_pid(server)
    assert new_pid != old_pid
    assert server.proc is not None and server.proc.poll() is None
    async with connect(url) as ws:
        await ws.send("after")
        assert await ws.recv() == "v2: after"
    assert "reload kept the running code" not in server.log_text()


async def test_sigterm_closes_every_client_and_exits_within_graceful_timeout(
    server: ServerProcess,
) -> None:
    """SIGTERM: each of 120 clients gets 1012/1001, gunicorn exits 0 before the timeout."""
    clients = await open_clients(server.ws_url + "/ws", CLIENTS, "v1: ")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(close_code(ws, GRACEFUL) for ws in clients))
    assert server.proc is not None
    code = await asyncio.to_thread(server.proc.wait, scaled(GRACEFUL))
    elapsed = time.monotonic() - started
    assert set(codes) <= {1001, 1012}, collections.Counter(codes)
    assert code == 0
    assert elapsed < GRACEFUL
    # Closes were spread out, not sent in one instant (WS_DRAIN_SPREAD).
    assert elapsed > SPREAD / 2


async def test_reload_with_bad_settings_keeps_serving_the_running_ones(
    server: ServerProcess, tmp_path: Path
) -> None:
    """SIGHUP after a bad edit: the master stays up and says why; the next good one applies."""
    url = server.ws_url + "/ws"
    (tmp_path / "ws.env").write_text("WS_PING_TIMEOUT=soon\n")
    server.signal(signal.SIGHUP)
    await asyncio.to_thread(
        wait_until, lambda: "reload kept the running code" in server.log_text(), 15
    )
    assert "WS_PING_TIMEOUT" in server.log_text()
    async with connect(url) as ws:
        await ws.send("x")
        assert await ws.recv() == "v1: x"
    (tmp_path / "ws.env").write_text('WS_ECHO_PREFIX="v3: "\n')
    server.signal(signal.SIGHUP)

    async def new_prefix() -> bool:
        async with connect(url) as ws:
            await ws.send("x")
            return await ws.recv() == "v3: x"

    deadline = time.monotonic() + scaled(15)
    while not await new_prefix():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        await asyncio.sleep(0.1)
    assert server.proc is not None and server.proc.poll() is None


def test_worker_dies_with_a_killed_master(server: ServerProcess) -> None:
    """kill -9 of the master: its worker exits too instead of holding the port."""
    pid = worker_pid(server)
    os.kill(server.pid, signal.SIGKILL)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_until(gone, GRACEFUL, what=f"worker {pid} to exit")


def test_worker_passes_websocket_options_and_a_shorter_graceful_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gunicorn worker hands uvicorn our options; uvicorn-worker alone passes none."""
    for name in list(os.environ):
        if name.startswith("WS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("WS_GRACEFUL_TIMEOUT", "12")
    monkeypatch.setenv("WS_MAX_MESSAGE_BYTES", "5000")
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn.access")]
    saved = [(lg.handlers, lg.level, lg.propagate) for lg in uvicorn_loggers]
    get_settings.cache_clear()
    cfg = Config()
    log = SimpleNamespace(error_log=logging.getLogger("t.e"), access_log=logging.getLogger("t.a"))
    try:
        worker = Worker(0, os.getpid(), [], None, 30, cfg, log)
        worker.tmp.close()
    finally:
        get_settings.cache_clear()
        for lg, (handlers, level, propagate) in zip(uvicorn_loggers, saved, strict=True):
            lg.handlers, lg.level, lg.propagate = handlers, level, propagate
    assert worker.config.timeout_graceful_shutdown == 12 - UVICORN_SHUTDOWN_MARGIN
    assert worker.config.ws_max_size == 5000
    assert worker.config.ws_per_message_deflate is False
    assert worker.config.ws is DirectWebSocketProtocol


async def test_ws_service_serve_stops_like_a_gunicorn_worker() -> None:
    """`ws-service serve` on SIGTERM: a handshake in flight still gets its 101, then 1012."""
    env = {"WS_GRACEFUL_TIMEOUT": str(GRACEFUL), "WS_DRAIN_SPREAD": "0.2"}
    with ServerProcess(env) as server:
        clients = await open_clients(server.ws_url + "/ws", 10, "Echo: ")
        slow = SlowHandshake(server.port)
        await slow.start()
        await asyncio.sleep(0.2)  # accepted, request still incomplete
        server.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        slow_status, slow_code = await slow.finish()
        codes = await asyncio.gather(*(close_code(ws, GRACEFUL) for ws in clients))
        assert server.proc is not None
        exit_code = await asyncio.to_thread(server.proc.wait, scaled(GRACEFUL))
    assert slow_status == b"HTTP/1.1 101 Switching Protocols"
    assert slow_code in (1001, 1012)
    assert set(codes) <= {1001, 1012}, collections.Counter(codes)
    # uvicorn re-raises the stop signal once its shutdown is complete (uvicorn.run does too).
    assert exit_code in (0, -signal.SIGTERM)
