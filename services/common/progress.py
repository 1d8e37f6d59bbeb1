"""Progress for long work (backfill, replay, sweep, verify, imports).

On stderr, so a report on stdout stays clean for pipes. In a terminal it is a tqdm bar; when
stderr is not a terminal (a CI log, a Kubernetes Job, `2> file`) it is a plain line every few
seconds with the count, the rate and, when the total is known, the time left: a bar redrawn
with carriage returns would fill such a log with one unreadable line, and no output at all
left an operator wondering for an hour whether the run was alive.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import IO, Any

from tqdm import tqdm

#: Seconds between two lines when stderr is not a terminal.
LINE_SECONDS = 5.0

_KNOWN_TOTAL = (
    "{desc}: {n_fmt}/{total_fmt}{unit} ({percentage:.0f} %) in {elapsed}, {rate_fmt}, about {remaining} left{postfix}"
)
_UNKNOWN_TOTAL = "{desc}: {n_fmt}{unit} in {elapsed}, {rate_fmt}{postfix}"


class _Lines:
    """A file for tqdm that turns each redraw into one line (and drops the blank redraws)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        # tqdm redraws the final state on close: one line per count and elapsed second is enough
        key = line.split(", ")[0]
        if line and key != self.last:
            self.out.write(line + "\n")
            self.last = key
        return len(text)

    def flush(self) -> None:
        self.out.flush()


class Progress(tqdm):  # type: ignore[type-arg]
    """tqdm, with a line format for logs that leaves out what an unknown total cannot say."""

    _as_lines = False

    @property
    def format_dict(self) -> MutableMapping[str, Any]:
        d = super().format_dict
        if self._as_lines:
            d["bar_format"] = _KNOWN_TOTAL if d.get("total") else _UNKNOWN_TOTAL
            d["prefix"] = str(d.get("prefix") or "").removesuffix(": ")  # set_description() adds one
        return d


class _LineProgress(Progress):
    _as_lines = True

    def close(self) -> None:
        """The final count is written even for a phase shorter than the interval (the line a log
        reader looks for), unless nothing was done at all."""
        if not self.disable and self.n:
            self.delay = 0
        super().close()


def progress(
    *,
    total: int | None,
    desc: str,
    unit: str,
    enabled: bool = True,
    interval: float | None = None,
    terminal: bool | None = None,
) -> Progress:
    """A progress display on stderr: a bar in a terminal, else a line every `interval` seconds
    (`LINE_SECONDS`); nothing when disabled. `terminal` overrides the isatty() check (tests)."""
    tty = sys.stderr.isatty() if terminal is None else terminal
    if tty:
        return Progress(
            total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True
        )
    every = LINE_SECONDS if interval is None else interval
    return _LineProgress(
        total=total,
        desc=desc,
        unit=f" {unit}",
        file=_Lines(sys.stderr),
        disable=not enabled,
        leave=True,  # the final count is the line that matters most in a log
        mininterval=every,
        maxinterval=max(every, 10.0),
        miniters=1,
        delay=every,  # no "0 done" line first; a phase over in a moment writes only its final count
        ascii=True,
    )


__all__ = ["LINE_SECONDS", "Progress", "progress"]
