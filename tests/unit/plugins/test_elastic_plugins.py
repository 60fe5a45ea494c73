"""The elastic (ECM / elastiq) scheduler plugins as ``plugin, params, n, workers -> n`` rows.

The expected numbers are worked out by hand from the ECM settings' meaning, not from the code.
"""

from __future__ import annotations

from typing import Any

import pytest

from pilotfactory.factory.info import BatchQueueInfo, WMSQueueInfo, Worker, WorkerState
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import SchedContext, SchedPlugin
from pilotfactory.plugins.sched.elastic import IdleShutdown, JobsPerVM, MaxVMs, MinVMs

NOW = 1_000_000.0
S = WorkerState
I, B, R, P, H = S.IDLE, S.BUSY, S.RETIRING, S.PENDING, S.HELD


def ctx(states: tuple[WorkerState, ...], ready: int = 0, idle_for: float = 0.0) -> SchedContext:
    workers = tuple(
        Worker(f"w{i}", "q", s, NOW - idle_for, slots_total=4, slots_busy=4 if s is B else 0)
        for i, s in enumerate(states)
    )
    return SchedContext(
        "q", NOW, WMSQueueInfo("q", NOW, ready=ready), BatchQueueInfo("q", NOW, workers)
    )


def run(cls: type[SchedPlugin], params: dict[str, Any], n: int, c: SchedContext) -> int:
    return cls(merged(cls.PARAMS, params)).calc(n, c)[0]


ROWS = [
    # MinVMs: n < 0 never goes below minimum - staying
    (MinVMs, {"minimum": 1}, -3, (I, I, I), -2),
    (MinVMs, {"minimum": 1}, -1, (I,), 0),
    (MinVMs, {"minimum": 0}, -1, (I,), -1),
    (MinVMs, {"minimum": 2}, -1, (I, B, B), -1),
    # ... and a retiring VM is leaving: it does not hold the floor (the regression row: the
    # last idle VM must not be retired while the other drains)
    (MinVMs, {"minimum": 1}, -1, (R, I), 0),
    (MinVMs, {"minimum": 1}, 0, (R,), 1),  # top-up: the planner un-retires it
    (MinVMs, {"minimum": 1}, 0, (P,), 0),  # a VM on its way counts
    (MinVMs, {"minimum": 1}, 0, (H,), 0),  # HELD is supply (reaped after held_timeout)
    (MinVMs, {"minimum": 3}, 5, (), 5),
    # MaxVMs: n=2 with one retiring: the planner un-retires it and buys one, 3 in all
    (MaxVMs, {"maximum": 3}, 5, (R, I), 2),
    (MaxVMs, {"maximum": 2}, 1, (R, B), 1),  # work came back: the un-retire is allowed
    (MaxVMs, {"maximum": 3}, 0, (I, I, I, I), -1),
    (MaxVMs, {}, 7, (I,), 7),
    # ... but a retiring VM is not an excess to take away again (the regression rows: one
    # busy VM more was drained every cycle until none stayed)
    (MaxVMs, {"maximum": 1}, 0, (R, B), 0),
    (MaxVMs, {"maximum": 1}, 0, (R, B, I), -1),
    (MaxVMs, {"maximum": 1}, 3, (R, B), 0),
    (MaxVMs, {"maximum": 2}, 3, (R, R, B), 1),  # un-retire one; no new VM
    (MaxVMs, {"maximum": 0}, 0, (R, R), 0),
    # JobsPerVM: 4 idle jobs need 1 VM, 5 need 2 (ECM's JOBS_PER_VM)
    (JobsPerVM, {"jobs": 4}, 0, (), 0),
]


@pytest.mark.parametrize(("cls", "params", "n", "states", "expected"), ROWS)
def test_elastic_rows(
    cls: type[SchedPlugin],
    params: dict[str, Any],
    n: int,
    states: tuple[WorkerState, ...],
    expected: int,
) -> None:
    assert run(cls, params, n, ctx(states)) == expected


@pytest.mark.parametrize(("ready", "expected"), [(4, 1), (5, 2), (12, 3), (0, 0)])
def test_jobs_per_vm_rounds_up(ready: int, expected: int) -> None:
    assert run(JobsPerVM, {"jobs": 4}, 0, ctx((), ready=ready)) == expected


def test_idle_shutdown_then_min_vms_keeps_the_floor() -> None:
    """ECM: IDLE_TIME=2400, MIN_VMS=1 -- three long-idle VMs go down to one, not zero."""
    c = ctx((I, I, I), idle_for=2400)
    n = run(IdleShutdown, {"idle_time": 2400}, 0, c)
    assert n == -3
    assert run(MinVMs, {"minimum": 1}, n, c) == -2
    assert run(IdleShutdown, {"idle_time": 2400}, 0, ctx((I, I, I), idle_for=2399)) == 0


def test_idle_shutdown_keeps_idle_vms_waiting_jobs_need() -> None:
    """A VM that just joined is idle until the negotiator matches a waiting job to it: it is
    not retired while jobs wait for its slots (found on the real pool with idle_time = 0)."""
    params = {"idle_time": 0}
    # 3 idle VMs of 4 slots, 5 jobs waiting: 2 VMs are needed, 1 is spare
    assert run(IdleShutdown, params, 0, ctx((I, I, I), ready=5)) == -1
    assert run(IdleShutdown, params, 0, ctx((I, I, I), ready=8)) == -1
    assert run(IdleShutdown, params, 0, ctx((I, I, I), ready=9)) == 0
    assert run(IdleShutdown, params, 0, ctx((I, I, I), ready=0)) == -3
    # free slots on a partly busy VM take waiting jobs first
    c = ctx((I, I), ready=2)
    partly = Worker("pb", "q", B, NOW, slots_total=4, slots_busy=2)
    c = SchedContext("q", NOW, c.wms, BatchQueueInfo("q", NOW, (*c.batch.workers, partly)))
    assert run(IdleShutdown, params, 0, c) == -2


def test_idle_shutdown_retires_the_longest_idle() -> None:
    old = Worker("old", "q", I, NOW - 900, slots_total=1)
    new = Worker("new", "q", I, NOW - 10, slots_total=1)
    c = SchedContext(
        "q", NOW, WMSQueueInfo("q", NOW, ready=1), BatchQueueInfo("q", NOW, (old, new))
    )
    n, why = IdleShutdown(merged(IdleShutdown.PARAMS, {"idle_time": 0})).calc(0, c)
    assert n == -1 and "kept_for_waiting_jobs=1" in why
