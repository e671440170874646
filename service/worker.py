"""The gunicorn worker class: uvicorn-worker's UvicornWorker with our WebSocket options.

A composition point like `app.py`: it reads Settings once and hands uvicorn plain values.

It also fixes how a worker stops. uvicorn's shutdown closes the listener and then, in the same
instant, answers every connection that has not finished its WebSocket handshake with a 500 or
a reset. During a reload under load those are clients that connected a millisecond too early:
refused for nothing, since new workers are already taking the listener. Our server stops
accepting first, lets the handshakes it already holds complete (they then get 1012 like every
other open WebSocket), and only then starts uvicorn's shutdown.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import sys
import time
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from .serve import uvicorn_options
from .settings import get_settings

PR_SET_PDEATHSIG = 1
HANDSHAKE_GRACE = 2.0
"""Longest wait, in seconds, for accepted connections to finish their handshake or request."""

log = logging.getLogger("service.worker")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to signal this process when its parent dies.

    A gunicorn master killed with SIGKILL (OOM killer, kill -9) leaves uvicorn workers serving
    on the inherited socket, fighting the restarted master for the port. SIGTERM makes them
    drain like on any stop: their clients get 1012 and reconnect to the new master's workers.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the loaded libc; no ldconfig subprocess
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        pass


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


class Worker(UvicornWorker):
    """uvicorn in a gunicorn worker, speaking our direct WebSocket protocol."""

    CONFIG_KWARGS: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Runs in the master, before the fork. CONFIG_KWARGS replaces uvicorn-worker's dict,
        # so loop and http are restated in uvicorn_options, and timeout_graceful_shutdown
        # (which uvicorn-worker never passes) comes from there too.
        options = uvicorn_options(get_settings())
        options.pop("forwarded_allow_ips")  # gunicorn passes its own forwarded_allow_ips
        self.CONFIG_KWARGS = options
        super().__init__(*args, **kwargs)

    def init_process(self) -> None:
        die_with_parent()
        super().init_process()

    async def _serve(self) -> None:
        # As UvicornWorker._serve, with our Server, and the plain sockets inside gunicorn's
        # listener wrappers: uvloop closes the descriptor itself when the server closes,
        # and the wrapper's own close() then logged "Bad file descriptor" on every stop.
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=[getattr(s, "sock", s) for s in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
