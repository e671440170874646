"""uvicorn's Server with a stop that refuses no handshake, for every launcher.

uvicorn's shutdown closes the listener and then, in the same instant, answers every
connection that has not finished its WebSocket handshake with a 500 or a reset. During a
reload under load those are clients that connected a millisecond too early: refused for
nothing, since new workers are already taking the listener. This server stops accepting
first, lets the handshakes it already holds complete (they then get 1012 like every other
open WebSocket), marks the worker draining, and only then starts uvicorn's shutdown.
`ws-service serve` and the gunicorn worker both run it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.server import Server

HANDSHAKE_GRACE = 2.0
"""Longest wait, in seconds, for accepted connections to finish their handshake or request."""

log = logging.getLogger("service.draining")


def in_flight(connection: Any) -> bool:
    """True for an accepted connection that has not got its answer yet.

    A WebSocket before its 101 (or denial); a plain HTTP connection whose request has not
    arrived or not been answered. Open WebSockets and idle keep-alives are not in flight.
    """
    transport = getattr(connection, "transport", None)
    if transport is None or transport.is_closing():
        return False
    if hasattr(connection, "handshake_complete"):  # a WebSocket protocol
        return not (connection.handshake_complete or connection.close_sent)
    cycle = getattr(connection, "cycle", None)  # an HTTP protocol
    return cycle is None or not cycle.response_complete


class DrainingServer(Server):
    """uvicorn's Server, whose shutdown lets handshakes in flight finish before closing."""

    def __init__(self, config: Any, *, handshake_grace: float = HANDSHAKE_GRACE) -> None:
        super().__init__(config=config)
        self.handshake_grace = handshake_grace

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        heartbeat = asyncio.create_task(self.keep_notifying())
        try:
            await self.drain()
        finally:
            heartbeat.cancel()

    async def keep_notifying(self) -> None:
        """Tell gunicorn's master we are alive while draining.

        uvicorn stops its heartbeat when shutdown begins; during a reload the master goes on
        checking it and would abort a worker that drains for longer than `timeout`.
        """
        notify = self.config.callback_notify
        if notify is None:
            return
        while True:
            await notify()
            await asyncio.sleep(max(0.5, self.config.timeout_notify / 2))

    async def drain(self) -> None:
        started = time.monotonic()
        for server in self.servers:
            server.close()  # the kernel now hands new connections to the other workers
        waiting = await self.finish_handshakes()
        spent = time.monotonic() - started
        if waiting:
            log.warning("stopping with %d connection(s) still in their handshake", waiting)
        runtime = self.lifespan.state.get("runtime")
        if runtime is not None:
            runtime.draining = True  # /readyz answers 503 from here on
        # The time spent here comes out of uvicorn's graceful budget, so the worker still
        # exits before gunicorn's graceful_timeout.
        budget = self.config.timeout_graceful_shutdown
        if budget is not None:
            self.config.timeout_graceful_shutdown = max(1, int(budget - spent))
        # The listeners are closed already: nothing for uvicorn to close again.
        await super().shutdown(sockets=None)

    async def finish_handshakes(self) -> int:
        """Wait until no accepted connection is in flight; return how many still are."""
        deadline = time.monotonic() + self.handshake_grace
        while True:
            # Yield first: connections accepted just before close() are still being set up.
            await asyncio.sleep(0.02)
            waiting = sum(1 for c in list(self.server_state.connections) if in_flight(c))
            if not waiting or self.force_exit or time.monotonic() >= deadline:
                return waiting
