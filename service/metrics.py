"""Prometheus metrics: the worker's plain Stats counters exported at scrape time.

(Placeholder for the single-process case; multiprocess mode across gunicorn workers is
built in its own change.)
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from .runtime import Runtime

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prepare_multiprocess() -> None:
    """Called by the gunicorn master before workers start (gunicorn_conf on_starting)."""


def mark_dead(pid: int) -> None:
    """Called by the gunicorn master when a worker exits (gunicorn_conf child_exit)."""


def render(runtime: Runtime) -> str:
    s = runtime.stats
    lines = [
        "# TYPE ws_connections_active gauge",
        f"ws_connections_active {s.connections_active}",
        "# TYPE ws_connections_total counter",
        f"ws_connections_total {s.connections_total}",
        "# TYPE ws_messages_received_total counter",
        f"ws_messages_received_total {s.messages_received}",
        "# TYPE ws_messages_sent_total counter",
        f"ws_messages_sent_total {s.messages_sent}",
        "# TYPE ws_rejected_total counter",
    ]
    lines += [f'ws_rejected_total{{reason="{r}"}} {n}' for r, n in sorted(s.rejected.items())]
    return "\n".join(lines) + "\n"


def metrics_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(render(runtime), media_type=CONTENT_TYPE)

    return router
