"""One connected client: what happens to each message it sends, with no I/O of its own."""

from __future__ import annotations

import time
from typing import Protocol

from .errors import MessageTooBig, PolicyViolation
from .hub import Hub
from .limits import TokenBucket
from .messages import Batch, Message
from .stats import Stats


class Link(Protocol):
    def offer(self, message: Message | Batch) -> bool: ...

    def fail(self, exc: BaseException) -> None: ...

    @property
    def queue_depth(self) -> int: ...


class Session:
    """Echo (no channel) or publish to `channel`; receives fan-out through `offer()`."""

    __slots__ = (
        "bucket",
        "channel",
        "client",
        "conn_id",
        "echo_prefix",
        "hub",
        "link",
        "max_bytes",
        "opened_at",
        "path",
        "stats",
    )

    def __init__(
        self,
        *,
        conn_id: str,
        client: str,
        path: str,
        channel: str | None,
        link: Link,
        hub: Hub,
        stats: Stats,
        echo_prefix: bytes,
        max_bytes: int,
        bucket: TokenBucket | None,
    ) -> None:
        self.conn_id = conn_id
        self.client = client
        self.path = path
        self.channel = channel
        self.link = link
        self.hub = hub
        self.stats = stats
        self.echo_prefix = echo_prefix
        self.max_bytes = max_bytes
        self.bucket = bucket
        self.opened_at = time.monotonic()

    def offer(self, message: Message | Batch) -> bool:
        return self.link.offer(message)

    @property
    def queue_depth(self) -> int:
        """Messages waiting for this client's socket (sampled by the metrics)."""
        return self.link.queue_depth

    def on_message(self, data: bytes, is_text: bool) -> None:
        """Handle one inbound message; raises ConnectionClosing to end the connection."""
        stats = self.stats
        size = len(data)
        stats.messages_received += 1
        stats.bytes_received += size
        stats.size_classes[(size - 1).bit_length()] += 1  # 2**(i-1) < size <= 2**i
        if size > self.max_bytes:
            raise MessageTooBig(f"message of {size} bytes, limit {self.max_bytes}")
        bucket = self.bucket
        if bucket is not None and not bucket.allow():
            raise PolicyViolation("rate limit exceeded")
        if self.channel is None:
            if self.link.offer(Message(self.echo_prefix + data, text=is_text, published_at=0.0)):
                stats.messages_sent += 1
        else:
            self.hub.publish(self.channel, Message(data, text=is_text))

    def expire(self) -> None:
        """The credentials ran out while connected: clients reconnect with a fresh token."""
        self.link.fail(PolicyViolation("token expired"))

    def __repr__(self) -> str:
        return f"<Session {self.conn_id} {self.path}>"
