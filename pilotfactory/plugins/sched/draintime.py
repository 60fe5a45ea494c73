"""Time-based demand: size a VM queue to drain its waiting work within a target time.

``JobsPerVM`` buys a slot for every waiting job, so a burst of short jobs buys VMs that boot
after most of the work could already have run on the slots there are, and then sit idle.
Within ``target`` seconds a slot runs ``r = target / runtime`` jobs (at least one); a busy
slot ``r - 1`` (its current job may take a whole ``runtime``). New slots cover what the free,
busy and coming slots cannot: ``ceil((ready - capacity) / r)``. With ``runtime >= target``
this is exactly ``JobsPerVM``; shorter jobs buy fewer VMs and wait up to ``target``.
``schedplugin = DrainTime, IdleShutdown, MinVMs, MaxVMs``.
"""

from __future__ import annotations

import math

from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.params import DURATION_MAX, Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class DrainTime(SchedPlugin):
    """New VMs for the slots the waiting work needs to drain within ``target`` seconds."""

    NAME = "DrainTime"
    PARAMS = (
        Param("jobs", int, 1, "job slots per VM", minimum=1),
        Param(
            "runtime",
            float,
            3600.0,
            "expected run time of a waiting job (seconds)",
            minimum=1.0,
            maximum=DURATION_MAX,
        ),
        Param(
            "target",
            float,
            3600.0,
            "drain the waiting work within this (seconds)",
            minimum=1.0,
            maximum=DURATION_MAX,
        ),
    )

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if ctx.wms is None or ctx.batch is None:
            return 0, "DrainTime: missing info, ret=0"
        jobs = int(self.params["jobs"])
        rate = max(1.0, float(self.params["target"]) / float(self.params["runtime"]))
        ready = ctx.wms.ready
        free = busy = 0
        for w in ctx.batch.workers:
            if w.state in (WorkerState.IDLE, WorkerState.BUSY):
                free += max(0, (w.slots_total or jobs) - w.slots_busy)
                busy += w.slots_busy
        coming = ctx.batch.pending * jobs
        capacity = (free + coming) * rate + busy * (rate - 1.0)
        slots = math.ceil(max(0.0, ready - capacity) / rate - 1e-9)
        out = math.ceil(slots / jobs)
        return out, (
            f"DrainTime: ready={ready} jobs_per_slot={rate:g} free_slots={free} "
            f"busy_slots={busy} coming_slots={coming} new_slots={slots} jobs={jobs} ret={out}"
        )
