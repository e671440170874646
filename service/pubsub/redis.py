"""The Redis broker: one order for every subscriber, on every worker and host sharing a Redis.

Each worker holds two connections to Redis, whatever its number of clients: a subscriber
connection, SUBSCRIBEd to `prefix + channel` while the channel has a local subscriber (never
PSUBSCRIBE), and a publisher connection. `publish()` never awaits: it appends to a bounded
outbox that one publisher task drains, sending everything queued in one round trip (a pipeline
of PUBLISH commands), so a worker's messages leave in the order they were published. Redis puts
the PUBLISHes of a channel in one order and every subscriber reads them in that order, the
publishing worker included: its own clients get its messages back from Redis, not straight,
or they would see a different order than everyone else. The wire format is
`Message.envelope()`: a kind byte (text or binary), the publish time, the raw payload.

Faults. One supervisor task owns both connections; the broker owns the set of wanted channels.
Redis down at start-up, dying mid-traffic and restarting are one case: the broker goes DOWN
(readiness fails with "redis broker down: <reason>"; logged once per outage), reconnects with
capped full-jitter exponential backoff (0.1 s doubling to 5 s), SUBSCRIBEs again to every
channel still wanted (including those subscribed while it was down), and is UP again once
Redis has answered after those SUBSCRIBEs. redis-py's own retries are off: they would hide an
outage for seconds on the publish path. A silent network (no FIN, no RST) is caught by a PING
after `health_interval` to twice that of silence on the subscriber connection (redis-py's
`health_check_interval` is off: its PING reply would be read as a message on a subscribed
connection), and by `socket_timeout`, which bounds every other exchange with Redis: a
connect (TCP, TLS, AUTH), a batch of PUBLISH and its replies, a SUBSCRIBE's confirmation.

What happens to messages while Redis is unreachable (the decision, also in docs/redis.md):
- `publish()` while DOWN hands the message to this worker's own subscribers only, at once, so
  the clients of one worker keep chatting. Nothing is kept for later: a replay after the outage
  would arrive out of order with what the others said meanwhile. Counted in `local_only`.
- Messages still in the outbox when the outage is noticed are delivered the same way (counted
  in `local_only`). Messages already sent and not yet acknowledged may or may not have reached
  Redis: they are neither re-sent nor delivered locally (at most once); counted in
  `publish_errors`.
- A full outbox (Redis up but slower than the publishers) drops the new message, counted in
  `outbox_dropped`: what was already accepted keeps its order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import time
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..messages import Message
from .base import Broker, BrokerState

log = logging.getLogger("service.pubsub.redis")

_BATCH_MESSAGES = 1000  # PUBLISH commands per round trip
_BATCH_BYTES = 1 << 20  # and about this many payload bytes
_MAX_EXPONENT = 16  # 0.1 s * 2**16 is far beyond any sensible cap


def _publish_command(channel: bytes, data: bytes) -> bytes:
    """PUBLISH in RESP, built directly: redis-py's general packer costs more than the rest."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel),
        channel,
        len(data),
        data,
    )


