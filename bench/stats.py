"""Percentiles, and figures summarised over several runs as median [min-max] beside a target.

Every measurement repeats itself; one run's number on a shared 2-core machine says little, so a
figure is only ever reported as the median of its runs with their range.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["min", "max", "info"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values.

    Nearest rank rather than interpolation: a p99 must be a latency some request really had.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


@dataclass(frozen=True)
class Target:
    """`value <= limit` (direction "max") or `value >= limit` ("min")."""

    limit: float
    direction: Literal["min", "max"]

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.limit if self.direction == "min" else value <= self.limit

    def describe(self, unit: str) -> str:
        sign = ">=" if self.direction == "min" else "<="
        return f"{sign} {fmt(self.limit)} {unit}".strip()


@dataclass
class Figure:
    """One reported number: its per-run values, its unit, an optional target and a note."""

    key: str
    title: str
    unit: str
    target: Target | None = None
    values: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        finite = [v for v in self.values if not math.isnan(v)]
        return float(statistics.median(finite)) if finite else math.nan

    @property
    def low(self) -> float:
        finite = [v for v in self.values if not math.isnan(v)]
        return min(finite) if finite else math.nan

    @property
    def high(self) -> float:
        finite = [v for v in self.values if not math.isnan(v)]
        return max(finite) if finite else math.nan

    def summary(self) -> str:
        """`median [min-max] unit (n runs)`."""
        if not self.values:
            return "not measured"
        if len(self.values) == 1:
            return f"{fmt(self.median)} {self.unit} (1 run)"
        return f"{fmt(self.median)} [{fmt(self.low)}-{fmt(self.high)}] {self.unit} ({len(self.values)} runs)"

    def verdict(self) -> str:
        if self.target is None:
            return "-"
        if not self.values:
            return "not measured"
        return "met" if self.target.met(self.median) else "NOT met"


def fmt(value: float) -> str:
    """Numbers as a reader wants them: 3 significant digits below 100, whole numbers above."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"
