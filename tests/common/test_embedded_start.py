"""Starting an embedded engine: a start cut short by a signal is tried once more, an exit of
the engine's own choosing is not (real processes, on a free loopback port)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.common.embedded import DiedAtStart, _Process

#: Listens on the port it is given until killed.
_LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "time.sleep(60)\n"
)


class _Scripted(_Process):
    """Runs `firsts` in turn (shell commands that die), then a real listener."""

    name = "scripted"

    def __init__(self, data_dir: Path, firsts: list[str]) -> None:
        super().__init__(data_dir, None, "127.0.0.1")
        self.firsts = firsts
        self.spawned = 0

    def _command(self) -> list[str]:
        self.spawned += 1
        if self.firsts:
            return ["sh", "-c", self.firsts.pop(0)]
        return [sys.executable, "-c", _LISTENER, str(self.port)]


def test_an_engine_killed_by_a_signal_while_starting_is_started_once_more(tmp_path: Path) -> None:
    engine = _Scripted(tmp_path, ["kill -SEGV $$"])
    try:
        engine.start(timeout=10)
        assert engine.running and engine.spawned == 2
    finally:
        engine.kill()


def test_twice_killed_while_starting_is_reported_with_the_signal(tmp_path: Path) -> None:
    engine = _Scripted(tmp_path, ["kill -SEGV $$", "kill -BUS $$"])
    with pytest.raises(DiedAtStart, match=r"exited with -7") as raised:
        engine.start(timeout=10)
    assert raised.value.returncode == -7 and engine.spawned == 2


def test_an_engine_that_exits_with_its_own_status_is_not_started_again(tmp_path: Path) -> None:
    engine = _Scripted(tmp_path, ["echo 'FATAL: could not bind' >&2; exit 1"])
    with pytest.raises(DiedAtStart, match=r"exited with 1:\n.*could not bind"):
        engine.start(timeout=10)
    assert engine.spawned == 1
