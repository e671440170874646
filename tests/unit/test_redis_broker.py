"""The Redis broker against a real, private redis-server: delivery, subscriptions and faults.

No HTTP here: brokers are driven directly. Each test gets its own redis-server on a free port
(killed and restarted on the same port where a test needs an outage).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from service.messages import Message
from service.pubsub import broker_from_url
from service.pubsub.base import BrokerState
from service.pubsub.redis import RedisBroker
from tests.support import RedisServer, free_port, require_binary, scaled, wait_until

MakeBroker = Callable[..., Awaitable[RedisBroker]]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def make_broker() -> AsyncIterator[MakeBroker]:
    """Connected brokers with a short backoff cap, all disconnected at the end."""
    made: list[RedisBroker] = []

    async def make(url: str, **options: Any) -> RedisBroker:
        broker = RedisBroker(url, **{"backoff_cap": 0.3, "outbox_limit": 10000, **options})
        made.append(broker)
        await broker.connect()
        return broker

    yield make
    for broker in made:
        await broker.disconnect()


async def receive(broker: RedisBroker, seconds: float = 5.0) -> tuple[str, Message]:
    async with asyncio.timeout(scaled(seconds)):
        return await broker.next_published()


async def nothing_received(broker: RedisBroker, within: float = 0.3) -> bool:
    try:
        async with asyncio.timeout(within):
            await broker.next_published()
    except TimeoutError:
        return True
    return False


async def reach(broker: RedisBroker, state: BrokerState, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while broker.state is not state:
        assert time.monotonic() < deadline, f"broker {broker.state} not {state}: {broker.problem}"
        await asyncio.sleep(0.02)


async def reach_count(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + scaled(seconds)
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def texts(items: list[tuple[str, Message]]) -> list[str]:
    return [message.data.decode() for _, message in items]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw-1@cache:6379/2", "redis://cache:6379/2"),
        ("rediss://ws:p%40ss@[::1]:6380/0?ssl_cert_reqs=none", "rediss://[::1]:6380/0"),
        ("redis://localhost", "redis://localhost:6379"),
    ],
)
def test_broker_names_its_endpoint_without_credentials(url: str, shown: str) -> None:
    """Logs and /readyz show scheme, host, port and db of Redis, never user or password."""
    broker = RedisBroker(url)
    assert broker.url == shown
    assert broker.problem == f"redis broker connecting to {shown}"


async def test_round_trip_keeps_text_and_binary(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """Text stays text and binary stays binary, byte for byte, with the channel unprefixed."""
    broker = await make_broker(redis_server.url)
    assert broker.state is BrokerState.UP and broker.problem == ""
    await broker.subscribe("room")
    sent_text = Message.of("héllo ✓")
    broker.publish("room", sent_text)
    broker.publish("room", Message.of(b"\x00\xff\x81 not utf-8"))
    channel, first = await receive(broker)
    _, second = await receive(broker)
    assert channel == "room"
    assert first.text and first.data == "héllo ✓".encode()
    assert first.published_at == sent_text.published_at
    assert not second.text and second.data == b"\x00\xff\x81 not utf-8"
    assert broker.published == 2 and broker.received == 2


async def test_waiting_messages_are_handed_over_without_awaiting(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """next_published_nowait() gives what has already arrived, in order, then None."""
    broker = await make_broker(redis_server.url)
    await broker.subscribe("room")
    assert broker.next_published_nowait() is None
    for i in range(3):
        broker.publish("room", Message.of(str(i)))
    got = [await receive(broker)]
    async with asyncio.timeout(scaled(5)):
        while len(got) < 3:
            item = broker.next_published_nowait()
            if item is None:
                await asyncio.sleep(0.01)
            else:
                got.append(item)
    assert texts(got) == ["0", "1", "2"]
    assert broker.next_published_nowait() is None


async def test_factory_picks_redis_for_redis_urls(redis_server: RedisServer) -> None:
    """broker_from_url gives a RedisBroker with the prefix and outbox limit asked for."""
    broker = broker_from_url(redis_server.url, prefix="x:", outbox_limit=7)
    assert isinstance(broker, RedisBroker)
    assert broker.prefix == "x:" and broker._outbox_limit == 7


async def test_two_brokers_on_one_redis_see_each_other(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """What one worker publishes reaches the other worker and comes back to itself."""
    a = await make_broker(redis_server.url)
    b = await make_broker(redis_server.url)
    await a.subscribe("room")
    await b.subscribe("room")
    a.publish("room", Message.of("from a"))
    b.publish("room", Message.of("from b"))
    got_a = [await receive(a), await receive(a)]
    got_b = [await receive(b), await receive(b)]
    assert sorted(texts(got_a)) == ["from a", "from b"]
    assert texts(got_a) == texts(got_b)  # one order for both


async def test_unsubscribe_stops_delivery(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """After unsubscribe a channel's messages no longer arrive; other channels still do."""
    a = await make_broker(redis_server.url)
    b = await make_broker(redis_server.url)
    await a.subscribe("room")
    b.publish("room", Message.of("1"))
    assert texts([await receive(a)]) == ["1"]
    await a.unsubscribe("room")
    # Redis handles one connection's commands in order: once "other" is confirmed, the
    # UNSUBSCRIBE before it is done too.
    await a.subscribe("other")
    b.publish("room", Message.of("2"))
    b.publish("other", Message.of("x"))
    channel, message = await receive(a)
    assert (channel, message.data) == ("other", b"x")
    assert await nothing_received(a)


