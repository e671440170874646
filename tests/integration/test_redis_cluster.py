"""Several workers and instances sharing one Redis: one broadcast, one order, Redis faults.

Real processes only: a private redis-server on a free port (killed and restarted on the same
port by the fault test), gunicorn with real uvicorn workers or `ws-service serve`, and
WebSocket clients from the `websockets` library.

Spreading clients over workers: the kernel hands a new connection to whichever worker accepts
first, often the same one. Each test caps connections per worker (WS_MAX_CONNECTIONS) so that
30 clients on 3 workers capped at 14 leave at least 2 on every worker; a client refused with
503 just tries again. /healthz (pid and connection count of the worker that answers) proves
the spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import (
    BIN,
    ROOT,
    RedisServer,
    ServerProcess,
    base_env,
    free_port,
    get_json,
    scaled,
)

GUNICORN = [str(BIN / "gunicorn"), "-c", "config/gunicorn.conf.py", "service.app:app"]
QUIET = {"WS_LOG_LEVEL": "warning", "WS_DRAIN_SPREAD": "0", "WS_GRACEFUL_TIMEOUT": "5"}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def gunicorn(redis_url: str, *, workers: int, per_worker: int) -> ServerProcess:
    env = {
        **QUIET,
        "WS_WORKERS": str(workers),
        "WS_BROKER_URL": redis_url,
        "WS_MAX_CONNECTIONS": str(per_worker),
    }
    return ServerProcess(env, argv=GUNICORN, ready_path="/readyz")


class Client:
    """A WebSocket client that records every message it receives, in order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.got: list[str] = []
        self.closed = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.got.append(message if isinstance(message, str) else message.decode())
        except ConnectionClosed:
            pass
        self.closed = True

    def data(self, prefix: str = "msg:") -> list[str]:
        return [m for m in self.got if m.startswith(prefix)]

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def open_clients(url: str, count: int) -> list[Client]:
    """`count` clients of `url`; a 503 (worker full) is retried until another worker takes it."""
    clients: list[Client] = []
    deadline = time.monotonic() + scaled(30)
    while len(clients) < count:
        assert time.monotonic() < deadline, f"only {len(clients)} of {count} clients connected"
        try:
            ws = await connect(url, open_timeout=scaled(5))
        except InvalidStatus as exc:
            assert exc.response.status_code == 503, exc
            await asyncio.sleep(0.005)
            continue
        clients.append(Client(ws))
    return clients


