"""Progress on stderr: a bar in a terminal, a line every few seconds anywhere else."""

from __future__ import annotations

import time

import pytest

from services.common.progress import progress

pytestmark = pytest.mark.unit


def test_not_a_terminal_gives_a_line_per_interval_with_rate_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress(total=30, desc="verify customers", unit="obj", interval=0.05, terminal=False)
    for _ in range(3):
        time.sleep(0.06)
        bar.update(10)
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) >= 2, err
    assert lines[-1].startswith("verify customers: 30/30 obj (100 %) in 00:00, "), lines
    assert " obj/s, about " in lines[0] and " left" in lines[0], lines


def test_an_unknown_total_promises_no_end(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress(total=None, desc="events", unit="evt", interval=0.05, terminal=False)
    time.sleep(0.06)
    bar.update(7)
    bar.set_description("events: page 2")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("events") for line in lines), lines
    assert lines[-1].startswith("events: page 2: 7 evt in 00:00, "), lines
    assert not any("%" in line or "left" in line or ": :" in line for line in lines), lines


def test_a_short_phase_writes_only_its_final_count_and_an_empty_one_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bar = progress(total=None, desc="customers", unit="obj", interval=60, terminal=False)
    bar.update(2)
    bar.close()
    progress(total=None, desc="prices", unit="obj", interval=60, terminal=False).close()
    disabled = progress(total=5, desc="off", unit="obj", enabled=False, terminal=False)
    disabled.update(5)
    disabled.close()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("customers: 2 obj in 00:00, "), line
