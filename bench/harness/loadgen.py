"""Runs the Node load generator (bench/loadgen/main.js) pinned to the load core.

The generator prints JSON lines. A `mark` line pauses it until we answer on stdin; in between
we sample the server tree and the generator itself, so CPU and memory readings sit exactly on
the phase boundaries. The last line holds `result` or `error`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import procfs
from .servers import BENCH, Server

MAIN = BENCH / "loadgen" / "main.js"


@dataclass
class Mark:
    """One phase boundary: wall time, server tree and generator readings, plus extras."""

    name: str
    wall: float
    server: procfs.TreeSample
    loadgen_cpu: float
    machine_busy: float
    info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class LoadgenError(RuntimeError):
    """The generator failed, timed out or reported an error."""


def run(
    server: Server,
    config: dict[str, Any],
    *,
    cores: str,
    timeout: float,
    on_mark: Callable[[Mark], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Mark]]:
    """Run one scenario; returns the generator's result and the marks by name."""
    node = shutil.which("node")
    if not node:
        raise LoadgenError("node is not installed")
    config = {"deadline": timeout, **config}
    proc = subprocess.Popen(
        ["taskset", "-c", cores, node, str(MAIN), json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    killer = threading.Timer(timeout + 15, proc.kill)
    killer.start()
    stderr_lines: list[str] = []
    drain = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
    drain.start()
    marks: dict[str, Mark] = {}
    final: dict[str, Any] | None = None
    try:
        assert proc.stdout is not None and proc.stdin is not None
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            message = json.loads(line)
            if "mark" in message:
                mark = Mark(
                    name=message["mark"],
                    wall=time.monotonic(),
                    server=server.sample(),
                    loadgen_cpu=procfs.cpu_seconds(proc.pid),
                    machine_busy=procfs.busy_seconds(),
                    info=message,
                )
                if on_mark is not None:
                    on_mark(mark)
                marks[mark.name] = mark
                try:
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # the generator died; its exit is reported below
            elif "result" in message or "error" in message:
                final = message
        proc.wait(timeout=10)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drain.join(timeout=2)
    if final is None:
        tail = " | ".join(s.strip() for s in stderr_lines[-5:])
        raise LoadgenError(f"load generator ended with {proc.returncode} and no result: {tail}")
    if "error" in final:
        raise LoadgenError(
            f"load generator: {final['error']} {json.dumps(final.get('detail', ''))}"
        )
    return final["result"], marks


def window(marks: dict[str, Mark], start: str = "start", end: str = "end") -> dict[str, float]:
    """Server and generator CPU over the window between two marks."""
    a, b = marks[start], marks[end]
    wall = max(b.wall - a.wall, 1e-9)
    server_cpu = b.server.cpu - a.server.cpu
    loadgen_cpu = b.loadgen_cpu - a.loadgen_cpu
    # Whatever else ran on the machine meanwhile (other jobs, kernel threads): a busy machine
    # makes every figure noisy, so the report flags it.
    other = max(0.0, (b.machine_busy - a.machine_busy) - server_cpu - loadgen_cpu)
    return {
        "wall_s": round(wall, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_util": round(server_cpu / wall, 3),
        "loadgen_cpu_s": round(loadgen_cpu, 3),
        "loadgen_cpu_util": round(loadgen_cpu / wall, 3),
        "other_cpu_util": round(other / wall, 3),
        "server_processes": len(b.server.pids),
    }
