"""SIGINT and SIGTERM as requests to stop at the next safe point, not as deaths mid-step.

While :class:`StopSignals` is active, the first SIGINT (Ctrl-C) or SIGTERM is only recorded;
training polls it after every step and stops there, writing a checkpoint it can be resumed
from. Another signal more than :data:`GRACE` seconds later raises :class:`KeyboardInterrupt` at
once (every file is written atomically, so even that leaves no half-written file); one within
that time is taken for the same request delivered twice, as when both a job scheduler and
``torchrun`` forward it.

Example:
    >>> with StopSignals() as stop:
    ...     stop() is None
    True
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["StopSignals", "SIGNALS", "GRACE", "exit_status"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds after a first signal during which another one repeats the request instead of forcing a stop.
GRACE = 2.0


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by signal ``signum``: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


class StopSignals:
    """Record SIGINT and SIGTERM while active; calling the object returns the first one received, or ``None``."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def __call__(self) -> int | None:
        return self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first > GRACE:
            raise KeyboardInterrupt  # asked again: stop now

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
