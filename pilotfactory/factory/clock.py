"""Wall clock and virtual clock, so the same factory loop runs live and simulated.

``now`` is the time of day the factory stamps and compares (snapshot ages, deadlines);
``monotonic`` only measures how long something took (the cycle histograms), so a wall clock
stepped by NTP never makes a duration negative.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Time moves only when someone sleeps; the simulator advances its world on each tick."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        """Virtual too: a simulated cycle takes no time (its durations are 0)."""
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)
