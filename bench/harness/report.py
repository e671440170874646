"""Turns the results dict into the markdown of bench/results/*.md and the README block."""

from __future__ import annotations

from typing import Any

from .servers import LABELS, TARGETS

HIGHER, LOWER, INFO = "higher", "lower", ""

# scenario -> rows of (label, key, better); INFO rows are context and get no ratio.
ROWS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "echo_throughput": (
        ("echo: messages per server CPU-second", "messages_per_server_cpu_s", HIGHER),
        ("echo: messages/s (server on one core)", "messages_per_s", HIGHER),
        ("echo: server CPU use", "server_cpu_util", INFO),
        ("echo: load generator CPU use", "loadgen_cpu_util", INFO),
    ),
    "echo_latency": (
        ("echo at 1,000 msg/s: p50 ms", "p50_ms", LOWER),
        ("echo at 1,000 msg/s: p99 ms", "p99_ms", LOWER),
        ("echo at 1,000 msg/s: server CPU use", "server_cpu_util", LOWER),
    ),
    "broadcast": (
        ("broadcast 1,000 x 100 msg/s: deliveries/s", "deliveries_per_s", HIGHER),
        ("broadcast: p50 ms publish-to-receive", "p50_ms", LOWER),
        ("broadcast: p99 ms publish-to-receive", "p99_ms", LOWER),
        ("broadcast: lost", "lost", LOWER),
        ("broadcast: out of order", "out_of_order", LOWER),
        ("broadcast: deliveries per server CPU-second", "deliveries_per_server_cpu_s", HIGHER),
        ("broadcast: load generator CPU use", "loadgen_cpu_util", INFO),
    ),
    "broadcast_capacity": (
        ("saturated fan-out: deliveries/s", "deliveries_per_s", HIGHER),
        ("saturated fan-out: per server CPU-second", "deliveries_per_server_cpu_s", HIGHER),
        ("saturated fan-out: p99 ms", "p99_ms", LOWER),
        ("saturated fan-out: server CPU use", "server_cpu_util", INFO),
        ("saturated fan-out: load generator CPU use", "loadgen_cpu_util", INFO),
    ),
    "idle": (
        ("idle: connections held", "still_open", HIGHER),
        ("idle: KiB RSS per connection", "kib_per_connection", LOWER),
    ),
    "handshake": (
        ("handshakes/s, sequential", "sequential_per_s", HIGHER),
        ("handshakes/s, 50 concurrent", "concurrent_per_s", HIGHER),
        ("handshakes per server CPU-second", "concurrent_per_server_cpu_s", HIGHER),
    ),
}

# A measurement window where other processes used more than this share of a core is flagged.
BUSY_THRESHOLD = 0.15


def fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key.endswith("_util") and isinstance(value, (int, float)):
        return f"{value:.0%}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def ratio(ours: Any, node: Any) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(node, (int, float)) or node == 0:
        return ""
    return f"{ours / node:.2f}x"


def _cell(entry: dict[str, Any] | None, key: str) -> str:
    if entry is None:
        return "not run"
    if "error" in entry:
        return "error"
    if "skipped" in entry:
        return "skipped"
    return fmt(entry.get(key), key)


