"""What /proc says about a process: resident memory, CPU time, descendants."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of one process, in KiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_tree_kib(root_pid: int) -> int:
    """Proportional set size of a process and all its descendants, in KiB.

    For PostgreSQL's many processes sharing one buffer pool, summing RSS would count the shared
    memory once per backend; PSS divides shared pages among their users, so the sum is honest.
    """
    total = 0
    for pid in [root_pid, *descendants(root_pid)]:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError):
            continue
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        out.append(child)
        stack.extend(children.get(child, []))
    return out


def cpu_jiffies(pid: int, *, children: bool = True) -> int:
    """utime + stime (+ cutime + cstime: the children it has reaped) of one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = int(stat[11]) + int(stat[12])
        return own + (int(stat[13]) + int(stat[14]) if children else 0)
    except (OSError, ValueError, IndexError):
        return 0


def tree_jiffies(root: int) -> int:
    return sum(cpu_jiffies(pid) for pid in [root, *descendants(root)])


def on_cpu_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every live thread of `pid` (/proc/<pid>/task/*/schedstat).

    Finer than `cpu_jiffies` (10 ms ticks): an idle process uses a few ms a second, which ticks
    would round to nothing or to a whole tick."""
    return _sum_over_threads(pid, lambda task: int((task / "schedstat").read_text().split()[0]))


def wakeups(pid: int) -> int:
    """Context switches of every live thread of `pid`: each time one slept and ran again (or was
    preempted), i.e. how often something woke it."""

    def switches(task: Path) -> int:
        return sum(
            int(line.split()[1])
            for line in (task / "status").read_text().splitlines()
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))
        )

    return _sum_over_threads(pid, switches)


def _sum_over_threads(pid: int, read: Callable[[Path], int]) -> int:
    """`read` of each live thread of `pid`, summed; a thread gone meanwhile counts nothing."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            total += read(task)
        except (OSError, ValueError, IndexError):
            continue
    return total


def command_line(pid: int) -> str:
    """The process's command line as `ps` shows it (PostgreSQL rewrites its own: `postgres: checkpointer`)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
