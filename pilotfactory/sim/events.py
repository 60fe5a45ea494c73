"""The simulator's clockwork: one time-ordered event loop and its only source of randomness.

Pool, cloud and workload all run on it; it lives apart from each so none of them has to import
another to share the loop.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable

from pilotfactory.factory.clock import Clock


def seeded_rng(seed: int) -> random.Random:
    """The simulator's only source of randomness: reproducible, not cryptographic."""
    return random.Random(seed)  # noqa: S311 - simulation, not security


class EventLoop:
    """Time-ordered events plus per-step hooks (the negotiator), advanced to the clock on demand.

    The pool, the cloud and the workload share one loop, so a VM boot, a job end and a
    negotiation cycle happen in time order whoever scheduled them. Steps are bounded and aligned
    to multiples of ``step``, so results do not depend on how often the caller ticks.
    """

    def __init__(self, clock: Clock, step: float = 5.0) -> None:
        if step <= 0:
            raise ValueError("step must be positive")
        self.clock = clock
        self.step = step
        self.now = clock.now()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._hooks: list[Callable[[], None]] = []
        self._busy = False

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), self._seq, fn))
        self._seq += 1

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def on_step(self, fn: Callable[[], None]) -> None:
        self._hooks.append(fn)

    def pending(self) -> int:
        return len(self._heap)

    def advance(self, target: float | None = None) -> None:
        """Run every event up to ``target`` (default: the clock's now); re-entrant calls no-op."""
        if self._busy:
            return
        goal = self.clock.now() if target is None else target
        self._busy = True
        try:
            while self.now < goal:
                boundary = (math.floor(self.now / self.step) + 1) * self.step
                end = min(goal, boundary)
                while self._heap and self._heap[0][0] <= end:
                    when, _, fn = heapq.heappop(self._heap)
                    self.now = max(self.now, when)
                    fn()
                self.now = end
                for hook in self._hooks:
                    hook()
        finally:
            self._busy = False
