"""CPU time and resident memory of a process tree, read straight from /proc (no psutil)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """Direct children of pid, from every thread's children list."""
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def tree(*roots: int) -> list[int]:
    """The roots and all their descendants that are alive now."""
    seen: list[int] = []
    stack = [pid for pid in roots if pid and (PROC / str(pid)).exists()]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(children(pid))
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds; 0 when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of one process in bytes; 0 when it is gone (or is a kernel thread)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class TreeSample:
    """One reading of a process tree."""

    pids: tuple[int, ...]
    cpu: float
    rss: int


def sample(*roots: int) -> TreeSample:
    pids = tree(*roots)
    return TreeSample(
        pids=tuple(pids),
        cpu=sum(cpu_seconds(p) for p in pids),
        rss=sum(rss_bytes(p) for p in pids),
    )


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, everything but idle and iowait)."""
    try:
        fields = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal: all but idle (3) and iowait (4).
    values = [int(x) for x in fields[:8]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


def cpu_model() -> str:
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def read_sysctl(name: str) -> str:
    try:
        return (PROC / "sys" / name.replace(".", "/")).read_text().split("\n")[0].strip()
    except OSError:
        return "unknown"