@contextlib.asynccontextmanager
async def clients_of(url: str, count: int) -> AsyncIterator[list[Client]]:
    clients = await open_clients(url, count)
    try:
        yield clients
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def eventually(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + scaled(seconds)
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def census(server: ServerProcess, *, workers: int, total: int) -> dict[int, int]:
    """Connections per worker pid, from /healthz answers, once all workers have answered."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + scaled(20)
    while len(seen) < workers or sum(seen.values()) != total:
        assert time.monotonic() < deadline, f"/healthz showed {seen}, wanted {workers} workers"
        status, body = await asyncio.to_thread(get_json, server.http_url + "/healthz")
        assert status == 200
        seen[body["pid"]] = body["connections"]
    return seen


async def ready_everywhere(server: ServerProcess, pids: set[int]) -> None:
    """Wait until /readyz has answered 200 from every worker pid in `pids`."""
    ready: set[int] = set()
    deadline = time.monotonic() + scaled(30)
    while ready != pids:
        assert time.monotonic() < deadline, f"ready: {sorted(ready)} of {sorted(pids)}"
        status, body = await asyncio.to_thread(get_json, server.http_url + "/readyz")
        if status == 200:
            ready.add(body["pid"])
        else:
            ready.discard(body["pid"])
            await asyncio.sleep(0.05)


async def all_joined(clients: list[Client]) -> None:
    """Each client says hello and waits for it to come back through Redis: it has joined."""
    for i, client in enumerate(clients):
        await client.ws.send(f"hello:{i}")
    await eventually(
        lambda: all(f"hello:{i}" in c.got for i, c in enumerate(clients)), 15, "every hello back"
    )


def http_publish(server: ServerProcess, channel: str, body: str) -> int:
    request = urllib.request.Request(
        f"{server.http_url}/api/channels/{channel}/messages",
        data=body.encode(),
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=scaled(5)) as response:
        return int(response.status)


async def test_thirty_clients_on_three_workers_get_every_message_in_one_order(
    redis_server: RedisServer,
) -> None:
    """3 concurrent publishers (2 WebSocket, 1 HTTP) reach 30 clients on 3 workers, in one order."""
    per_publisher = 40
    with gunicorn(redis_server.url, workers=3, per_worker=14) as server:
        async with clients_of(server.ws_url + "/ws/broadcast", 30) as clients:
            spread = await census(server, workers=3, total=30)
            assert len(spread) == 3 and min(spread.values()) >= 2, spread
            await all_joined(clients)

            async def ws_publisher(client: Client, name: str) -> None:
                for i in range(per_publisher):
                    await client.ws.send(f"msg:{name}:{i:03d}")
                    if i % 8 == 0:
                        await asyncio.sleep(0.001)  # interleave with the other publishers

            def http_publisher() -> None:
                for i in range(per_publisher):
                    assert http_publish(server, "broadcast", f"msg:http:{i:03d}") == 202

            await asyncio.gather(
                ws_publisher(clients[0], "ws0"),
                ws_publisher(clients[1], "ws1"),
                asyncio.to_thread(http_publisher),
            )
            total = 3 * per_publisher
            await eventually(
                lambda: all(len(c.data()) >= total for c in clients), 20, "all messages"
            )
            first = clients[0].data()
            assert len(first) == total and len(set(first)) == total
            for name in ("ws0", "ws1"):  # one connection's messages keep their order
                assert [m for m in first if f":{name}:" in m] == [
                    f"msg:{name}:{i:03d}" for i in range(per_publisher)
                ]
            assert sorted(m for m in first if ":http:" in m) == [
                f"msg:http:{i:03d}" for i in range(per_publisher)
            ]
            for client in clients:
                assert client.data() == first  # one and the same order everywhere
            assert not any(c.closed for c in clients)


async def test_broadcast_crosses_two_instances_sharing_redis(redis_server: RedisServer) -> None:
    """Two separate instances on two ports, one Redis: a channel spans both, HTTP included."""
    env = {**QUIET, "WS_BROKER_URL": redis_server.url}
    with (
        ServerProcess(env, ready_path="/readyz") as one,
        ServerProcess(env, ready_path="/readyz") as two,
    ):
        assert one.port != two.port
        async with (
            clients_of(one.ws_url + "/ws/channels/room", 1) as (a,),
            clients_of(two.ws_url + "/ws/channels/room", 1) as (b,),
        ):
            await all_joined([a, b])
            await a.ws.send("msg:from one")
            await b.ws.send("msg:from two")
            assert await asyncio.to_thread(http_publish, two, "room", "msg:http on two") == 202
            await eventually(lambda: len(a.data()) == len(b.data()) == 3, 10, "3 on both")
            assert sorted(a.data()) == ["msg:from one", "msg:from two", "msg:http on two"]
            assert a.data() == b.data()
        _, one_health = get_json(one.http_url + "/healthz")
        _, two_health = get_json(two.http_url + "/healthz")
        assert one_health["pid"] != two_health["pid"]


async def test_redis_killed_mid_traffic_then_restarted(redis_server: RedisServer) -> None:
    """The service survives a Redis kill: /readyz 503 naming the broker, then 200, traffic back
    on every worker, and no client reconnects."""
    with gunicorn(redis_server.url, workers=3, per_worker=5) as server:
        async with clients_of(server.ws_url + "/ws/broadcast", 12) as clients:
            before = await census(server, workers=3, total=12)
            await all_joined(clients)
            ticker, sent = clients[0], [0]

            async def tick() -> None:
                while True:
                    await ticker.ws.send(f"msg:{sent[0]}")
                    sent[0] += 1
                    await asyncio.sleep(0.02)

            def ticks(client: Client) -> list[int]:
                return [int(m[4:]) for m in client.data()]

            ticking = asyncio.create_task(tick())
            try:
                await eventually(lambda: all(len(c.data()) >= 3 for c in clients), 10, "ticks")
                redis_server.kill()

                async def not_ready() -> dict[str, Any]:
                    while True:
                        status, body = await asyncio.to_thread(
                            get_json, server.http_url + "/readyz"
                        )
                        if status == 503:
                            return body
                        await asyncio.sleep(0.05)

                async with asyncio.timeout(scaled(10)):
                    body = await not_ready()
                assert body["broker"] == "down"
                assert any(r.startswith("redis broker down: ") for r in body["reasons"]), body
                assert get_json(server.http_url + "/healthz")[0] == 200
                await asyncio.sleep(0.5)  # traffic goes on during the outage

                redis_server.start()
                await ready_everywhere(server, set(before))
                mark = sent[0]
                await eventually(
                    lambda: all(ticks(c) and ticks(c)[-1] > mark for c in clients),
                    15,
                    "ticks after the restart on every client",
                )
            finally:
                ticking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticking
            assert not any(c.closed for c in clients)
            assert await census(server, workers=3, total=12) == before  # same workers, no
            assert server.proc is not None and server.proc.poll() is None  # reconnects


@pytest.mark.parametrize(
    ("argv", "workers"),
    [
        ([str(BIN / "ws-service"), "serve"], "3"),
        (GUNICORN, "3"),
        ([*GUNICORN[:1], "-w", "3", *GUNICORN[1:]], "1"),
    ],
    ids=["ws-service-serve", "gunicorn", "gunicorn-dash-w"],
)
def test_memory_broker_with_several_workers_is_refused(argv: list[str], workers: str) -> None:
    """memory:// with several workers (WS_WORKERS or gunicorn -w) stops with one line."""
    env = base_env(
        {"WS_WORKERS": workers, "WS_BROKER_URL": "memory://", "WS_PORT": str(free_port())}
    )
    done = subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=scaled(30)
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0, output
    lines = [line for line in output.splitlines() if "WS_BROKER_URL" in line]
    assert len(lines) == 1, output
    assert "memory://" in lines[0] and "redis://" in lines[0]
    assert "Traceback" not in output


def test_check_reaches_redis_and_never_prints_the_password(redis_server: RedisServer) -> None:
    """`ws-service check` pings Redis: 0 when it answers, 1 naming the broker when it does not."""
    good = base_env({"WS_BROKER_URL": redis_server.url})
    done = subprocess.run(
        [str(BIN / "ws-service"), "check", "-q"],
        env=good,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    dead = base_env({"WS_BROKER_URL": f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"})
    done = subprocess.run(
        [str(BIN / "ws-service"), "check"],
        env=dead,
        capture_output=True,
        text=True,
        timeout=scaled(30),
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "error: WS_BROKER_URL:" in output
    assert "hunter2-secret" not in output
