"""Progress for long work (backfill, replay, sweep, verify, imports).

A tqdm bar on stderr, so a report on stdout stays clean for pipes; silent when stderr is not a
terminal (a CI log or a Kubernetes Job would otherwise fill with carriage returns).
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress(*, total: int | None, desc: str, unit: str, enabled: bool = True) -> tqdm[Any]:
    """A tqdm bar on stderr; silent when disabled or when stderr is not a terminal."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )
