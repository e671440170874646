"""ws-service: a production WebSocket service on FastAPI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ws-service")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