def safe_url(url: str) -> str:
    """The URL without user or password: what logs and /readyz may show."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.scheme}://{host}:{port}{parts.path}"


class RedisBroker(Broker):
    """Redis Pub/Sub behind the broker interface; see the module docstring for faults."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ws:",
        outbox_limit: int = 10000,
        inbound_limit: int = 10000,
        socket_timeout: float = 2.0,
        health_interval: float = 5.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        flush_timeout: float = 2.0,
    ) -> None:
        options: dict[str, Any] = {
            # Each exchange gets our own timer instead: redis-py's socket timeout would wrap
            # every write in a task of its own, a cost per PUBLISH batch.
            "socket_timeout": None,
            "socket_connect_timeout": socket_timeout,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),  # one attempt: we own reconnection and its backoff
            "health_check_interval": 0,
            **parse_url(url),  # host, port, db, user, password, TLS options (query string)
        }
        # Pub/sub messages are plain arrays of bytes in RESP2; the listener relies on it.
        options["protocol"] = 2
        options["decode_responses"] = False
        self._connection_class: type[AbstractConnection] = options.pop(
            "connection_class", Connection
        )
        self._options = options
        self._password = str(options.get("password") or "")
        self.url = safe_url(url)
        self.prefix = prefix
        self._prefix = prefix.encode()
        self._outbox_limit = outbox_limit
        self._socket_timeout = socket_timeout
        self._health_interval = health_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._flush_timeout = flush_timeout

        self._state = BrokerState.CONNECTING
        self._reason = ""
        self._wanted: set[str] = set()
        self._confirm: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._outbox: collections.deque[tuple[str, Message]] = collections.deque()
        self._in_flight = 0
        self._inbound: asyncio.Queue[tuple[str, Message]] = asyncio.Queue(inbound_limit)
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # the first connection attempt has an outcome
        self._idle = asyncio.Event()  # the publisher has nothing left to send
        self._pub: AbstractConnection | None = None
        self._sub: AbstractConnection | None = None
        self._fault: asyncio.Future[str] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._down_since = 0.0
        self._replies = 0  # replies read on the subscriber connection, for the watchdog
        self._outbox_full = False

        # Counters for /metrics (read as plain attributes, never reset).
        self.published = 0  # PUBLISHes acknowledged by Redis
        self.received = 0  # messages read from Redis
        self.local_only = 0  # delivered to this worker's subscribers only (Redis down)
        self.publish_errors = 0  # lost: in flight when Redis failed, or after close
        self.outbox_dropped = 0  # refused: outbox full
        self.inbound_dropped = 0  # local-only deliveries refused: inbound queue full
        self.undecodable = 0  # payloads on our channels that are not our envelope
        self.reconnects = 0  # outages recovered from

    # State, as /readyz and the metrics see it.

    @property
    def state(self) -> BrokerState:
        return self._state

    @property
    def problem(self) -> str:
        if self._state is BrokerState.UP:
            return ""
        if self._state is BrokerState.DOWN:
            return f"redis broker down: {self._reason}"
        if self._state is BrokerState.CONNECTING:
            return f"redis broker connecting to {self.url}"
        return "redis broker closed"

    @property
    def outbox(self) -> int:
        """Messages accepted and not yet sent to Redis."""
        return len(self._outbox) + self._in_flight

    @property
    def channels(self) -> int:
        """Channels this worker wants from Redis."""
        return len(self._wanted)

    # The six methods.

    async def connect(self) -> None:
        if self._supervisor is not None:
            return
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-broker")
        self._publisher = asyncio.create_task(self._publish_loop(), name="redis-publisher")
        # Let the first attempt decide whether the worker starts ready, briefly: an unreachable
        # Redis must not hold up start-up (the supervisor keeps trying in the background).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._socket_timeout * 2):
                await self._settled.wait()

    async def disconnect(self) -> None:
        if self._state is BrokerState.CLOSED:
            return
        if self.outbox and self._state is BrokerState.UP:
            self._idle.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_timeout):
                    await self._idle.wait()
        unsent = self.outbox
        for task in (self._publisher, self._supervisor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._supervisor = self._publisher = None
        self._state = BrokerState.CLOSED
        if unsent:
            self.publish_errors += unsent
            log.warning("redis broker closed with %d unsent message(s) url=%s", unsent, self.url)
        else:
            log.info("redis broker closed url=%s", self.url)

    async def subscribe(self, channel: str) -> None:
        """Record the wish; when connected, SUBSCRIBE and wait (briefly) for Redis to confirm."""
        self._wanted.add(channel)
        conn = self._sub
        # Not connected: the next connection subscribes to everything wanted. The check and
        # the write below happen without a pause, so the connection cannot change between.
        if conn is None or not conn.is_connected:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._confirm.setdefault(channel, collections.deque())
        waiters.append(waiter)
        try:
            async with asyncio.timeout(self._socket_timeout):
                await conn.send_command(
                    "SUBSCRIBE", self._prefix + channel.encode(), check_health=False
                )
                await waiter
        except Exception as exc:
            # A broken connection is the supervisor's to notice; it subscribes again on
            # reconnect, so the client's join goes on regardless.
            log.debug("subscribe not confirmed channel=%s: %s", channel, self._describe(exc))
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters and self._confirm.get(channel) is waiters:
                del self._confirm[channel]

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        conn = self._sub
        if conn is None or not conn.is_connected:
            return
        try:
            async with asyncio.timeout(self._socket_timeout):
                await conn.send_command(
                    "UNSUBSCRIBE", self._prefix + channel.encode(), check_health=False
                )
        except Exception as exc:
            log.debug("unsubscribe not sent channel=%s: %s", channel, self._describe(exc))

    def publish(self, channel: str, message: Message) -> None:
        state = self._state
        if state is BrokerState.UP:
            if len(self._outbox) >= self._outbox_limit:
                self.outbox_dropped += 1
                if not self._outbox_full:
                    self._outbox_full = True
                    log.warning(
                        "redis broker outbox full (%d): dropping new messages url=%s",
                        self._outbox_limit,
                        self.url,
                    )
                return
            self._outbox.append((channel, message))
            self._wake.set()
        elif state is BrokerState.CLOSED:
            self.publish_errors += 1
        else:
            self.local_only += 1
            self._deliver_locally(channel, message)

    async def next_published(self) -> tuple[str, Message]:
        return await self._inbound.get()

    def next_published_nowait(self) -> tuple[str, Message] | None:
        try:
            return self._inbound.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def ping(self) -> None:
        """One PING on a fresh connection, within `socket_timeout`; raises when no PONG."""
        conn = self._connection_class(**self._options)
        try:
            async with asyncio.timeout(self._socket_timeout):
                await conn.connect()
                await conn.send_command("PING", check_health=False)
                reply = await conn.read_response(timeout=math.inf)
            if reply != b"PONG":
                raise ConnectionError(f"unexpected reply to PING: {reply!r:.60}")
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect()

    # The supervisor: one connection pair at a time, backoff between them.

    async def _supervise(self) -> None:
        failures = 0
        while True:
            reason = await self._session()
            if self._state is BrokerState.UP:
                failures = 0  # it worked for a while: retry promptly
            self._went_down(reason)
            failures += 1
            ceiling = self._backoff_base * 2 ** min(failures - 1, _MAX_EXPONENT)
            await asyncio.sleep(random.uniform(0, min(self._backoff_cap, ceiling)))

    async def _session(self) -> str:
        """Connect, subscribe to everything wanted, listen; return why it ended."""
        pub = self._connection_class(**self._options)
        sub = self._connection_class(**self._options)
        fault: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        listener: asyncio.Task[None] | None = None
        closing = False
        try:
            for each in (pub, sub):
                async with asyncio.timeout(self._socket_timeout):  # TCP, TLS, AUTH, SELECT
                    await each.connect()
            self._fault = fault
            # From here subscribe() writes to `sub` itself; the snapshot taken in the same
            # step covers every channel wanted before, so none falls between the two.
            self._pub, self._sub = pub, sub
            commands: list[tuple[Any, ...]] = []
            if self._wanted:
                commands.append(("SUBSCRIBE", *(self._prefix + c.encode() for c in self._wanted)))
            commands.append(("PING",))  # its answer means the SUBSCRIBEs are done: UP
            async with asyncio.timeout(self._socket_timeout):
                await sub.send_packed_command(sub.pack_commands(commands), check_health=False)
            listener = asyncio.create_task(self._listen(sub), name="redis-listener")
            return await self._watch(sub, listener, fault)
        except asyncio.CancelledError:
            closing = True
            raise
        except Exception as exc:
            return self._describe(exc)
        finally:
            self._pub = self._sub = None
            self._fault = None
            if listener is not None and not listener.done():
                listener.cancel()
                await asyncio.wait({listener})
            for conn in (sub, pub):
                # Closing: a clean close (TLS close_notify included). Failing: the peer is
                # gone or mute, waiting for it would only delay the reconnect.
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=not closing)

    async def _watch(
        self, conn: AbstractConnection, listener: asyncio.Task[None], fault: asyncio.Future[str]
    ) -> str:
        """Wait for the session to fail; PING after a silence, give up after two."""
        ends: set[asyncio.Future[Any]] = {listener, fault}
        heard = -1
        pinged = False
        while True:
            await asyncio.wait(
                ends, timeout=self._health_interval, return_when=asyncio.FIRST_COMPLETED
            )
            if fault.done():
                return fault.result()
            if listener.done():
                exc = listener.exception()
                return self._describe(exc) if exc else "listener stopped"
            if self._replies != heard or self._inbound.full():  # alive, or we are the slow one
                heard, pinged = self._replies, False
            elif pinged:
                return f"TimeoutError: no answer from redis in {2 * self._health_interval:g}s"
            else:
                pinged = True
                async with asyncio.timeout(self._socket_timeout):
                    await conn.send_command("PING", check_health=False)

    async def _listen(self, conn: AbstractConnection) -> None:
        prefix_len = len(self._prefix)
        inbound = self._inbound
        while True:
            # No timeout per read (a timer per message costs): _watch() minds the silences.
            reply = await conn.read_response(
                disable_decoding=True, timeout=math.inf, disconnect_on_error=False
            )
            self._replies += 1
            if type(reply) is not list:
                if reply == b"PONG":  # not subscribed to anything: a plain PONG
                    self._set_up()
                continue
            kind = reply[0]
            if kind == b"message":
                try:
                    item = (reply[1][prefix_len:].decode(), Message.from_envelope(reply[2]))
                except ValueError:  # includes UnicodeDecodeError
                    self._skip(reply[1])
                    continue
                self.received += 1
                try:
                    inbound.put_nowait(item)
                except asyncio.QueueFull:  # the hub is behind: let Redis buffer for us
                    await inbound.put(item)
            elif kind == b"pong":
                self._set_up()
            elif kind == b"subscribe":
                self._confirmed(reply[1][prefix_len:].decode())

    async def _publish_loop(self) -> None:
        outbox = self._outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox and self._state is BrokerState.UP and self._pub is not None:
                conn = self._pub
                batch: list[tuple[str, Message]] = []
                size = 0
                while outbox and len(batch) < _BATCH_MESSAGES and size < _BATCH_BYTES:
                    item = outbox.popleft()
                    batch.append(item)
                    size += len(item[1].data)
                self._in_flight = len(batch)
                try:
                    await self._send(conn, batch)
                except Exception as exc:
                    self.publish_errors += self._in_flight
                    if conn is self._pub and self._fault is not None and not self._fault.done():
                        self._fault.set_result(self._describe(exc))
                    break
                finally:
                    self._in_flight = 0
            if not outbox:
                self._outbox_full = False
            self._idle.set()

    async def _send(self, conn: AbstractConnection, batch: list[tuple[str, Message]]) -> None:
        prefix = self._prefix
        commands = [_publish_command(prefix + ch.encode(), msg.envelope()) for ch, msg in batch]
        async with asyncio.timeout(self._socket_timeout):  # one timer for the whole batch
            await conn.send_packed_command(commands, check_health=False)
            for _ in batch:
                await conn.read_response(disable_decoding=True, timeout=math.inf)
                self.published += 1
                self._in_flight -= 1

    # Transitions, each logged once.

    def _set_up(self) -> None:
        previous = self._state
        if previous is BrokerState.UP:
            return
        self._state = BrokerState.UP
        self._reason = ""
        self._settled.set()
        if previous is BrokerState.DOWN:
            self.reconnects += 1
            log.warning(
                "redis broker up again url=%s after=%.1fs channels=%d local_only=%d "
                "publish_errors=%d",
                self.url,
                time.monotonic() - self._down_since,
                len(self._wanted),
                self.local_only,
                self.publish_errors,
            )
        else:
            log.info("redis broker up url=%s channels=%d", self.url, len(self._wanted))

    def _went_down(self, reason: str) -> None:
        previous = self._state
        self._state = BrokerState.DOWN
        self._reason = reason
        self._settled.set()
        self._idle.set()
        # Queued, never sent: this worker's subscribers still get them.
        while self._outbox:
            channel, message = self._outbox.popleft()
            self.local_only += 1
            self._deliver_locally(channel, message)
        for waiters in self._confirm.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._confirm.clear()
        if previous is not BrokerState.DOWN:
            self._down_since = time.monotonic()
            log.warning(
                "redis broker down url=%s reason=%r: delivering to this worker's subscribers "
                "only, reconnecting in the background",
                self.url,
                reason,
            )
        else:
            log.debug("redis broker still down url=%s reason=%r", self.url, reason)

    # Small helpers.

    def _deliver_locally(self, channel: str, message: Message) -> None:
        if channel in self._wanted:
            try:
                self._inbound.put_nowait((channel, message))
            except asyncio.QueueFull:
                self.inbound_dropped += 1

    def _confirmed(self, channel: str) -> None:
        waiters = self._confirm.get(channel)
        if waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _skip(self, raw_channel: bytes) -> None:
        self.undecodable += 1
        if self.undecodable == 1:  # once: a foreign publisher is a deployment fact, not news
            log.warning(
                "redis broker skipped a message that is not a ws-service envelope "
                "channel=%r url=%s (counted from now on, not logged)",
                raw_channel[:200],
                self.url,
            )

    def _describe(self, exc: BaseException) -> str:
        detail = str(exc)
        if not detail and isinstance(exc, TimeoutError):  # our own timers say nothing
            detail = f"no answer from redis within {self._socket_timeout:g}s"
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        if self._password:
            text = text.replace(self._password, "****")
        return text[:300]
