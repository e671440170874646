"""The broker interface: encode/broadcaster's six methods, with two changes.

`publish` does not await: it hands the message to the broker's own ordered outbox, so a
WebSocket's inbound path never blocks on Redis and every message leaves a worker in the order
it was published. And the broker owns its subscriptions: `subscribe` records the wish, and a
broker that reconnects subscribes again to everything still wanted.
"""

from __future__ import annotations

import abc
import enum

from ..messages import Message


class BrokerState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class Broker(abc.ABC):
    """Moves (channel, message) pairs between the hubs of all workers sharing it."""

    name = "broker"

    @property
    @abc.abstractmethod
    def state(self) -> BrokerState:
        """UP when published messages reach other workers; readiness follows it."""

    @property
    def problem(self) -> str:
        """A short reason when not UP, for /readyz."""
        return "" if self.state is BrokerState.UP else f"broker {self.state.value}"

    @abc.abstractmethod
    async def connect(self) -> None:
        """Start; must not raise when the backend is unreachable: retry in the background."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Stop, flushing what is already published when the backend is up."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Receive messages of `channel` from now on (called for its first local subscriber)."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving `channel` (called when its last local subscriber leaves)."""

    @abc.abstractmethod
    def publish(self, channel: str, message: Message) -> None:
        """Queue `message` for every subscriber of `channel` everywhere; never awaits."""

    @abc.abstractmethod
    async def next_published(self) -> tuple[str, Message]:
        """The next (channel, message) for this worker, in the broker's one order."""

    def next_published_nowait(self) -> tuple[str, Message] | None:
        """The next (channel, message) if one is already waiting, else None (for batching)."""
        return None

    async def ping(self) -> None:  # noqa: B027 - optional hook with a sensible default
        """Raise when the backend does not answer (used by `ws-service check`)."""
