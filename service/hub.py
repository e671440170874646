"""The hub: which local connections listen to which channel, and fan-out to them.

Fan-out never awaits a client. Each subscriber's `offer()` either writes the message's
pre-built frame to its socket or buffers it in that connection's own bounded queue; a full
queue closes that one connection (1008 "slow consumer") and everyone else carries on. One
pump task reads the broker, so every local subscriber sees one order per channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Protocol

from .messages import Batch, Message
from .pubsub.base import Broker
from .stats import Stats

log = logging.getLogger("service.hub")

MAX_BATCH = 256
"""Messages the pump takes from the broker at once when they are already waiting."""


class Subscriber(Protocol):
    conn_id: str

    def offer(self, message: Message | Batch) -> bool:
        """Take `message` without awaiting; False when the connection is closing or closed."""
        ...


class Hub:
    """Local subscribers per channel, fed by one broker pump."""

    def __init__(self, *, broker: Broker, stats: Stats) -> None:
        self.broker = broker
        self.stats = stats
        self._channels: dict[str, set[Subscriber]] = {}
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.broker.connect()
        self._pump = asyncio.create_task(self._run_pump(), name="hub-pump")

    async def stop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass
            self._pump = None
        await self.broker.disconnect()

    @property
    def channels(self) -> int:
        return len(self._channels)

    def subscribers(self, channel: str) -> int:
        return len(self._channels.get(channel, ()))

    def local_subscribers(self) -> Iterator[Subscriber]:
        """Every local subscriber, once per channel it is in (metrics samples their queues)."""
        for subs in self._channels.values():
            yield from subs

    async def join(self, channel: str, subscriber: Subscriber) -> None:
        subs = self._channels.get(channel)
        if subs is None:
            # Registered before the await so a second joiner does not subscribe twice.
            subs = self._channels[channel] = set()
            subs.add(subscriber)
            await self.broker.subscribe(channel)
        else:
            subs.add(subscriber)

    async def leave(self, channel: str, subscriber: Subscriber) -> None:
        subs = self._channels.get(channel)
        if subs is None or subscriber not in subs:
            return
        subs.discard(subscriber)
        if not subs:
            del self._channels[channel]
            await self.broker.unsubscribe(channel)

    def publish(self, channel: str, message: Message) -> None:
        """Send `message` to every subscriber of `channel` on every worker; never awaits."""
        self.stats.published += 1
        self.broker.publish(channel, message)

    def deliver(self, channel: str, message: Message | Batch) -> int:
        """Hand `message` to this worker's subscribers of `channel`; returns how many took it."""
        subs = self._channels.get(channel)
        if not subs:
            return 0
        taken = 0
        # offer() never mutates the set (leaving happens later, in the connection's task),
        # so iterating without a copy is safe and saves an allocation per message.
        for sub in subs:
            if sub.offer(message):
                taken += 1
        stats = self.stats
        stats.messages_sent += taken * message.count
        # Publish-to-send latency, once per delivery: a batch is timed by its oldest message.
        oldest = message.messages[0] if isinstance(message, Batch) else message
        stats.delivery_latency.observe(time.time() - oldest.published_at)
        return taken

    def deliver_all(self, items: list[tuple[str, Message]]) -> None:
        """Deliver what the pump found waiting: one batch per channel, order kept within it."""
        if len(items) == 1:
            self.deliver(*items[0])
            return
        by_channel: dict[str, list[Message]] = {}
        for channel, message in items:
            by_channel.setdefault(channel, []).append(message)
        for channel, messages in by_channel.items():
            self.deliver(channel, messages[0] if len(messages) == 1 else Batch(messages))

    async def _run_pump(self) -> None:
        broker = self.broker
        while True:
            items = [await broker.next_published()]
            while len(items) < MAX_BATCH:
                item = broker.next_published_nowait()
                if item is None:
                    break
                items.append(item)
            try:
                self.deliver_all(items)
            except Exception:  # one bad subscriber must not stop delivery for everyone
                log.exception("fan-out failed")
