"""The repository stands alone: a plain clone, with no folder beside it, runs its tests.

A path that leaves the checkout (a sibling folder of the development machines, a machine's
home) works where it was written and fails for everyone who clones the project, at collection
time, which is how `tests/support/stripe_events.py` once broke a fresh clone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: A reference to a folder outside the checkout: a parent-relative path or a development
#: machine's absolute work folder. Assembled so this file does not match itself.
OUTSIDE = re.compile("|".join([re.escape("../" + "shared"), r"(?<![\w.-])/" + "work/", r"parents\[[3-9]\]"]))


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = [ROOT / name.decode() for name in listed if name]
    return [f for f in files if f.is_file() and f.suffix not in {".json", ".png"}]


def test_no_file_names_a_path_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


def test_the_stripe_fixtures_the_tests_build_on_are_in_the_repository() -> None:
    from tests.support.stripe_events import FIXTURES, fixture

    assert FIXTURES.is_relative_to(ROOT)
    assert (FIXTURES / "README.md").is_file() and (FIXTURES / "LICENSE").is_file()
    for name in ("customer", "invoice", "invoice_payment", "charge", "refund", "credit_note", "subscription"):
        assert fixture(name)["object"] == name
    assert fixture("invoice", legacy=True)["object"] == "invoice"
