"""What every measurement shares: the environment, the report, progress output, the mesh.

A measurement module defines `TITLE` and `async def run(suite: Suite) -> None`; it records
figures with `suite.figure(...)`, prints progress with `suite.say(...)` and wraps its work in
`suite.measuring(section)` so the CPU used by others meanwhile is noted beside its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import string
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal

from bench.env import BenchEnv, MeshProcess, available_services
from bench.procs import TICK, cpu_jiffies, descendants, tree_jiffies
from bench.report import Report, Section, cpu_between, sample_cpu
from bench.stats import Figure, Target, fmt


@dataclass(frozen=True)
class Config:
    quick: bool = False
    runs: int = 3
    soak: bool = False
    soak_minutes: float = 60.0
    #: Offered rate of the saturation run; None: twice the sustained rate measured in the same run.
    ingest_rate: float | None = None
    #: Length of the sustained (saturation) ingest run; None: 60 s (10 s with --quick).
    ingest_seconds: float | None = None
    #: The gateway's SYNCMESH_GATEWAY_MAX_IN_FLIGHT in section 1; None: its default.
    gateway_max_in_flight: int | None = None
    clients: int = 1
    replay_events: int = 100_000
    replay_service: str | None = None
    #: `syncmesh replay --workers` for each run of the operator tool, in order, on the same stream
    #: (1,2,1,2: an interleaved comparison); None: the tool's own default.
    replay_workers: tuple[int | None, ...] = (None,)
    keep: bool = False
    #: Record processes with py-spy while measured (bench/profile.py).
    profile: bool = False
    #: The mesh's services answer gRPC from a query process of their own (--grpc-query-process:
    #: SYNCMESH_GRPC_QUERY_PROCESS, services/common/query_process.py).
    grpc_query_process: bool = False

    def pick(self, full: float, quick: float) -> float:
        return quick if self.quick else full


@dataclass
class Mesh:
    """The gateway and every service, sharing one database, fed through the gateway."""

    gateway: MeshProcess
    services: dict[str, MeshProcess]
    database: str
    webhooks_sent: int = 0
    memory_steady: dict[str, int] = field(default_factory=dict)
    memory_steady_after: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}/webhooks/stripe"

    def processes(self) -> dict[str, MeshProcess]:
        return {"gateway": self.gateway, **self.services}


class Suite:
    def __init__(self, config: Config, env: BenchEnv, report: Report) -> None:
        self.config = config
        self.env = env
        self.report = report
        self.started = time.monotonic()
        self._tags = (f"{a}{b}" for a, b in itertools.product(string.ascii_lowercase, string.digits + "abcdef"))
        self.mesh: Mesh | None = None
        #: Load generator processes of their own (name -> pids), whose CPU each measurement reports.
        self.generators: dict[str, list[int]] = {}
        self._services: dict[str, str] | None = None
        self._began = time.monotonic()
        self._allotment = float("inf")

    # -- time budget --------------------------------------------------------------------------

    def begin(self, allotment_seconds: float) -> None:
        """A measurement starts with this share of the suite's time budget."""
        self._began = time.monotonic()
        self._allotment = allotment_seconds

    def remaining(self) -> float:
        """Seconds left of the current measurement's allotment."""
        return self._allotment - (time.monotonic() - self._began)

    def another_run(self, section: str, run_no: int) -> bool:
        """Run `run_no` (0-based) may start: the first always, later ones if they fit the allotment.

        On a slow or busy machine every load still stops by itself, but repeating it three times
        would blow the suite's 15 minutes; the figure then has fewer runs, and says so.
        """
        if run_no == 0:
            return True
        spent = time.monotonic() - self._began
        per_run = spent / run_no
        if spent + per_run <= self._allotment:
            return True
        self.note(
            section,
            f"stopped after {run_no} run(s): another would exceed this measurement's share of the time "
            f"budget ({self._allotment:.0f} s)",
        )
        return False

    # -- output -------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {text}", flush=True)

    def figure(
        self,
        section: str,
        key: str,
        title: str,
        unit: str,
        *,
        target: float | None = None,
        direction: Literal["min", "max"] = "max",
    ) -> Figure:
        sec = self.report.section(section)
        for existing in sec.figures:
            if existing.key == key:
                return existing
        figure = Figure(key, title, unit, Target(target, direction) if target is not None else None)
        sec.figures.append(figure)
        return figure

    def record(self, figure: Figure, value: float) -> None:
        figure.add(value)
        verdict = ""
        if figure.target is not None:
            verdict = "  (meets target)" if figure.target.met(value) else f"  (target {figure.target.describe('')})"
        self.say(f"    {figure.title}: {fmt(value)} {figure.unit}{verdict}")

    def note(self, section: str, text: str) -> None:
        self.report.section(section).notes.append(text)
        self.say(f"    note: {text}")

    def skip(self, section: str, reason: str) -> None:
        self.report.section(section).skipped = reason
        self.say(f"  skipped: {reason}")

    @contextlib.asynccontextmanager
    async def measuring(self, section: str) -> AsyncIterator[Section]:
        sec = self.report.section(section)
        before = sample_cpu()
        procs_before = self.process_cpu()
        try:
            yield sec
        finally:
            use = cpu_between(before, sample_cpu())
            procs_after = self.process_cpu()
            shares = {
                name: (procs_after[name] - jiffies) / TICK / use.seconds
                for name, jiffies in procs_before.items()
                if name in procs_after and procs_after[name] >= jiffies
            }
            if shares:
                use = replace(use, per_process=shares)
            sec.cpu.append(use)
            self.say(f"    cpu: {use.describe()}")

    def process_cpu(self) -> dict[str, int]:
        """CPU jiffies of each process we run (by pid, so a restarted one is not compared)."""
        # A process's descendants count as its own: a service's query process (--grpc-query-process).
        out = {
            f"{p.name} (pid {p.pid})": sum(cpu_jiffies(pid, children=False) for pid in [p.pid, *descendants(p.pid)])
            for p in self.env.processes
            if p.alive
        }
        for name, pids in self.generators.items():  # load generators of their own (gRPC readers)
            out[name] = sum(cpu_jiffies(pid, children=False) for pid in pids)
        if self.env.nats.process is not None:
            out["nats-server"] = cpu_jiffies(self.env.nats.process.pid, children=False)
        if self.env.pg.process is not None:
            out["postgresql (all processes)"] = tree_jiffies(self.env.pg.process.pid)
        out["bench (load generator, probes)"] = cpu_jiffies(os.getpid(), children=False)
        return out

    def tag(self) -> str:
        """A fresh id tag: every run sends events never seen before."""
        return next(self._tags)

    def runs(self, default: int | None = None) -> range:
        return range(default if default is not None else self.config.runs)

    async def mesh_idle(self, section: str, timeout: float = 60.0) -> bool:
        """Wait until every service of the mesh has drained the stream, so runs do not overlap."""
        if self.mesh is None:
            return True
        from bench.env import definition

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [await self.env.consumer_info(definition(name).name) for name in self.mesh.services]
            if all(i is not None and i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                return True
            await asyncio.sleep(0.25)
        self.note(section, f"the services still had a backlog {timeout:.0f} s after the previous load; measured anyway")
        return False

    # -- services -----------------------------------------------------------------------------

    def services(self) -> dict[str, str]:
        """Real services present in this checkout -> "ok" or why they cannot be loaded."""
        if self._services is None:
            self._services = available_services()
            for name, status in self._services.items():
                if status != "ok":
                    self.say(f"  service {name} not available: {status}")
        return self._services

    def ready_services(self) -> list[str]:
        return [name for name, status in self.services().items() if status == "ok"]

    async def start_mesh(self) -> Mesh:
        if self.mesh is not None:
            return self.mesh
        await self.env.reset_stream()
        database = await self.env.fresh_database("mesh")
        self.say(f"  starting the mesh: gateway + {', '.join(self.ready_services()) or 'no services'}")
        gateway = await self.env.start_gateway()
        services = {}
        env = {"SYNCMESH_GRPC_QUERY_PROCESS": "true"} if self.config.grpc_query_process else None
        for name in self.ready_services():
            services[name] = await self.env.start_service(name, database, env=env)
        self.mesh = Mesh(gateway, services, database)
        return self.mesh

    async def stop_mesh(self) -> None:
        if self.mesh is None:
            return
        for proc in self.mesh.processes().values():
            self.env.stop(proc)
        self.mesh = None


def warn(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)
