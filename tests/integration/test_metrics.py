"""/metrics from real servers: summed over gunicorn workers, dead workers dropped, JSON logs.

Scrapes are parsed with prometheus-client's own parser. Workers sync their figures once a
second, so every check of a sum waits for it rather than reading once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service import __version__
from tests.support import BIN, RedisServer, ServerProcess, http_get, scaled, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CLIENTS = 30
WORKERS = 3


def scrape(srv: ServerProcess) -> Samples:
    status, text = http_get(srv.http_url + "/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def settle(srv: ServerProcess, what: str, timeout: float = 10, **expected: float) -> Samples:
    """Scrape until every `name=value` in `expected` holds (workers sync once a second)."""
    last: dict[str, float] = {}

    def check() -> Samples | None:
        samples = scrape(srv)
        last.clear()
        last.update({name: samples.get((name, ()), float("nan")) for name in expected})
        return samples if last == expected else None

    try:
        result: Samples = wait_until(check, timeout, interval=0.2, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: wanted {expected}, last scrape {last}") from None
    return result


def worker_pids(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children") as f:
        return [int(pid) for pid in f.read().split()]


def established_per_worker(master: int, port: int) -> dict[int, int]:
    """How many established TCP connections on `port` each worker holds (from /proc)."""
    inodes: set[str] = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    counts: dict[int, int] = {}
    for pid in worker_pids(master):
        held = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


class Crowd:
    """WebSocket clients in one channel, each counting what it receives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clients: list[ClientConnection] = []
        self.received: list[list[str]] = []
        self.readers: list[asyncio.Task[None]] = []
        self.sent = 0

    async def open(self, n: int) -> None:
        # One after the other: a burst of connects is all accepted by whichever worker wakes
        # first, while a sequence spreads over the workers.
        self.clients = [await connect(self.url) for _ in range(n)]
        self.received = [[] for _ in self.clients]
        self.readers = [
            asyncio.create_task(self._read(ws, inbox))
            for ws, inbox in zip(self.clients, self.received, strict=True)
        ]

    async def _read(self, ws: ClientConnection, inbox: list[str]) -> None:
        try:
            async for message in ws:
                inbox.append(str(message))
        except ConnectionClosed:
            pass

    async def send(self, index: int, text: str) -> None:
        await self.clients[index].send(text)
        self.sent += 1

    async def wait_all_received(self, text: str, seconds: float) -> bool:
        deadline = time.monotonic() + scaled(seconds)
        while time.monotonic() < deadline:
            if all(text in inbox for inbox, ws in zip(self.received, self.clients, strict=True)):
                return True
            await asyncio.sleep(0.02)
        return False

    async def join_everyone(self) -> None:
        """Probe until one message reaches every client: all subscriptions are live."""
        for attempt in range(50):
            probe = f"probe-{attempt}"
            await self.send(0, probe)
            if await self.wait_all_received(probe, 0.5):
                return
        raise AssertionError("subscriptions never all became live")

    @property
    def total_received(self) -> int:
        return sum(len(inbox) for inbox in self.received)

    def alive(self) -> list[int]:
        return [i for i, ws in enumerate(self.clients) if ws.close_code is None]

    async def close(self) -> None:
        await asyncio.gather(*(ws.close() for ws in self.clients))
        await asyncio.gather(*self.readers)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def gunicorn(redis: RedisServer, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        "WS_WORKERS": str(WORKERS),
        "WS_BROKER_URL": redis.url,
        "WS_LOG_FORMAT": "json",
        "WS_GRACEFUL_TIMEOUT": "5",
        "WS_DRAIN_SPREAD": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    argv = [str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "service.app:app"]
    with ServerProcess(env, argv=argv) as srv:
        settle(srv, "every worker up", timeout=20, ws_workers=WORKERS, ws_broker_up=1)
        yield srv


async def test_three_workers_sum_exactly_and_a_killed_worker_stops_counting(
    gunicorn: ServerProcess, redis: RedisServer
) -> None:
    """30 clients over 3 workers: exact sums; kill -9 drops a worker's clients; then 0."""
    srv = gunicorn
    crowd = Crowd(srv.ws_url + "/ws/channels/metrics-room")
    await crowd.open(CLIENTS)
    spread = established_per_worker(srv.pid, srv.port)
    assert sum(spread.values()) == CLIENTS
    assert sum(1 for n in spread.values() if n) >= 2, f"clients not spread: {spread}"

    await crowd.join_everyone()
    for round_ in range(2):
        await asyncio.gather(*(crowd.send(i, f"m{round_}-{i}") for i in range(CLIENTS)))
    for i in range(CLIENTS):
        assert await crowd.wait_all_received(f"m1-{i}", 10)
    samples = settle(
        srv,
        "sums over the workers",
        ws_connections_active=CLIENTS,
        ws_connections_total=CLIENTS,
        ws_workers=WORKERS,
        ws_broker_up=1,
        ws_messages_received_total=crowd.sent,
        ws_messages_sent_total=crowd.total_received,
        ws_messages_published_total=crowd.sent,
    )
    assert crowd.total_received >= 2 * CLIENTS * CLIENTS  # each client got all 60 messages
    assert value(samples, "ws_rejected_total", reason="unauthorized") == 0

    # kill -9 the worker holding the most clients: they drop, it stops counting at once.
    victim, held = max(spread.items(), key=lambda item: item[1])
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + scaled(10)
    while len(crowd.alive()) != CLIENTS - held:  # the clients' tasks must run to see it
        assert time.monotonic() < deadline, f"{len(crowd.alive())} clients still open"
        await asyncio.sleep(0.05)
    settle(
        srv,
        "dead worker dropped",
        ws_connections_active=CLIENTS - held,
        ws_workers=WORKERS,  # gunicorn has started a new one
        ws_messages_received_total=crowd.sent,  # a dead worker's counters still count
        ws_connections_total=CLIENTS,
    )

    # The broker going away shows in ws_broker_up, and coming back too.
    redis.kill()
    settle(srv, "broker down", ws_broker_up=0)
    redis.start()
    settle(srv, "broker up again", timeout=20, ws_broker_up=1)

    survivors = len(crowd.alive())
    await crowd.close()
    samples = settle(srv, "everyone gone", ws_connections_active=0)
    assert value(samples, "ws_closes_total", code="1000") == survivors

    # Every line the master and workers wrote is one JSON object; connection lines carry
    # their fields.
    lines = [json.loads(line) for line in srv.log_text().splitlines() if line.strip()]
    opened = [e for e in lines if e["message"] == "connection opened"]
    closed = [e for e in lines if e["message"] == "connection closed" and e.get("code") == 1000]
    assert len(opened) == CLIENTS and len(closed) == survivors
    assert all(e["path"] == "/ws/channels/metrics-room" and e["conn"] for e in opened)
    assert {e["pid"] for e in opened} == {p for p, n in spread.items() if n}
    assert any(e["logger"] == "gunicorn.error" for e in lines)
    scrapes = [e for e in lines if e["logger"] == "uvicorn.access" and e["path"] == "/metrics"]
    assert scrapes and all(e["method"] == "GET" and e["status"] == 200 for e in scrapes)


def test_directory_is_emptied_when_gunicorn_starts(tmp_path: Path) -> None:
    """A previous run's files are gone at start: no stale counts, no phantom connections."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    stale = (
        "from prometheus_client import Counter, Gauge\n"
        "Counter('ws_connections', 'x').inc(1000)\n"
        "Gauge('ws_connections_active', 'x', multiprocess_mode='livesum').set(77)\n"
    )
    subprocess.run(
        [sys.executable, "-c", stale],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        check=True,
    )
    assert len(list(directory.glob("*.db"))) == 2
    argv = [str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "service.app:app"]
    with ServerProcess({"PROMETHEUS_MULTIPROC_DIR": str(directory)}, argv=argv) as srv:
        samples = settle(srv, "fresh figures", ws_connections_active=0, ws_connections_total=0)
        assert value(samples, "ws_workers") == 1
        # Only the running worker's files are there.
        pids = {name.stem.rsplit("_", 1)[-1] for name in directory.glob("*.db")}
        assert pids == {str(p) for p in worker_pids(srv.pid)}


def _raw_subscriber(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response
    return sock


@pytest.fixture
def single() -> Iterator[ServerProcess]:
    env = {"WS_SEND_QUEUE": "100000", "WS_MAX_MESSAGE_BYTES": "65536", "WS_LOG_LEVEL": "warning"}
    with ServerProcess(env) as srv:
        yield srv


async def test_one_process_counts_messages_closes_and_refusals(single: ServerProcess) -> None:
    """`ws-service serve` (no multiprocess directory) reads its figures at scrape time."""
    srv = single
    async with connect(srv.ws_url + "/ws", max_size=None) as ws:
        for n in range(3):
            await ws.send(f"hello {n}")
            assert await asyncio.wait_for(ws.recv(), scaled(5)) == f"Echo: hello {n}"
        assert value(scrape(srv), "ws_connections_active") == 1
        await ws.send("y" * 70_000)  # over WS_MAX_MESSAGE_BYTES: closed 1009
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), scaled(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with pytest.raises(InvalidStatus, match="404"):
        async with connect(srv.ws_url + "/not-a-socket"):
            pass

    samples = settle(srv, "after the client", ws_connections_active=0, ws_connections_total=1)
    assert value(samples, "ws_messages_received_total") == 3  # the oversized one: never read
    assert value(samples, "ws_messages_sent_total") == 3
    assert value(samples, "ws_message_size_bytes_sum") == 3 * len("hello 0")
    assert value(samples, "ws_closes_total", code="1009") == 1
    assert value(samples, "ws_rejected_total", reason="not_found") == 1
    assert value(samples, "ws_workers") == 1 and value(samples, "ws_broker_up") == 1
    assert value(samples, "ws_connections_limit") == 10000
    assert value(samples, "ws_worker_resident_memory_bytes") > 10_000_000
    assert value(samples, "ws_build_info", version=__version__) == 1


async def test_sizes_latency_and_queue_depth_come_from_the_hot_path(
    single: ServerProcess,
) -> None:
    """Inbound sizes, publish-to-send latency and a stuck reader's queue reach /metrics."""
    srv = single
    stuck = _raw_subscriber(srv.port, "/ws/channels/deep")
    try:
        async with connect(srv.ws_url + "/ws/channels/deep", max_size=None) as ws:
            payload = "x" * 50_000
            for _ in range(120):  # 6 MB to a client that reads nothing: past the socket buffers
                await ws.send(payload)
                await asyncio.wait_for(ws.recv(), scaled(5))
            samples = scrape(srv)
            assert value(samples, "ws_send_queue_depth_max") > 0
            assert value(samples, "ws_send_queue_backlogged_connections") == 1
            assert value(samples, "ws_send_queue_limit") == 100000
    finally:
        stuck.close()

    samples = settle(srv, "after the clients", ws_connections_active=0)
    assert value(samples, "ws_messages_received_total") == 120
    assert value(samples, "ws_message_size_bytes_count") == 120
    assert value(samples, "ws_message_size_bytes_bucket", le="16384.0") == 0
    assert value(samples, "ws_message_size_bytes_bucket", le="65536.0") == 120
    assert value(samples, "ws_message_size_bytes_sum") == 120 * 50_000
    # One delivery per message here: the sender waited for each one to come back.
    assert value(samples, "ws_delivery_latency_seconds_count") == 120
    assert 0 < value(samples, "ws_delivery_latency_seconds_sum") < 120 * scaled(1)
