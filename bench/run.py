"""Runs the ws-service benchmark suite: Node ws, naive FastAPI and ws-service side by side.

    .venv/bin/python bench/run.py                 # everything (make bench), about 3 minutes
    .venv/bin/python bench/run.py --quick         # short smoke run, under a minute
    .venv/bin/python bench/run.py --only echo_throughput --only idle
    .venv/bin/python bench/run.py --targets node,ws-service

Servers run on core 0 and the Node load generator on core 1 (taskset); traffic stays on
loopback and every loop is bounded in count and time. A full run writes
bench/results/latest.json and latest.md and refreshes the figures in bench/README.md; a run
with --quick, --only or --targets writes bench/results/quick.json and quick.md instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import machine, report
from harness.scenarios import FULL, QUICK, SCENARIOS, TARGETS_OF, Context, run_one
from harness.servers import BENCH, LABELS, ROOT, TARGETS

RESULTS = BENCH / "results"
README = BENCH / "README.md"
README_START = "<!-- bench:latest:start -->"
README_END = "<!-- bench:latest:end -->"

HEADLINES = {
    "echo_throughput": (
        "messages_per_server_cpu_s",
        "messages_per_s",
        "server_cpu_util",
        "loadgen_cpu_util",
    ),
    "echo_latency": ("p50_ms", "p99_ms", "lost", "server_cpu_util"),
    "broadcast": ("deliveries_per_s", "p50_ms", "p99_ms", "lost", "out_of_order"),
    "broadcast_capacity": (
        "deliveries_per_s",
        "deliveries_per_server_cpu_s",
        "p99_ms",
        "server_cpu_util",
        "loadgen_cpu_util",
    ),
    "idle": ("still_open", "kib_per_connection", "failed"),
    "handshake": ("sequential_per_s", "concurrent_per_s", "concurrent_per_server_cpu_s"),
    "cluster": ("two_workers_vs_one", "two_workers_vs_one_redis"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (under a minute)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help=f"run only these scenarios (repeat or comma-separate): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated servers to run (default all: {','.join(TARGETS)})",
    )
    parser.add_argument("--server-cores", default="0", help="taskset cores of the servers")
    parser.add_argument("--load-cores", default="1", help="taskset cores of the load generator")
    parser.add_argument(
        "--cluster-cores",
        default=None,
        help="taskset cores of the cluster scenario's workers and Redis (default: server cores)",
    )
    parser.add_argument("--idle-count", type=int, default=None, help="idle connections to open")
    parser.add_argument(
        "--client",
        choices=("raw", "ws"),
        default="raw",
        help="hot-path client (echo throughput, handshakes, broadcast subscribers): a bare-socket "
        "WebSocket client (default, cheapest) or the ws library",
    )
    parser.add_argument(
        "--client-deflate",
        action="store_true",
        help="let the ws-library clients offer permessage-deflate (browsers do; off by default)",
    )
    parser.add_argument(
        "--no-readme", action="store_true", help="do not refresh the figures in bench/README.md"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: rewrite results/latest.md and the README figures from latest.json",
    )
    return parser.parse_args(argv)


def scenario_list(only: list[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        known = ", ".join(SCENARIOS)
        raise SystemExit(f"bench: unknown scenario(s) {', '.join(unknown)}; known: {known}")
    return names or list(SCENARIOS)


def target_list(text: str) -> list[str]:
    targets = [t.strip() for t in text.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            raise SystemExit(f"bench: unknown target {t!r}; known: {', '.join(TARGETS)}")
    return targets


def headline(scenario: str, entry: dict[str, Any]) -> str:
    if "error" in entry:
        return f"error: {entry['error']}"
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    text = " ".join(f"{k}={report.fmt(entry.get(k), k)}" for k in HEADLINES[scenario])
    for name, v in entry.get("variants", {}).items():
        text += f" [{name}: {report.fmt(v.get('deliveries_per_s'))}/s]"
    return text


def update_readme(body: str) -> None:
    """Replace the figures between the README's markers with this run's."""
    if not README.exists():
        return
    text = README.read_text()
    if README_START not in text or README_END not in text:
        return
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    block = f"{README_START}\n{body.strip()}\n{README_END}"
    README.write_text(pattern.sub(lambda _: block, text))


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (make killed, CI timeout) unwinds like Ctrl-C, so every server is stopped.
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    if args.render:
        rendered = report.markdown(json.loads((RESULTS / "latest.json").read_text()))
        (RESULTS / "latest.md").write_text(rendered)
        update_readme(rendered.split("\n", 2)[2])
        print(rendered)
        return 0
    scenarios = scenario_list(args.only)
    targets = target_list(args.targets)
    profile = QUICK if args.quick else FULL
    if args.idle_count is not None:
        profile = dataclasses.replace(profile, idle_count=args.idle_count)

    if not shutil.which("taskset"):
        raise SystemExit("bench: taskset (util-linux) is required")
    if len(os.sched_getaffinity(0)) < 2:
        print("bench: WARNING one core only: server and load generator share it", flush=True)
        args.server_cores = args.load_cores = str(min(os.sched_getaffinity(0)))
    nofile = machine.raise_fd_limit()
    low, high = machine.port_range()
    room = min(high - low + 1, nofile) - 2000
    if profile.idle_count > room:
        print(
            f"bench: WARNING idle connections lowered from {profile.idle_count} to {room} "
            f"(ephemeral ports {low}-{high}, open files limit {nofile})",
            flush=True,
        )
        profile = dataclasses.replace(profile, idle_count=max(100, room))
    machine.ensure_node_modules()

    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        profile=profile,
        server_cores=args.server_cores,
        load_cores=args.load_cores,
        cluster_cores=args.cluster_cores or args.server_cores,
        log_dir=log_dir,
        client=args.client,
        deflate=args.client_deflate,
    )
    full_run = not args.quick and not args.only and targets == list(TARGETS)
    command = "make bench" if not argv else "bench/run.py " + " ".join(argv)
    results: dict[str, Any] = {
        "meta": {
            **machine.describe(nofile),
            "command": command,
            "profile": "quick" if args.quick else "full",
            "server_cores": ctx.server_cores,
            "load_cores": ctx.load_cores,
            "cluster_cores": ctx.cluster_cores,
            "client": ctx.client,
            "client_deflate": ctx.deflate,
            "profile_settings": dataclasses.asdict(profile),
        },
        "scenarios": {},
    }
    print(
        f"bench: {len(scenarios)} scenario(s) x {len(targets)} target(s), "
        f"{results['meta']['profile']} profile; servers on core {ctx.server_cores}, "
        f"load generator on core {ctx.load_cores}",
        flush=True,
    )
    started = time.monotonic()
    for scenario in scenarios:
        by_target: dict[str, Any] = {}
        for target in targets:
            if target not in TARGETS_OF.get(scenario, TARGETS):
                continue
            entry = run_one(ctx, scenario, target)
            by_target[target] = entry
            line = f"[{scenario}] {LABELS[target]}: {headline(scenario, entry)}"
            print(f"{line} ({entry['elapsed_s']} s)", flush=True)
            time.sleep(0.2)
        results["scenarios"][scenario] = by_target
    results["meta"]["elapsed_s"] = round(time.monotonic() - started)

    stem = "latest" if full_run else "quick"
    md = report.markdown(results)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(md)
    if full_run and not args.no_readme:
        update_readme(md.split("\n", 2)[2])
    print()
    print(md)
    where = RESULTS.relative_to(ROOT)
    print(f"bench: wrote {where}/{stem}.json and {where}/{stem}.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped, no results written", file=sys.stderr)
        sys.exit(130)
