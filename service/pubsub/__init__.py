"""Brokers: how a message published on one worker reaches the hub of every worker."""

from __future__ import annotations

from urllib.parse import urlsplit

from .base import Broker, BrokerState


def broker_from_url(url: str, *, prefix: str = "ws:", outbox_limit: int = 10000) -> Broker:
    """Pick the implementation by URL scheme: `memory://`, `redis://` or `rediss://`."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url, prefix=prefix, outbox_limit=outbox_limit)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}")


__all__ = ["Broker", "BrokerState", "broker_from_url"]
