"""The in-process broker: one worker, no network. The default for `make run` and tests."""

from __future__ import annotations

import asyncio

from ..messages import Message
from .base import Broker, BrokerState


class MemoryBroker(Broker):
    """Published messages go straight into one FIFO that the local hub reads."""

    name = "memory"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, Message]] = asyncio.Queue()
        self._channels: set[str] = set()
        self._state = BrokerState.CONNECTING

    @property
    def state(self) -> BrokerState:
        return self._state

    async def connect(self) -> None:
        self._state = BrokerState.UP

    async def disconnect(self) -> None:
        self._state = BrokerState.CLOSED

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    def publish(self, channel: str, message: Message) -> None:
        # Like Redis, a channel nobody listens to drops the message.
        if channel in self._channels:
            self._queue.put_nowait((channel, message))

    async def next_published(self) -> tuple[str, Message]:
        return await self._queue.get()

    def next_published_nowait(self) -> tuple[str, Message] | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
