"""What `syncmesh verify` reports: per type, how many objects were checked and how many differ,
and one row per difference; and what a repair did.

Kept apart from the engine (ops/verify.py) so that the engine reads as the steps it takes and
this module as the one place that decides how the operator sees the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.common.verification import MISSING, STALE, Finding


@dataclass
class KindSummary:
    checked: int = 0
    missing: int = 0
    stale: int = 0
    mismatched: int = 0

    @property
    def ok(self) -> int:
        return self.checked - self.bad

    @property
    def bad(self) -> int:
        return self.missing + self.stale + self.mismatched


@dataclass
class VerifyReport:
    types: tuple[str, ...]
    since: datetime | None
    findings: list[Finding] = field(default_factory=list)
    summaries: dict[str, KindSummary] = field(default_factory=dict)
    #: The Stripe objects behind the findings, as listed: (backfill kind name, id) -> object.
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: Types that could not be checked at all, and why (a listing this Stripe API lacks).
    unverified: dict[str, str] = field(default_factory=dict)
    #: `--sample N`: only the N most recent objects of each listing (and N other records) were compared.
    sample: int | None = None

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, kind: str, findings: Sequence[Finding], obj: dict[str, Any] | None) -> None:
        summary = self.summaries.setdefault(kind, KindSummary())
        summary.checked += 1
        if not findings:
            return
        self.findings.extend(findings)
        problems = {f.problem for f in findings}
        if MISSING in problems:
            summary.missing += 1
        elif STALE in problems:
            summary.stale += 1
        else:
            summary.mismatched += 1
        if obj is not None:
            for f in findings:
                self.objects.setdefault(f.source, obj)

    def lines(self) -> list[str]:
        window = f" created since {self.since.isoformat()}" if self.since else ""
        out = [f"verified Stripe against the mesh ({', '.join(self.types)}){window}"]
        if self.sample is not None:
            out[0] += f", a sample: the {self.sample} most recent of each Stripe listing"
        if self.findings:
            rows = [("KIND", "STRIPE ID", "PROBLEM", "FIELD", "STRIPE", "MESH")]
            rows += [(f.kind, f.stripe_id, f.problem, f.field, f.stripe_value, f.mesh_value) for f in self.findings]
            widths = [min(40, max(len(r[i]) for r in rows)) for i in range(5)]
            for row in rows:
                cells = [_cut(row[i], widths[i]).ljust(widths[i]) for i in range(5)]
                out.append("  " + "  ".join(cells) + "  " + _cut(row[5], 40))
        for kind in self.types:
            if kind in self.unverified:
                out.append(f"  {kind}: NOT VERIFIED: {self.unverified[kind]}")
                continue
            s = self.summaries.get(kind, KindSummary())
            out.append(
                f"  {kind}: checked {s.checked}, ok {s.ok}, missing {s.missing}, stale {s.stale}, "
                f"mismatched {s.mismatched}"
            )
        bad = sum(s.bad for s in self.summaries.values())
        if not self.clean:
            out.append(f"  {bad} records differ")
        elif self.unverified:
            out.append(f"  clean for what was verified; not verified: {', '.join(self.unverified)}")
        else:
            out.append("  clean: Stripe and the mesh agree")
        return out

    def sort_findings(self, position: dict[str, int]) -> None:
        """Rows in report order of their type, then by Stripe id and field."""
        self.findings.sort(key=lambda f: (position[f.kind], f.stripe_id, f.field))


@dataclass
class RepairReport:
    published: int = 0
    duplicates: int = 0
    not_publishable: int = 0
    before: VerifyReport | None = None
    after: VerifyReport | None = None
    settled_seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"repair: published {self.published} synthetic events"]
        if self.duplicates:
            out[0] += f" ({self.duplicates} already in the stream)"
        if self.not_publishable:
            out.append(f"  {self.not_publishable} objects could not be turned into events (see log)")
        if self.after is not None:
            if self.after.clean:
                out.append(f"  re-verified after {self.settled_seconds:.1f}s: every repaired record now matches Stripe")
            else:
                out.append(f"  re-verified after {self.settled_seconds:.1f}s: still different:")
                out.extend("  " + line for line in self.after.lines()[1:])
        return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
