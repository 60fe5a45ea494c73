"""Scheduler plugins for elastic VM clusters (the ECM/elastiq settings, in APF's chain form).

APF's plugins never ask for fewer VMs when work runs out (Ready is never negative), so an
elastic pool needs these: demand per VM slot, idle shutdown and min/max bounds.
``JOBS_PER_VM=4, IDLE_TIME=2400, MIN_VMS=1, MAX_VMS=3`` becomes
``schedplugin = JobsPerVM, IdleShutdown, MinVMs, MaxVMs`` with their parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pilotfactory.factory.info import Worker, WorkerState
from pilotfactory.factory.params import DURATION_MAX, Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class JobsPerVM(SchedPlugin):
    """New VMs for idle jobs no existing or coming slot will take: ceil(uncovered / jobs)."""

    NAME = "JobsPerVM"
    PARAMS = (Param("jobs", int, 1, "job slots per VM", minimum=1),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if ctx.wms is None or ctx.batch is None:
            return 0, "JobsPerVM: missing info, ret=0"
        jobs = int(self.params["jobs"])
        free = sum(
            max(0, (w.slots_total or jobs) - w.slots_busy)
            for w in ctx.batch.workers
            if w.state in (WorkerState.IDLE, WorkerState.BUSY)
        )
        coming = ctx.batch.pending * jobs
        uncovered = max(0, ctx.wms.ready - free - coming)
        out = math.ceil(uncovered / jobs)
        return out, (
            f"JobsPerVM: ready={ctx.wms.ready} free_slots={free} coming_slots={coming} "
            f"jobs={jobs} ret={out}"
        )


class IdleShutdown(SchedPlugin):
    """When nothing is to be added, retire VMs idle for ``idle_time`` seconds or more, except
    those whose free slots the waiting jobs need.

    A VM that has just joined is idle until the negotiator's next cycle gives it a job; with
    jobs waiting, retiring it throws away the VM that was bought for them and buys another
    (seen on a real pool: with ``idle_time = 0`` every new VM was drained on joining, for as
    long as the jobs waited). So idle slots on VMs that are not old enough, and on busy VMs,
    are counted against the waiting jobs first; of the eligible VMs the most recently idle are
    kept for what remains, and the longest idle are the ones retired.
    """

    NAME = "IdleShutdown"
    PARAMS = (
        Param(
            "idle_time",
            float,
            2400.0,
            "seconds idle before retire",
            minimum=0.0,
            maximum=DURATION_MAX,
        ),
    )

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if n > 0 or ctx.batch is None:
            return n, f"IdleShutdown: in={n} ret={n}"
        limit = float(self.params["idle_time"])
        eligible: list[Worker] = []
        other_free = 0
        for w in ctx.batch.workers:
            if w.state is WorkerState.IDLE and ctx.now - w.since >= limit:
                eligible.append(w)
            elif w.state in (WorkerState.IDLE, WorkerState.BUSY):
                other_free += free_slots(w)
        waiting = ctx.wms.ready if ctx.wms is not None else 0
        needed = max(0, waiting - other_free)
        eligible.sort(key=lambda w: w.since, reverse=True)  # most recently idle first
        kept = 0
        for w in eligible:
            if needed <= 0:
                break
            needed -= free_slots(w)
            kept += 1
        out = min(n, kept - len(eligible))
        return out, (
            f"IdleShutdown: in={n} idle>={limit:g}s={len(eligible)} "
            f"kept_for_waiting_jobs={kept} ret={out}"
        )


def free_slots(w: Worker) -> int:
    """Job slots a joined VM could still take (an unknown slot count is one)."""
    free = max(0, w.slots_total - w.slots_busy)
    return max(1, free) if w.state is WorkerState.IDLE else free


class MinVMs(SchedPlugin):
    """Never take the queue below ``minimum`` staying workers, and top it up to it.

    RETIRING workers are leaving, so they do not count: otherwise an idle VM could be retired
    while another drains, and the pool would fall to zero (ECM's MIN_VMS "are never
    terminated"). A top-up then un-retires one (the planner's cheapest n > 0).
    """

    NAME = "MinVMs"
    PARAMS = (Param("minimum", int, 0, minimum=0),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if ctx.batch is None:
            return n, f"MinVMs: no batch info, ret={n}"
        minimum = int(self.params["minimum"])
        staying = ctx.batch.supply - ctx.batch.count(WorkerState.RETIRING)
        out = max(n, minimum - staying)
        return out, f"MinVMs: in={n} staying={staying} minimum={minimum} ret={out}"


class MaxVMs(SchedPlugin):
    """Never more than ``maximum`` workers; above it, take the excess away.

    Measured against the workers that stay (RETIRING ones are leaving): the planner spends a
    positive n on un-retiring first, which adds no VM, and only the rest on new VMs, so
    ``n <= maximum - staying`` never buys past the maximum while retiring VMs still cost money.
    Counting retiring VMs as supply instead (seen on the real pool) blocked the un-retire that
    returning work asked for, and counted a draining VM as excess again, so one more busy VM
    was drained every cycle until none stayed.
    """

    NAME = "MaxVMs"
    PARAMS = (Param("maximum", int, None, minimum=0),)

    @classmethod
    def cap(cls, params: Mapping[str, Any]) -> int | None:
        value = params.get("maximum")
        return None if value is None else int(value)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        maximum = self.params["maximum"]
        if maximum is None or ctx.batch is None:
            return n, f"MaxVMs: unset or no batch info, ret={n}"
        supply = ctx.batch.supply
        staying = supply - ctx.batch.count(WorkerState.RETIRING)
        out = min(n, int(maximum) - staying)
        return out, f"MaxVMs: in={n} supply={supply} staying={staying} maximum={maximum} ret={out}"
