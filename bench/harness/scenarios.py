"""The benchmark scenarios. Each runs one target on a fresh server and returns a flat dict.

A scenario never raises for a server problem: a target that cannot start or fails mid-run gets
{"error": "..."} in its column, so one broken server never hides the other two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import loadgen
from .loadgen import LoadgenError, Mark
from .servers import Redis, Server, ServerError


@dataclass(frozen=True)
class Profile:
    """Sizes and durations of one run (full or --quick)."""

    warmup: float
    echo_seconds: float
    latency_seconds: float
    broadcast_seconds: float
    capacity_seconds: float
    handshake_seconds: float
    cluster_seconds: float
    idle_count: int
    idle_hold_seconds: float
    subscribers: int


FULL = Profile(
    warmup=1.0,
    echo_seconds=5.0,
    latency_seconds=5.0,
    broadcast_seconds=5.0,
    capacity_seconds=4.0,
    handshake_seconds=3.0,
    cluster_seconds=4.0,
    idle_count=10_000,
    idle_hold_seconds=2.0,
    subscribers=1000,
)
QUICK = Profile(
    warmup=0.3,
    echo_seconds=0.8,
    latency_seconds=0.8,
    broadcast_seconds=0.8,
    capacity_seconds=0.8,
    handshake_seconds=0.4,
    cluster_seconds=0.8,
    idle_count=500,
    idle_hold_seconds=0.5,
    subscribers=300,
)


@dataclass
class Context:
    """Everything a scenario needs besides the target."""

    profile: Profile
    server_cores: str
    load_cores: str
    cluster_cores: str
    log_dir: Path
    # "raw": the hot paths (echo throughput, handshakes, broadcast subscribers) use the bare-socket
    # client of loadgen/rawclient.js; "ws": everything uses the ws library.
    client: str = "raw"
    deflate: bool = False


def _saturation_note(win: dict[str, float]) -> str | None:
    """Say so when the generator, not the server, is what limits a saturating scenario."""
    if win["loadgen_cpu_util"] >= 0.9 and win["server_cpu_util"] < 0.9:
        return (
            f"load generator saturated ({win['loadgen_cpu_util']:.0%} of its core, server "
            f"{win['server_cpu_util']:.0%}): the server figure is a lower bound"
        )
    return None


def _per_cpu(count: float, cpu: float) -> int | None:
    return round(count / cpu) if cpu > 0 else None


def _run(
    ctx: Context,
    server: Server,
    config: dict[str, Any],
    timeout: float,
    on_mark: Callable[[Mark], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Mark]]:
    config = {"deflate": ctx.deflate, **config}
    return loadgen.run(server, config, cores=ctx.load_cores, timeout=timeout, on_mark=on_mark)


def echo_throughput(ctx: Context, target: str) -> dict[str, Any]:
    p = ctx.profile
    with Server(target, cores=ctx.server_cores, log_dir=ctx.log_dir, tag="echo_throughput") as srv:
        config = {
            "scenario": "echo_throughput",
            "url": srv.url("/ws"),
            "conns": 50,
            "inflight": 10,
            "size": 32,
            "warmup": p.warmup,
            "duration": p.echo_seconds,
            "client": ctx.client,
        }
        result, marks = _run(ctx, srv, config, timeout=p.echo_seconds + 40)
    win = loadgen.window(marks)
    out = {
        "messages_per_server_cpu_s": _per_cpu(result["messages"], win["server_cpu_s"]),
        "messages_per_s": result["messages_per_s"],
        **win,
        "bad_replies": result["bad_replies"],
        "unanswered": result["unanswered"],
        "closed_early": result["closed_early"],
        "client": result["client"],
    }
    note = _saturation_note(win)
    if note:
        out["note"] = note
    return out


def echo_latency(ctx: Context, target: str) -> dict[str, Any]:
    p = ctx.profile
    with Server(target, cores=ctx.server_cores, log_dir=ctx.log_dir, tag="echo_latency") as srv:
        config = {
            "scenario": "echo_latency",
            "url": srv.url("/ws"),
            "conns": 50,
            "rate": 1000,
            "size": 32,
            "warmup": p.warmup,
            "duration": p.latency_seconds,
        }
        result, marks = _run(ctx, srv, config, timeout=p.latency_seconds + 40)
    win = loadgen.window(marks)
    lat = result["latency_ms"]
    return {
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "max_ms": lat.get("max"),
        "latency_ms": lat,
        "sent": result["sent"],
        "lost": result["lost"],
        "bad_replies": result["bad_replies"],
        **win,
    }


def broadcast(ctx: Context, target: str) -> dict[str, Any]:
    p = ctx.profile
    with Server(target, cores=ctx.server_cores, log_dir=ctx.log_dir, tag="broadcast") as srv:
        config = {
            "scenario": "broadcast",
            "url": srv.url("/ws/broadcast"),
            "subscribers": p.subscribers,
            "rate": 100,
            "size": 32,
            "subscriberClient": ctx.client,
            "warmup": p.warmup,
            "duration": p.broadcast_seconds,
        }
        result, marks = _run(ctx, srv, config, timeout=p.broadcast_seconds + 90)
    win = loadgen.window(marks)
    lat = result["latency_ms"]
    return {
        "deliveries_per_s": result["deliveries_per_s"],
        "offered_deliveries_per_s": result["offered_deliveries_per_s"],
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "max_ms": lat.get("max"),
        "latency_ms": lat,
        "lost": result["lost"],
        "out_of_order": result["out_of_order"],
        "bad_messages": result["bad_messages"],
        "closed_by_server": result["closed_by_server"],
        "deliveries_per_server_cpu_s": _per_cpu(result["deliveries_total"], win["server_cpu_s"]),
        **win,
    }


def _capacity_run(
    ctx: Context, srv: Server, seconds: float, *, publishers: int = 4, window: int = 8
) -> dict[str, Any]:
    config = {
        "scenario": "broadcast_capacity",
        "url": srv.url("/ws/broadcast"),
        "subscribers": ctx.profile.subscribers,
        "publishers": publishers,
        "window": window,
        "size": 32,
        "subscriberClient": ctx.client,
        "warmup": ctx.profile.warmup,
        "duration": seconds,
    }
    result, marks = _run(ctx, srv, config, timeout=seconds + 90)
    win = loadgen.window(marks)
    lat = result["latency_ms"]
    out = {
        "deliveries_per_s": result["deliveries_per_s"],
        "deliveries_per_server_cpu_s": _per_cpu(
            result["deliveries_in_window"], win["server_cpu_s"]
        ),
        "publishes_per_s": result["publishes_per_s"],
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "latency_ms": lat,
        "lost": result["lost"],
        "released_without_full_delivery": result["released_without_full_delivery"],
        "out_of_order": result["out_of_order"],
        "closed_by_server": result["closed_by_server"],
        "publishers": publishers,
        "window": window,
        **win,
    }
    note = _saturation_note(win)
    if note:
        out["note"] = note
    return out


def broadcast_capacity(ctx: Context, target: str) -> dict[str, Any]:
    with Server(
        target, cores=ctx.server_cores, log_dir=ctx.log_dir, tag="broadcast_capacity"
    ) as srv:
        return _capacity_run(ctx, srv, ctx.profile.capacity_seconds)


def idle(ctx: Context, target: str) -> dict[str, Any]:
    p = ctx.profile
    health: dict[str, Any] = {}

    def on_mark(mark: Mark) -> None:
        if mark.name == "held":
            health["healthz"] = srv.health()

    with Server(target, cores=ctx.server_cores, log_dir=ctx.log_dir, tag="idle") as srv:
        config = {
            "scenario": "idle",
            "url": srv.url("/ws"),
            "count": p.idle_count,
            "concurrency": 100,
            "openSeconds": 90,
            "holdSeconds": p.idle_hold_seconds,
        }
        result, marks = _run(ctx, srv, config, timeout=180, on_mark=on_mark)
    base, held = marks["baseline"].server, marks["held"].server
    alive = result["still_open_after_hold"]
    delta = held.rss - base.rss
    out = {
        "requested": result["requested"],
        "opened": result["opened"],
        "still_open": alive,
        "failed": result["failed"],
        "failures": result["failures"],
        "rss_baseline_mib": round(base.rss / 2**20, 1),
        "rss_held_mib": round(held.rss / 2**20, 1),
        "kib_per_connection": round(delta / alive / 1024, 2) if alive else None,
        "open_seconds": result["open_seconds"],
        "handshakes_per_s_while_opening": result["handshakes_per_s_while_opening"],
        "closed_by_server": result["closed_by_server"],
        "server_processes": len(held.pids),
    }
    if health.get("healthz"):
        out["healthz_connections"] = health["healthz"].get("connections")
    return out


def handshake(ctx: Context, target: str) -> dict[str, Any]:
    p = ctx.profile
    out: dict[str, Any] = {}
    with Server(target, cores=ctx.server_cores, log_dir=ctx.log_dir, tag="handshake") as srv:
        for label, concurrency in (("sequential", 1), ("concurrent", 50)):
            config = {
                "scenario": "handshake",
                "url": srv.url("/ws"),
                "concurrency": concurrency,
                "client": ctx.client,
                "duration": p.handshake_seconds,
                "maxCycles": 100_000,
            }
            result, marks = _run(ctx, srv, config, timeout=p.handshake_seconds + 40)
            win = loadgen.window(marks)
            out[f"{label}_per_s"] = result["cycles_per_s"]
            out[label] = {
                **result,
                **win,
                "per_server_cpu_s": _per_cpu(result["cycles"], win["server_cpu_s"]),
            }
            note = _saturation_note(win) if concurrency > 1 else None
            if note:
                out["note"] = note
            time.sleep(0.5)
    out["concurrent_per_server_cpu_s"] = out["concurrent"]["per_server_cpu_s"]
    return out


CLUSTER_VARIANTS = (
    ("1 worker, memory://", 1, False),
    ("1 worker, redis://", 1, True),
    ("2 workers, redis://", 2, True),
)


def cluster(ctx: Context, target: str) -> dict[str, Any]:
    """Saturated fan-out of ws-service: one worker vs two workers sharing Redis."""
    if target != "ws-service":
        return {"skipped": "the cluster case is for ws-service only"}
    seconds = ctx.profile.cluster_seconds
    variants: dict[str, Any] = {}
    with Redis(cores=ctx.cluster_cores, log_dir=ctx.log_dir) as redis:
        for label, workers, use_redis in CLUSTER_VARIANTS:
            tag = f"cluster-{workers}w-{'redis' if use_redis else 'memory'}"
            srv = Server(
                target,
                cores=ctx.cluster_cores,
                log_dir=ctx.log_dir,
                tag=tag,
                workers=workers,
                broker_url=redis.url if use_redis else "memory://",
                extra_roots=(redis.proc.pid,) if use_redis and redis.proc else (),
            )
            try:
                srv.start()
            except ServerError as exc:
                if use_redis:
                    return {
                        "skipped": "ws-service refused WS_BROKER_URL=redis:// (no Redis broker "
                        f"yet?): {exc}",
                        "variants": variants,
                    }
                raise
            try:
                variants[label] = _capacity_run(ctx, srv, seconds, publishers=8, window=4)
            except LoadgenError as exc:
                variants[label] = {"error": str(exc)}
            finally:
                srv.stop()
    out: dict[str, Any] = {"variants": variants, "cores": ctx.cluster_cores}
    rate = {k: v.get("deliveries_per_s") for k, v in variants.items()}
    two = rate.get("2 workers, redis://")
    for key, base in (
        ("two_workers_vs_one", "1 worker, memory://"),
        ("two_workers_vs_one_redis", "1 worker, redis://"),
    ):
        out[key] = round(two / rate[base], 2) if two and rate.get(base) else None
    return out


SCENARIOS: dict[str, Callable[[Context, str], dict[str, Any]]] = {
    "echo_throughput": echo_throughput,
    "echo_latency": echo_latency,
    "broadcast": broadcast,
    "broadcast_capacity": broadcast_capacity,
    "idle": idle,
    "handshake": handshake,
    "cluster": cluster,
}

# Scenarios that only make sense for some targets.
TARGETS_OF = {"cluster": ("ws-service",)}


def run_one(ctx: Context, scenario: str, target: str) -> dict[str, Any]:
    """One scenario against one target; errors become an {"error": ...} entry."""
    started = time.monotonic()
    try:
        out = SCENARIOS[scenario](ctx, target)
    except (ServerError, LoadgenError) as exc:
        out = {"error": str(exc)}
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out