async def test_prefix_separates_deployments(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """Two prefixes on one Redis are two deployments: same channel name, no crossing."""
    blue = await make_broker(redis_server.url, prefix="blue:")
    green = await make_broker(redis_server.url, prefix="green:")
    green_peer = await make_broker(redis_server.url, prefix="green:")
    await blue.subscribe("room")
    await green.subscribe("room")
    blue.publish("room", Message.of("blue only"))
    green_peer.publish("room", Message.of("green only"))
    assert texts([await receive(green)]) == ["green only"]
    assert texts([await receive(blue)]) == ["blue only"]
    assert await nothing_received(green)


async def test_resubscribes_after_redis_restart(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """After Redis restarts, messages flow again without any new subscribe() call."""
    a = await make_broker(redis_server.url)
    b = await make_broker(redis_server.url)
    await a.subscribe("room")
    redis_server.kill()
    await reach(a, BrokerState.DOWN)
    await reach(b, BrokerState.DOWN)
    assert a.problem.startswith("redis broker down: ")
    redis_server.start()
    await reach(a, BrokerState.UP)
    await reach(b, BrokerState.UP)
    b.publish("room", Message.of("after restart"))
    assert texts([await receive(a)]) == ["after restart"]
    assert a.reconnects == 1


async def test_subscribe_while_down_is_subscribed_once_back(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """A channel joined during an outage is subscribed by the reconnect, not forgotten."""
    a = await make_broker(redis_server.url)
    b = await make_broker(redis_server.url)
    redis_server.kill()
    await reach(a, BrokerState.DOWN)
    await a.subscribe("late")  # must neither raise nor hang
    redis_server.start()
    await reach(a, BrokerState.UP)
    await reach(b, BrokerState.UP)
    b.publish("late", Message.of("you made it"))
    assert texts([await receive(a)]) == ["you made it"]


async def test_publish_while_down_delivers_locally_and_counts(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """During an outage this worker's own subscribers still get its messages, counted."""
    a = await make_broker(redis_server.url)
    await a.subscribe("room")
    redis_server.kill()
    await reach(a, BrokerState.DOWN)
    for i in range(3):
        a.publish("room", Message.of(f"local {i}"))  # never raises, never blocks
    a.publish("nobody-here", Message.of("dropped like Redis would"))
    got = [await receive(a) for _ in range(3)]
    assert texts(got) == ["local 0", "local 1", "local 2"]
    assert a.local_only == 4
    assert await nothing_received(a)


async def test_connect_with_redis_down_does_not_raise_and_comes_up(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """Start-up with Redis down: connect() returns promptly, DOWN, then UP once Redis starts."""
    redis_server.kill()
    started = time.monotonic()
    broker = await make_broker(redis_server.url)
    assert time.monotonic() - started < scaled(3)
    assert broker.state is BrokerState.DOWN
    assert broker.problem.startswith("redis broker down: ")
    await broker.subscribe("room")
    broker.publish("room", Message.of("while down"))
    assert texts([await receive(broker)]) == ["while down"]
    redis_server.start()
    await reach(broker, BrokerState.UP)
    broker.publish("room", Message.of("through redis"))
    assert texts([await receive(broker)]) == ["through redis"]
    assert broker.published == 1 and broker.local_only == 1


async def test_silent_redis_is_noticed_and_in_flight_messages_are_counted(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """A Redis that stops answering (SIGSTOP: a mute network) is DOWN within two health
    intervals; the message in flight then is counted lost, not delivered twice."""
    a = await make_broker(redis_server.url, health_interval=0.2, socket_timeout=0.5)
    await a.subscribe("room")
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        a.publish("room", Message.of("into the void"))
        await reach(a, BrokerState.DOWN, 5)
        assert time.monotonic() - started < scaled(2)
        assert a.problem.startswith("redis broker down: ") and "TimeoutError" in a.problem
        await reach_count(lambda: a.publish_errors == 1)
    finally:
        os.kill(pid, signal.SIGCONT)
    await reach(a, BrokerState.UP)
    a.publish("room", Message.of("back"))
    assert texts([await receive(a)]) == ["back"]
    assert a.local_only == 0


async def test_state_changes_are_logged_once_not_per_message(
    redis_server: RedisServer, make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage with traffic gives one 'down' line and one 'up again' line."""
    caplog.set_level(logging.DEBUG, logger="service.pubsub.redis")
    a = await make_broker(redis_server.url)
    await a.subscribe("room")
    redis_server.kill()
    await reach(a, BrokerState.DOWN)
    for i in range(50):
        a.publish("room", Message.of(str(i)))
        await asyncio.sleep(0.005)  # let several reconnect attempts fail meanwhile
    redis_server.start()
    await reach(a, BrokerState.UP)
    above_debug = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert sum("redis broker down" in m for m in above_debug) == 1
    assert sum("redis broker up again" in m for m in above_debug) == 1
    assert "local_only=50" in next(m for m in above_debug if "up again" in m)


async def test_outbox_full_drops_new_messages_and_counts(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """Past the outbox limit new messages are dropped and counted; earlier ones keep order."""
    a = await make_broker(redis_server.url, outbox_limit=5)
    b = await make_broker(redis_server.url)
    await b.subscribe("room")
    for i in range(8):  # no await: the publisher task cannot drain meanwhile
        a.publish("room", Message.of(str(i)))
    assert a.outbox_dropped == 3
    got = [await receive(b) for _ in range(5)]
    assert texts(got) == ["0", "1", "2", "3", "4"]
    assert await nothing_received(b)


async def test_disconnect_flushes_the_outbox(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """Messages published just before disconnect still reach the other workers, in order."""
    a = await make_broker(redis_server.url)
    b = await make_broker(redis_server.url)
    await b.subscribe("room")
    for i in range(500):
        a.publish("room", Message.of(str(i)))
    await a.disconnect()
    assert a.state is BrokerState.CLOSED and a.problem == "redis broker closed"
    got = [await receive(b) for _ in range(500)]
    assert texts(got) == [str(i) for i in range(500)]
    assert a.publish_errors == 0


async def test_undecodable_payload_is_skipped_and_counted(
    redis_server: RedisServer, make_broker: MakeBroker
) -> None:
    """A foreign PUBLISH on our channel is skipped and counted; the next message arrives."""
    a = await make_broker(redis_server.url)
    await a.subscribe("room")
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await client.publish("ws:room", b"{not an envelope}")
        await client.publish("ws:room", b"")
    finally:
        await client.aclose()
    a.publish("room", Message.of("fine"))
    assert texts([await receive(a)]) == ["fine"]
    assert a.undecodable == 2


async def test_ping_answers_when_up_and_raises_when_down(redis_server: RedisServer) -> None:
    """ping() (what `ws-service check` uses) succeeds on a live Redis and raises on a dead one."""
    broker = RedisBroker(redis_server.url)
    await broker.ping()
    redis_server.kill()
    with pytest.raises(Exception, match="onnect"):
        await broker.ping()


# ---- TLS and passwords -------------------------------------------------------------------

PASSWORD = "pw-Sup3r-s3cret-value"


@pytest.fixture
def tls_redis() -> Iterator[tuple[int, Path]]:
    """A redis-server speaking TLS only, with a password; yields (port, CA file)."""
    import trustme

    binary = require_binary("redis-server")
    with tempfile.TemporaryDirectory(prefix="ws-redis-tls-") as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        paths = {name: Path(tmp) / f"{name}.pem" for name in ("ca", "cert", "key")}
        ca.cert_pem.write_to_path(paths["ca"])
        cert.cert_chain_pems[0].write_to_path(paths["cert"])
        cert.private_key_pem.write_to_path(paths["key"])
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port", "0",
                "--tls-port", str(port),
                "--bind", "127.0.0.1",
                "--tls-cert-file", str(paths["cert"]),
                "--tls-key-file", str(paths["key"]),
                "--tls-ca-cert-file", str(paths["ca"]),
                "--tls-auth-clients", "no",
                "--requirepass", PASSWORD,
                "--save", "",
                "--dir", tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(lambda: _listening(port), 10, what=f"TLS redis on {port}")
            yield port, paths["ca"]
        finally:
            proc.kill()
            proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


async def test_rediss_with_password_works_and_never_logs_the_password(
    tls_redis: tuple[int, Path], make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """rediss:// with a password in the URL round-trips; logs and problems never show it."""
    caplog.set_level(logging.DEBUG)
    port, ca = tls_redis
    good = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    bad = f"rediss://:wrong-{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    broker = await make_broker(good)
    assert broker.state is BrokerState.UP, broker.problem
    assert broker.url == f"rediss://127.0.0.1:{port}/0"
    await broker.subscribe("secure")
    broker.publish("secure", Message.of("over TLS"))
    assert texts([await receive(broker)]) == ["over TLS"]
    await broker.ping()

    refused = await make_broker(bad)
    assert refused.state is BrokerState.DOWN
    assert "redis broker down" in refused.problem
    assert PASSWORD not in refused.problem
    await refused.disconnect()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "redis broker down" in logged
    assert PASSWORD not in logged
    assert PASSWORD not in caplog.text
