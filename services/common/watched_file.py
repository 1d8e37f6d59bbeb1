"""A configuration file re-read when it changes: credentials are added, rotated or revoked by
editing the file (or by Kubernetes swapping a mounted Secret), without restarting the services.

A file that cannot be read or parsed at start stops the process naming the variable; once
running, a bad edit keeps the last good contents (logged), so a typo never locks every caller
out, and the next good edit is picked up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from services.common.errors import SettingsError

log = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedFile(Generic[T]):
    """The parsed contents of `path`, parsed again when its modification time or size changes."""

    def __init__(self, path: str, parse: Callable[[str], T], *, variable: str) -> None:
        self.path = Path(path)
        self.variable = variable
        self._parse = parse
        self._stamp: tuple[int, int] | None = None
        self._value: T | None = None
        #: The last problem logged, so a missing or malformed file is reported once, not per call.
        self._problem: str | None = None
        self.current()  # a missing or malformed file stops start-up, not the first call

    def current(self) -> T:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                text = self.path.read_text(encoding="utf-8")
                # Remembered before parsing: a malformed edit is parsed once, not on every call.
                self._stamp = stamp if self._value is not None else None
                self._value = self._parse(text)
                self._stamp = stamp
                self._problem = None
        except OSError as exc:
            if self._value is None:
                raise SettingsError(f"{self.variable}={self.path} cannot be read: {exc.strerror}") from exc
            self._report(f"cannot be read ({exc.strerror})")
        except UnicodeDecodeError:
            if self._value is None:
                raise SettingsError(f"{self.variable}={self.path} is not UTF-8 text") from None
            self._report("is not UTF-8 text")
        except SettingsError as exc:
            if self._value is None:
                raise
            # The message names a line or a key, never a secret (the parsers make sure of it).
            self._report(f"changed but is malformed: {exc}")
        assert self._value is not None
        return self._value

    def _report(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.error("%s=%s %s: keeping what was read before", self.variable, self.path, problem)