def _windows(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The measurement windows in one result entry (top level and nested runs)."""
    found = [("", entry)] if "other_cpu_util" in entry else []
    for key, value in entry.items():
        if isinstance(value, dict) and "other_cpu_util" in value:
            found.append((f" ({key})", value))
    return found


def table(results: dict[str, Any]) -> str:
    scenarios = results["scenarios"]
    names = " | ".join(LABELS[t] for t in TARGETS)
    lines = [
        f"| scenario | better | {names} | ws-service / Node |",
        "| --- | --- | " + " | ".join("---:" for _ in TARGETS) + " | ---: |",
    ]
    for scenario, rows in ROWS.items():
        if scenario not in scenarios:
            continue
        by_target = scenarios[scenario]
        node = by_target.get("node") or {}
        ours = by_target.get("ws-service") or {}
        for label, key, better in rows:
            cells = " | ".join(_cell(by_target.get(t), key) for t in TARGETS)
            rel = ratio(ours.get(key), node.get(key)) if better else ""
            lines.append(f"| {label} | {better} | {cells} | {rel} |")

    notes: list[str] = []
    errors: list[str] = []
    for scenario, by_target in scenarios.items():
        for target, entry in by_target.items():
            who = f"{scenario} / {LABELS.get(target, target)}"
            if "error" in entry:
                errors.append(f"- {who}: {entry['error']}")
            if "note" in entry:
                notes.append(f"- {who}: {entry['note']}")
            for sub, win in _windows(entry):
                if win.get("other_cpu_util", 0) > BUSY_THRESHOLD:
                    notes.append(
                        f"- {who}{sub}: other processes used {win['other_cpu_util']:.0%} of a "
                        "core during the measurement: figures are noisy"
                    )
    if notes:
        lines += ["", "Notes:", *notes]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines)


def cluster_table(results: dict[str, Any]) -> str:
    entry = results["scenarios"].get("cluster", {}).get("ws-service")
    if entry is None:
        return ""
    title = "### Cluster: ws-service saturated fan-out, 1 worker vs 2 workers + Redis"
    if "error" in entry:
        return f"{title}\n\nerror: {entry['error']}"
    if "skipped" in entry:
        return f"{title}\n\nskipped: {entry['skipped']}"
    lines = [
        title,
        "",
        f"All server processes and redis-server pinned to core(s) {entry.get('cores')}; "
        "CPU and memory are summed over the whole tree (gunicorn master, workers, Redis).",
        "",
        "| variant | deliveries/s | per server CPU-second | p99 ms | server CPU "
        "| load generator CPU | other CPU | lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, v in entry.get("variants", {}).items():
        if "error" in v:
            lines.append(f"| {label} | error: {v['error']} | | | | | | |")
            continue
        cells = [
            fmt(v.get("deliveries_per_s")),
            fmt(v.get("deliveries_per_server_cpu_s")),
            fmt(v.get("p99_ms")),
            fmt(v.get("server_cpu_util"), "_util"),
            fmt(v.get("loadgen_cpu_util"), "_util"),
            fmt(v.get("other_cpu_util"), "_util"),
            fmt(v.get("lost")),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"2 workers + Redis vs 1 worker (memory://): {fmt(entry.get('two_workers_vs_one'))}x; "
        f"vs 1 worker (redis://): {fmt(entry.get('two_workers_vs_one_redis'))}x",
    ]
    notes = [
        f"- {label}: {v['note']}" for label, v in entry.get("variants", {}).items() if "note" in v
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def machine_lines(meta: dict[str, Any]) -> str:
    m, v = meta["machine"], meta["versions"]
    return "\n".join(
        [
            f"- machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
            f"Linux {m['kernel']}",
            f"- pinning: servers on core {meta['server_cores']}, load generator on core "
            f"{meta['load_cores']}; hot-path client: {meta['client']}",
            f"- software: Python {v['python']}, Node {v['node']}, ws {v['ws']}, "
            f"uvicorn {v['uvicorn']}, fastapi {v['fastapi']}, ws-service {v['ws-service']}",
            f"- ip_local_port_range {m['ip_local_port_range']}, tcp_tw_reuse "
            f"{m['tcp_tw_reuse']}, open files limit {m['nofile']}",
            f"- command: `{meta['command']}` ({meta['profile']} profile, {meta['elapsed_s']} s), "
            f"{meta['date']}; load average at start {m.get('loadavg_at_start', '?')}",
        ]
    )


def markdown(results: dict[str, Any]) -> str:
    parts = [
        "# ws-service benchmark results",
        "",
        machine_lines(results["meta"]),
        "",
        table(results),
    ]
    cluster = cluster_table(results)
    if cluster:
        parts += ["", cluster]
    return "\n".join(parts) + "\n"
