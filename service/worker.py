"""The gunicorn worker class: uvicorn-worker's UvicornWorker with our WebSocket options.

A composition point like `app.py`: it reads Settings once and hands uvicorn plain values.
It runs service.draining's server, whose stop refuses no handshake in flight.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from .draining import DrainingServer
from .serve import uvicorn_options
from .settings import get_settings

PR_SET_PDEATHSIG = 1


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
