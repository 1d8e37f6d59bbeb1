"""The committed stubs are exactly what `scripts/gen-protos` makes from protos/ today."""

from __future__ import annotations

from pathlib import Path

from launcher.protogen import CONTRACTS, committed_stubs, generate


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generate(tmp_path)}
    committed = {p.relative_to(CONTRACTS): p.read_bytes() for p in committed_stubs()}
    missing = sorted(str(p) for p in fresh.keys() - committed.keys())
    stale = sorted(str(p) for p in committed.keys() - fresh.keys())
    differ = sorted(str(p) for p in fresh.keys() & committed.keys() if fresh[p] != committed[p])
    assert not (missing or stale or differ), (
        f"stubs drifted from protos/ (missing {missing}, stale {stale}, different {differ}): run scripts/gen-protos"
    )
