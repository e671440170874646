"""Prometheus metrics for /metrics, correct under one process and under gunicorn's workers.

The hot path only adds to plain ints in `Stats` (service/stats.py); this module copies them
into prometheus-client metrics, by delta for counters and by value for gauges. One process:
at scrape time, into a private registry. Under gunicorn (`PROMETHEUS_MULTIPROC_DIR` set):
prometheus-client's multiprocess mode, each worker syncing its own files once a second (and
again when it answers a scrape), so whichever worker Prometheus reaches sums them all.

Multiprocess mode, as prometheus-client documents it:
- the master empties the directory before the first worker starts (`prepare_multiprocess`,
  gunicorn's `on_starting`; gunicorn re-reads its config on SIGHUP, so nothing here runs at
  import time);
- `mark_dead` (gunicorn's `child_exit`) deletes a dead worker's live-gauge files, so a worker
  killed with SIGKILL stops counting in `ws_connections_active` at once;
- gauges use the `live*` modes; counters of dead workers stay in the sums, as they should.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import contextlib
import glob
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .closecodes import CloseCode
from .errors import HandshakeRefused
from .pubsub.base import BrokerState
from .runtime import Runtime
from .stats import SIZE_CLASSES

log = logging.getLogger("service.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_INTERVAL = 1.0
"""Seconds between a worker's syncs: how stale another worker's figures can be in a scrape."""
QUEUE_SAMPLE = 1000
"""Subscribers whose send queue is looked at per sync (about 0.2 ms): the first ones in join
order, so on a big worker a sample, not a census."""
SIZE_BUCKETS = tuple(float(4**k) for k in range(2, 14))
"""16 B ... 64 MiB by powers of four (the largest WS_MAX_MESSAGE_BYTES allowed)."""
STANDARD_CLOSE_CODES = range(1000, 1016)
"""Close codes kept as their own label value; any other (3000-4999...) is "other", so a
client cannot create series at will."""


# Master side: gunicorn's on_starting and child_exit hooks.


def prepare_multiprocess() -> str:
    """Choose and empty the multiprocess directory; returns it (gunicorn's on_starting).

    `PROMETHEUS_MULTIPROC_DIR` when set, else `$RUNTIME_DIRECTORY/metrics` under systemd
    (`RuntimeDirectory=`: /run/ws/metrics with deploy/systemd/ws.service), else a fresh private
    temp dir removed when the master exits. The variable is set for the workers, which inherit
    the environment.
    """
    path = os.environ.get(MULTIPROC_ENV) or _default_dir()
    os.environ[MULTIPROC_ENV] = path
    os.makedirs(path, mode=0o700, exist_ok=True)
    # A USR2 re-exec (GUNICORN_PID set) runs beside the old master, whose workers still
    # write here: their files are live, not stale.
    if "GUNICORN_PID" not in os.environ:
        for stale in glob.glob(os.path.join(path, "*.db")):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
    return path


PRIVATE_PREFIX = "ws-service-metrics-"


def _default_dir() -> str:
    runtime_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime_dir:
        return os.path.join(runtime_dir, "metrics")
    # A master killed with SIGKILL never ran its atexit: its directory is removed here.
    for old in glob.glob(os.path.join(tempfile.gettempdir(), PRIVATE_PREFIX + "*")):
        if _abandoned(old):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=PRIVATE_PREFIX)
    atexit.register(_remove_private_dir, path, os.getpid())
    return path


def _remove_private_dir(path: str, master_pid: int) -> None:
    # Workers inherit atexit handlers; only the master that made the directory removes it,
    # and not while a live process (a USR2 successor's workers) still writes there.
    if os.getpid() == master_pid and os.path.isdir(path) and not _writers(path):
        shutil.rmtree(path, ignore_errors=True)


def _writers(path: str) -> set[int]:
    """The live processes among those that left files in `path`."""
    pids = {name.rsplit("_", 1)[-1].removesuffix(".db") for name in os.listdir(path)}
    return {int(pid) for pid in pids if pid.isdigit() and _alive(int(pid))}


def _abandoned(path: str, quiet: float = 60.0) -> bool:
    """Our private directory of an instance that is gone: files, no writer, no recent write."""
    try:
        stats = [os.stat(f) for f in glob.glob(os.path.join(path, "*.db"))]
        if not stats or os.stat(path).st_uid != os.getuid():
            return False
        return not _writers(path) and time.time() - max(s.st_mtime for s in stats) > quiet
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_dead(pid: int) -> None:
    """A worker exited (gunicorn's child_exit): its live gauges stop counting."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        mark_process_dead(pid, path)


# Worker side.


class _BucketedHistogram(Histogram):
    """A Histogram fed with counts already sorted into its buckets (by Stats, on the hot path).

    prometheus-client has no bulk observe; this adds to the same per-bucket values observe()
    increments, so exposition and multiprocess merging stay the library's own.
    """

    def add(self, bucket: int, count: float) -> None:
        self._buckets[bucket].inc(count)

    def add_sum(self, amount: float) -> None:
        self._sum.inc(amount)


class Exporter:
    """One worker's metrics: the prometheus-client objects and what was already copied."""

    def __init__(self, runtime: Runtime, *, multiprocess: bool) -> None:
        self.runtime = runtime
        self.multiprocess = multiprocess
        registry: CollectorRegistry | None
        if multiprocess:
            _use_multiprocess_values()
            # Metrics write to this worker's files; scrapes read every worker's files.
            registry = None
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)
        else:
            # `_created` series would double every counter line for no use here.
            disable_created_metrics()
            registry = self.registry = CollectorRegistry()
        self._done: dict[Any, float] = {}
        self._size_done = [0] * SIZE_CLASSES
        self._latency_done = [0] * len(runtime.stats.delivery_latency.counts)
        self._latency_sum_done = 0.0

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, mode: Any, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        self.connections_active = gauge(
            "ws_connections_active", "Open WebSocket connections.", "livesum"
        )
        self.connections_limit = gauge(
            "ws_connections_limit",
            "WS_MAX_CONNECTIONS summed over the live workers: the instance's capacity.",
            "livesum",
        )
        self.connections_total = counter(
            "ws_connections_total", "WebSocket connections accepted since start."
        )
        self.messages_received = counter(
            "ws_messages_received_total", "WebSocket messages received from clients."
        )
        self.messages_sent = counter(
            "ws_messages_sent_total",
            "WebSocket messages handed to clients' sockets: echo replies and fan-out copies.",
        )
        self.published = counter(
            "ws_messages_published_total",
            "Messages published to channels, from WebSockets and the HTTP API.",
        )
        self.rejected = counter(
            "ws_rejected_total", "Handshakes and publish requests refused, by reason.", ("reason",)
        )
        self.closes = counter(
            "ws_closes_total", "WebSocket connections ended, by close code.", ("code",)
        )
        self.slow_consumers = counter(
            "ws_slow_consumer_closes_total",
            "Connections closed 1008 because their send queue overflowed.",
        )
        self.broker_up = gauge(
            "ws_broker_up", "1 when every live worker's broker is connected, else 0.", "livemin"
        )
        self.broker_publish_errors = counter(
            "ws_broker_publish_errors_total", "Publishes the broker failed to deliver."
        )
        self.broker_local_only = counter(
            "ws_broker_local_only_total",
            "Messages delivered to this worker's clients only, because the broker was down.",
        )
        self.broker_dropped = counter(
            "ws_broker_dropped_total",
            "Messages the broker refused: outbox full (Redis slower than the publishers) or "
            "inbound queue full.",
            ("queue",),
        )
        self.broker_reconnects = counter(
            "ws_broker_reconnects_total", "Broker outages recovered from."
        )
        self.broker_outbox = gauge(
            "ws_broker_outbox", "Messages published and not yet sent to the broker.", "livesum"
        )
        self.workers = gauge("ws_workers", "Live worker processes.", "livesum")
        self.queue_depth_max = gauge(
            "ws_send_queue_depth_max",
            "Deepest send queue among sampled subscribers at the last sample.",
            "livemax",
        )
        self.queue_backlogged = gauge(
            "ws_send_queue_backlogged_connections",
            "Sampled subscribers with messages waiting in their send queue.",
            "livesum",
        )
        self.queue_limit = gauge(
            "ws_send_queue_limit",
            "WS_SEND_QUEUE: the depth that closes a slow consumer.",
            "livemax",
        )
        self.resident_memory = gauge(
            "ws_worker_resident_memory_bytes", "Resident memory of each worker.", "liveall"
        )
        self.build_info = gauge("ws_build_info", "Always 1; the version.", "livemax", ("version",))
        self.message_size = _BucketedHistogram(
            "ws_message_size_bytes",
            "Sizes of WebSocket messages received from clients.",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.delivery_latency = _BucketedHistogram(
            "ws_delivery_latency_seconds",
            "Seconds from publish to the hand-off to a worker's subscribers.",
            buckets=runtime.stats.delivery_latency.bounds,
            registry=registry,
        )
        # Size slot -> exported bucket (the first bucket whose bound holds 2**slot).
        bounds = (*SIZE_BUCKETS, float("inf"))
        self._size_bucket = [bisect.bisect_left(bounds, 2.0**i) for i in range(SIZE_CLASSES)]
        # Known label values start at 0, so rate() sees their first increase.
        for reason in _refusal_reasons():
            self.rejected.labels(reason)
        for code in CloseCode:
            self.closes.labels(str(int(code)))
        self.workers.set(1)
        self.connections_limit.set(runtime.max_connections)
        self.queue_limit.set(runtime.send_queue)
        self.build_info.labels(runtime.version).set(1)

    def sync(self) -> None:
        """Copy this worker's Stats and broker figures into the metrics."""
        runtime = self.runtime
        stats, broker = runtime.stats, runtime.broker
        add = self._add
        self.connections_active.set(stats.connections_active)
        add(self.connections_total, stats.connections_total)
        add(self.messages_received, stats.messages_received)
        add(self.messages_sent, stats.messages_sent)
        add(self.published, stats.published)
        add(self.slow_consumers, stats.slow_consumers)
        for reason, n in list(stats.rejected.items()):
            add(self.rejected.labels(reason), n)
        closes: dict[str, int] = {}
        for code, n in list(stats.closes.items()):
            label = str(code) if code in STANDARD_CLOSE_CODES else "other"
            closes[label] = closes.get(label, 0) + n
        for label, n in closes.items():
            add(self.closes.labels(label), n)
        self.broker_up.set(1 if broker.state is BrokerState.UP else 0)
        add(self.broker_publish_errors, getattr(broker, "publish_errors", 0))
        add(self.broker_local_only, getattr(broker, "local_only", 0))
        add(self.broker_dropped.labels("outbox"), getattr(broker, "outbox_dropped", 0))
        add(self.broker_dropped.labels("inbound"), getattr(broker, "inbound_dropped", 0))
        add(self.broker_reconnects, getattr(broker, "reconnects", 0))
        self.broker_outbox.set(getattr(broker, "outbox", 0))
        deepest, backlogged = sample_queues(_subscribers(runtime.hub), limit=QUEUE_SAMPLE)
        self.queue_depth_max.set(deepest)
        self.queue_backlogged.set(backlogged)
        rss = _resident_memory()
        if rss:
            self.resident_memory.set(rss)
        self._sync_sizes()
        self._sync_latency()

    def _add(self, counter: Any, value: float) -> None:
        # Counters only go up: a value below what was copied (never expected) is ignored.
        done = self._done.get(counter, 0)
        if value > done:
            counter.inc(value - done)
            self._done[counter] = value

    def _sync_sizes(self) -> None:
        stats = self.runtime.stats
        done = self._size_done
        for i, count in enumerate(stats.size_classes):
            if count > done[i]:
                self.message_size.add(self._size_bucket[i], count - done[i])
                done[i] = count
        # The sizes' sum is bytes_received, counted beside them on the hot path.
        self._add_sum(self.message_size, "size_sum", stats.bytes_received)

    def _sync_latency(self) -> None:
        dist = self.runtime.stats.delivery_latency
        done = self._latency_done
        for i, count in enumerate(dist.counts):
            if count > done[i]:
                self.delivery_latency.add(i, count - done[i])
                done[i] = count
        self._add_sum(self.delivery_latency, "latency_sum", dist.total)

    def _add_sum(self, histogram: _BucketedHistogram, key: str, value: float) -> None:
        done = self._done.get(key, 0.0)
        if value > done:
            histogram.add_sum(value - done)
            self._done[key] = value

    def render(self) -> bytes:
        self.sync()
        return generate_latest(self.registry)


def _use_multiprocess_values() -> None:
    """Make sure new metrics write to the multiprocess files.

    prometheus-client picks its value class when first imported; gunicorn's master imports
    this module (and so prometheus-client) before `on_starting` sets PROMETHEUS_MULTIPROC_DIR,
    and the workers inherit that choice.
    """
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


def _refusal_reasons() -> set[str]:
    reasons: set[str] = set()
    pending: list[type[HandshakeRefused]] = [HandshakeRefused]
    while pending:
        cls = pending.pop()
        reasons.add(cls.reason)
        pending.extend(cls.__subclasses__())
    return reasons


def _subscribers(hub: Any) -> Iterable[Any]:
    # Hub.local_subscribers() and Session.queue_depth are the hub's hooks for sampling.
    each = getattr(hub, "local_subscribers", None)
    return each() if each is not None else ()


def sample_queues(subscribers: Iterable[Any], *, limit: int) -> tuple[int, int]:
    """The deepest send queue and how many are not empty, over at most `limit` subscribers."""
    deepest = backlogged = 0
    for n, sub in enumerate(subscribers):
        if n >= limit:
            break
        depth = getattr(sub, "queue_depth", 0)
        if depth:
            backlogged += 1
            deepest = max(deepest, depth)
    return deepest, backlogged


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_memory() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):  # not Linux
        return 0


_EXPORTERS: weakref.WeakKeyDictionary[Runtime, Exporter] = weakref.WeakKeyDictionary()


def exporter_for(runtime: Runtime) -> Exporter:
    """The runtime's Exporter, made on first use; multiprocess when the directory is set."""
    exporter = _EXPORTERS.get(runtime)
    if exporter is None:
        path = os.environ.get(MULTIPROC_ENV)
        if path:
            os.makedirs(path, mode=0o700, exist_ok=True)
        exporter = _EXPORTERS[runtime] = Exporter(runtime, multiprocess=bool(path))
    return exporter


class Sync:
    """A worker's periodic sync task (multiprocess mode only); `await stop()` ends it."""

    def __init__(self, exporter: Exporter | None, interval: float) -> None:
        self.exporter = exporter
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        if exporter is not None and exporter.multiprocess:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-sync")

    async def _run(self) -> None:
        assert self.exporter is not None
        while True:
            try:
                self.exporter.sync()
            except Exception:  # a metrics failure must never take the worker down
                log.exception("metrics sync failed")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        assert self.exporter is not None
        self.exporter.sync()  # the last figures, for the counters that outlive this worker


def start_sync(runtime: Runtime, *, interval: float = SYNC_INTERVAL) -> Sync:
    """Start syncing `runtime`'s metrics once a second; a no-op without /metrics or workers.

    Called from the app's lifespan after `metrics_router` registered the exporter.
    """
    return Sync(_EXPORTERS.get(runtime), interval)


def metrics_router(runtime: Runtime) -> APIRouter:
    exporter = exporter_for(runtime)
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(exporter.render(), media_type=CONTENT_TYPE)

    return router
