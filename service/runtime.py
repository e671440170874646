"""The live parts of one worker, built from Settings once and shared by the routes.

`admit()` decides a handshake before the upgrade, cheapest check first, so a flood of
refused clients costs little; the connection slot it takes is given back by `release()`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from .auth import Authenticator, Principal
from .channels import check_name
from .errors import (
    ChannelNotPermitted,
    ConnectionLimit,
    Draining,
    OriginNotAllowed,
    TooManyFromAddress,
)
from .hub import Hub
from .limits import AddressCounter, TokenBucket
from .pubsub.base import Broker, BrokerState
from .stats import Stats


class Runtime:
    """Hub, broker, limits and counters of this worker process."""

    def __init__(
        self,
        *,
        broker: Broker,
        authenticator: Authenticator,
        allowed_origins: tuple[str, ...] = (),
        max_connections: int = 10000,
        max_connections_per_ip: int = 0,
        max_message_bytes: int = 1048576,
        rate_limit: float = 0.0,
        rate_burst: int = 0,
        send_queue: int = 1000,
        echo_prefix: str = "Echo: ",
        drain_spread: float = 0.0,
        version: str = "",
    ) -> None:
        self.stats = Stats()
        self.hub = Hub(broker=broker, stats=self.stats)
        self.broker = broker
        self.auth = authenticator
        self.allowed_origins = frozenset(allowed_origins)
        self.max_connections = max_connections
        self.addresses = AddressCounter(max_connections_per_ip)
        self.max_message_bytes = max_message_bytes
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.send_queue = send_queue
        self.echo_prefix = echo_prefix.encode()
        self.drain_spread = drain_spread
        self.version = version
        self.pid = os.getpid()
        self.started_at = time.time()
        self.draining = False
        self.admitted = 0  # handshakes admitted and not yet released: open + upgrading
        self._ids = itertools.count(1)

    async def start(self) -> None:
        self.pid = os.getpid()  # gunicorn may build the app before forking
        await self.hub.start()

    async def stop(self) -> None:
        self.draining = True
        await self.hub.stop()

    def next_id(self) -> str:
        return f"{self.pid:x}-{next(self._ids):x}"

    def not_ready(self) -> list[str]:
        """Why this worker should get no new clients; empty when ready."""
        reasons = []
        if self.draining:
            reasons.append("draining")
        if self.broker.state is not BrokerState.UP:
            reasons.append(self.broker.problem)
        return reasons

    def new_bucket(self) -> TokenBucket | None:
        if not self.rate_limit:
            return None
        return TokenBucket(self.rate_limit, self.rate_burst)

    def admit(self, scope: Mapping[str, Any], channel: str | None, client: str) -> Principal:
        """Check a handshake before the upgrade; on success a slot is held until release()."""
        if self.draining:
            raise Draining("server is draining, retry shortly")
        if self.admitted >= self.max_connections:
            raise ConnectionLimit(f"connection limit {self.max_connections} reached")
        if channel is not None:
            check_name(channel)
        headers: dict[str, str] = {}
        if self.allowed_origins or self.auth.enabled:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_origins:
            origin = headers.get("origin")
            if origin is not None and origin.rstrip("/") not in self.allowed_origins:
                raise OriginNotAllowed(f"origin {origin[:100]!r} not allowed")
        principal = self.auth.authenticate(
            headers=headers,
            query=dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if self.auth.enabled
            else {},
            subprotocols=scope.get("subprotocols") or (),
        )
        if channel is not None and not principal.may_join(channel):
            raise ChannelNotPermitted(f"token does not permit channel {channel!r}")
        if not self.addresses.acquire(client):
            raise TooManyFromAddress(f"too many connections from {client}")
        self.admitted += 1
        return principal

    def release(self, client: str) -> None:
        self.admitted -= 1
        self.addresses.release(client)
