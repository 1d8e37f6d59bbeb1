"""`--profile`: sample processes with py-spy while they are measured, and say where the time went.

The issue asks that a missed target be profiled; doing it by hand each time left the figures in
scratch files nobody could rerun. With `--profile`, py-spy records the service during each
service's first drain (section 3) and every mesh process during the first 500/s run of section
2, and the report lists each one's hottest functions: inclusive (the function and what it calls)
and self (its own lines, native code included). py-spy is not a dependency of the project: it
must be on the PATH (`pip install py-spy`), and it needs permission to read the other process's
memory (root, or `kernel.yama.ptrace_scope=0`).

Sampling costs the sampled process a little (py-spy `--nonblocking` does not pause it), so
figures taken with `--profile` are not compared with figures taken without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

RATE = 100  # samples per second: enough for a 5-20 s run, light on the process sampled


@dataclass(frozen=True)
class Hotspots:
    """What one py-spy recording says, folded by function."""

    samples: int
    inclusive: list[tuple[str, float]]
    own: list[tuple[str, float]]
    #: Samples of the event loop waiting in its selector: not work, left out of the shares.
    idle: int = 0

    def lines(self) -> list[str]:
        if not self.samples:
            return ["no samples (the process was idle, or py-spy could not read it)"]
        inc = ", ".join(f"{name} {share:.0f} %" for name, share in self.inclusive)
        own = ", ".join(f"{name} {share:.0f} %" for name, share in self.own)
        return [f"{self.samples:,} busy samples ({self.idle:,} idle left out)", f"inclusive: {inc}", f"self: {own}"]


#: Frames every stack of an asyncio program passes through: true of everything, telling nothing.
_PLUMBING = (
    "<module>",
    "_run_module_as_main",
    "_run_code",
    "main",
    "run",
    "serve",
    "_cmd_serve",
    "_cmd_gateway",
    "Runner.run",
    "BaseEventLoop.run_until_complete",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Handle._run",
)


#: Innermost frames of an event loop with nothing to do (py-spy cannot tell them from work).
_WAITING = ("EpollSelector.select", "select", "poll")


def _frame_name(frame: str) -> str:
    """`Consumer.run (services/common/consumer.py:228)` -> `Consumer.run (consumer.py)`."""
    name, _, where = frame.partition(" (")
    filename = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({filename})" if filename else name


def fold(raw_lines: Iterable[str], *, top: int = 12) -> Hotspots:
    """Fold py-spy's raw output (`frame;frame;... count` per line, outermost first) into shares of
    the busy samples: each function counted once per stack for inclusive, the innermost for
    self. Stacks inside an import are start-up, not the measured work, and stacks ending in the
    event loop's selector are waiting: both are left out."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in raw_lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit() or "_find_and_load" in stack:
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        if frames[-1].split(" (")[0] in _WAITING:
            idle += n
            continue
        total += n
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    if not total:
        return Hotspots(0, [], [], idle)

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        kept = [(name, 100 * n / total) for name, n in counter.most_common() if name.split(" (")[0] not in _PLUMBING]
        return kept[:limit]

    return Hotspots(total, shares(inclusive, top), shares(own, top // 2 + 2), idle)


class ProfilerMissing(RuntimeError):
    """--profile was asked for but py-spy is not on the PATH."""


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise ProfilerMissing("--profile needs py-spy on the PATH: run `.venv/bin/pip install py-spy`, then again")
    return found


@contextlib.asynccontextmanager
async def recording(pid: int, output: Path) -> AsyncIterator[list[Hotspots]]:
    """Record `pid` with py-spy for the body of the `async with`; the yielded list holds the
    folded result once the block is left (empty if py-spy failed, with its reason in the file
    `output.with_suffix('.log')`)."""
    result: list[Hotspots] = []
    log = output.with_suffix(".log")
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(output),
            stdout=log_file,
            stderr=log_file,
        )
        try:
            yield result
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    spots = await asyncio.to_thread(read_recording, output)
    if spots is not None:
        result.append(spots)


def read_recording(path: Path) -> Hotspots | None:
    """The folded recording at `path`, or None when py-spy wrote none."""
    if not path.exists():
        return None
    with path.open(encoding="utf-8", errors="replace") as raw:
        return fold(raw)
