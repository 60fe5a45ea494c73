"""Reads that several status sources of one cycle share.

The pilot (``Condor``) and the VM (``CondorEC2``) batch status sources of one schedd ask the
schedd the same question each cycle: this factory's jobs. They are different sources (each
queue reads its own kind), so the factory hands them one ``SharedReads``: the first asks the
schedd, the second gets the same answer. A new cycle forgets everything; a plugin used outside
a factory (``SharedReads()`` unopened) always reads afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class SharedReads:
    def __init__(self) -> None:
        self._open = False
        self._answers: dict[Hashable, Any] = {}
        self._cycle = 0
        self.hits = 0

    def new_cycle(self) -> None:
        """Called by the factory before it refreshes its sources."""
        self._open = True
        self._cycle += 1
        self._answers.clear()

    def end_cycle(self) -> None:
        """Drops the answers, so nothing of a cycle stays alive after it, and closes: a read
        between cycles (a test's probe, a status command) asks afresh."""
        self._open = False
        self._cycle += 1
        self._answers.clear()

    def get(self, key: Hashable, read: Callable[[], T]) -> T:
        """``read()``'s answer, asked at most once per cycle for ``key``; a failed read is not
        kept (the next source asks again and fails on its own). An answer that arrives after
        its cycle ended (a refresh left running past ``refresh_timeout``) is not kept for the
        next one."""
        if not self._open:
            return read()
        if key in self._answers:
            self.hits += 1
            return self._answers[key]  # type: ignore[no-any-return]
        cycle = self._cycle
        answer = read()
        if cycle == self._cycle:
            self._answers[key] = answer
        return answer
