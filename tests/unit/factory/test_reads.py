"""SharedReads: one answer per key within a cycle, fresh answers outside one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pilotfactory.factory.reads import SharedReads


def counter() -> Callable[[], int]:
    """A read that answers how many times it was asked."""
    calls: list[int] = []

    def read() -> int:
        calls.append(1)
        return len(calls)

    return read


def test_within_a_cycle_one_read_per_key() -> None:
    reads, read = SharedReads(), counter()
    reads.new_cycle()
    assert [reads.get("jobs", read), reads.get("jobs", read)] == [1, 1]
    assert reads.get("other", read) == 2 and reads.hits == 1


def test_outside_a_cycle_every_read_asks() -> None:
    """A probe between cycles must never see the last cycle's answer (it once did)."""
    reads, read = SharedReads(), counter()
    assert [reads.get("jobs", read), reads.get("jobs", read)] == [1, 2]
    reads.new_cycle()
    assert reads.get("jobs", read) == 3
    reads.end_cycle()
    assert [reads.get("jobs", read), reads.get("jobs", read)] == [4, 5]
    reads.new_cycle()
    assert reads.get("jobs", read) == 6


def test_a_failed_read_is_not_kept() -> None:
    reads = SharedReads()
    reads.new_cycle()

    def broken() -> int:
        raise RuntimeError("schedd down")

    with pytest.raises(RuntimeError):
        reads.get("jobs", broken)
    assert reads.get("jobs", lambda: 7) == 7
