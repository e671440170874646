"""What the results record about the machine and the software, and the pre-flight checks."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import procfs
from .servers import BENCH


def raise_fd_limit() -> int:
    """Soft open-files limit up to the hard one (or 65536, if we may raise the hard one too).

    Children (servers, load generator) inherit it: the idle scenario needs 10,000+ sockets in
    the server and as many in the generator."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (65536, hard):
        if limit == resource.RLIM_INFINITY or limit <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def port_range() -> tuple[int, int]:
    """net.ipv4.ip_local_port_range: every client socket to one server port needs one."""
    low, high = procfs.read_sysctl("net.ipv4.ip_local_port_range").split()
    return int(low), int(high)


def ensure_node_modules() -> None:
    """npm ci --prefix bench when the load generator's dependencies are missing."""
    if (BENCH / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if not npm:
        raise SystemExit("bench: npm is not installed (needed for the ws load generator)")
    print("bench: installing the load generator's npm dependencies (npm ci)", flush=True)
    cmd = [npm, "ci", "--prefix", str(BENCH), "--no-audit", "--no-fund"]
    subprocess.run(cmd, check=True)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _node_version() -> str:
    node = shutil.which("node")
    if not node:
        return "not installed"
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def _ws_version() -> str:
    try:
        return str(
            json.loads((BENCH / "node_modules" / "ws" / "package.json").read_text())["version"]
        )
    except (OSError, ValueError, KeyError):
        return "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def describe(nofile: int) -> dict[str, Any]:
    low, high = port_range()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": procfs.cpu_model(),
            "memory_gib": _memory_gib(),
            "kernel": platform.release(),
            "ip_local_port_range": f"{low} {high}",
            "tcp_tw_reuse": procfs.read_sysctl("net.ipv4.tcp_tw_reuse"),
            "nofile": nofile,
            "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        },
        "versions": {
            "python": platform.python_version(),
            "node": _node_version(),
            "ws": _ws_version(),
            "uvicorn": _version("uvicorn"),
            "fastapi": _version("fastapi"),
            "ws-service": _version("ws-service"),
        },
    }
