"""DrainTime: slots for the waiting work to drain within the target time."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfactory.factory.info import BatchQueueInfo, WMSQueueInfo, Worker, WorkerState
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import SchedContext
from pilotfactory.plugins.sched.draintime import DrainTime
from pilotfactory.plugins.sched.elastic import JobsPerVM

NOW = 1_700_000_000.0
I, B, P = WorkerState.IDLE, WorkerState.BUSY, WorkerState.PENDING


def ctx(states: tuple[WorkerState, ...], ready: int) -> SchedContext:
    workers = tuple(
        Worker(f"w{i}", "q", s, NOW, slots_total=4, slots_busy=4 if s is B else 0)
        for i, s in enumerate(states)
    )
    return SchedContext(
        "q", NOW, WMSQueueInfo("q", NOW, ready=ready), BatchQueueInfo("q", NOW, workers)
    )


def calc(params: dict[str, Any], c: SchedContext) -> int:
    return DrainTime(merged(DrainTime.PARAMS, params)).calc(0, c)[0]


@pytest.mark.parametrize(
    ("runtime", "target", "states", "ready", "expected"),
    [
        (1800, 3600, (), 100, 13),  # 50 slots drain 50 slot-hours in 1 h: 13 VMs of 4
        (3600, 3600, (), 100, 25),  # runtime == target: one slot per job, as JobsPerVM
        (7200, 3600, (), 100, 25),  # never more than one slot per job
        (600, 3600, (), 100, 5),  # ceil(100 * 600 / 3600) = 17 slots -> 5 VMs
        (1800, 3600, (I, I), 100, 11),  # 8 free slots run 16 of them
        (1800, 3600, (B, P), 100, 11),  # 4 busy slots run 1 job more each, 4 coming 2 each
        (1800, 3600, (I,) * 13, 100, 0),
        (1800, 3600, (), 0, 0),
    ],
)
def test_drain_time_sizing(
    runtime: float, target: float, states: tuple[WorkerState, ...], ready: int, expected: int
) -> None:
    assert calc({"jobs": 4, "runtime": runtime, "target": target}, ctx(states, ready)) == expected


def test_long_jobs_size_like_jobs_per_vm() -> None:
    for ready in (1, 4, 5, 99):
        c = ctx((I, B), ready)
        jpv = JobsPerVM(merged(JobsPerVM.PARAMS, {"jobs": 4})).calc(0, c)[0]
        assert calc({"jobs": 4, "runtime": 3600, "target": 600}, c) == jpv


def test_missing_info_is_zero() -> None:
    c = SchedContext("q", NOW, None, None)
    assert calc({}, c) == 0
