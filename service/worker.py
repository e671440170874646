"""The gunicorn worker class: uvicorn-worker's UvicornWorker with our WebSocket options.

A composition point like `app.py`: it reads Settings once and hands uvicorn plain values.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
from typing import Any

from uvicorn_worker import UvicornWorker

from .serve import uvicorn_options
from .settings import get_settings

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to signal this process when its parent dies.

    A gunicorn master killed with SIGKILL (OOM killer, kill -9) leaves uvicorn workers serving
    on the inherited socket, fighting the restarted master for the port.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        pass


class Worker(UvicornWorker):
    """uvicorn in a gunicorn worker, speaking our direct WebSocket protocol."""

    CONFIG_KWARGS: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # CONFIG_KWARGS replaces uvicorn-worker's dict, so loop and http are restated there.
        options = uvicorn_options(get_settings())
        options.pop("forwarded_allow_ips")  # gunicorn passes its own forwarded_allow_ips
        self.CONFIG_KWARGS = options
        super().__init__(*args, **kwargs)

    def init_process(self) -> None:
        die_with_parent()
        super().init_process()
