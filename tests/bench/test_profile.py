"""Folding py-spy's raw samples into the report's hotspots (no py-spy needed: its output format)."""

from __future__ import annotations

import pytest

from bench import profile
from bench.profile import fold

RAW = [
    "_run_module_as_main (<frozen runpy>:198);Handle._run (asyncio/events.py:80);"
    "Consumer.run (services/common/consumer.py:228);load_json (services/common/events.py:70) 6\n",
    "_run_module_as_main (<frozen runpy>:198);Handle._run (asyncio/events.py:80);"
    "Consumer.run (services/common/consumer.py:230);_apply (services/billing/batch.py:55);"
    "map_invoice (services/billing/mapping.py:500) 3\n",
    # a function that recurses is counted once per stack
    "_run_module_as_main (<frozen runpy>:198);plain (services/crm_export/mapping.py:313);"
    "plain (services/crm_export/mapping.py:316) 1\n",
    # start-up imports are not the measured work
    "_run_module_as_main (<frozen runpy>:198);_find_and_load (<frozen importlib._bootstrap>:1176) 50\n",
    "garbage without a count\n",
    # the event loop waiting for I/O is idle time, not work
    "_run_module_as_main (<frozen runpy>:198);BaseEventLoop._run_once (asyncio/base_events.py:1884);"
    "EpollSelector.select (selectors.py:468) 40\n",
]


def test_shares_are_of_all_measured_samples_with_plumbing_left_out() -> None:
    spots = fold(RAW)
    assert (spots.samples, spots.idle) == (10, 40)
    inclusive = dict(spots.inclusive)
    assert inclusive["Consumer.run (consumer.py)"] == pytest.approx(90.0)
    assert inclusive["load_json (events.py)"] == pytest.approx(60.0)
    assert inclusive["plain (mapping.py)"] == pytest.approx(10.0)
    assert not any(name.startswith(("Handle._run", "_run_module_as_main")) for name in inclusive)
    assert dict(spots.own) == {
        "load_json (events.py)": pytest.approx(60.0),
        "map_invoice (mapping.py)": pytest.approx(30.0),
        "plain (mapping.py)": pytest.approx(10.0),
    }
    assert spots.lines()[0] == "10 busy samples (40 idle left out)" and "load_json (events.py) 60 %" in spots.lines()[2]


def test_an_empty_recording_says_so() -> None:
    assert fold([]).lines() == ["no samples (the process was idle, or py-spy could not read it)"]


def test_a_missing_py_spy_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.profile.shutil.which", lambda _name: None)
    with pytest.raises(profile.ProfilerMissing, match="pip install py-spy"):
        profile.py_spy()
