"""Activated: APF's legacy all-in-one scheduler, kept so old queues.conf files run unchanged."""

from __future__ import annotations

from collections.abc import Callable

from pilotfactory.factory.info import SiteStatus
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class Activated(SchedPlugin):
    """``max(0, activated - pending)`` bounded by the optional limits below, in APF's order.

    A limit applies only when its key is set (0 is a value). Site offline gives 0; site in test
    gives ``testmode.pilots`` (0 while more than ``testmode.max_pending`` are pending) when
    ``testmode.allowed``. Missing WMS or batch info gives ``default``. Ignores n.
    """

    NAME = "Activated"
    PARAMS = (
        Param("default", int, 0, doc="result when WMS or batch info is missing"),
        Param("max_jobs_torun", int, doc="cap on pending + running + new"),
        Param("max_pilots_per_cycle", int),
        Param("min_pilots_per_cycle", int),
        Param("min_pilots_pending", int),
        Param("max_pilots_pending", int),
        Param("testmode.allowed", bool, False),
        Param("testmode.pilots", int, 0),
        Param("testmode.max_pending", int, 10),
    )

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        p = self.params
        if ctx.wms is None or ctx.batch is None:
            missing = "wms" if ctx.wms is None else "batch"
            return p["default"], f"Activated: no {missing} info, ret={p['default']}"
        pending, running = ctx.batch.pending, ctx.batch.running
        status = ctx.wms.site_status
        if status is SiteStatus.OFFLINE:
            return 0, f"Activated: in={n} site=offline ret=0"
        if status is SiteStatus.TEST and p["testmode.allowed"]:
            max_pending = p["testmode.max_pending"]
            out = 0 if pending > max_pending else p["testmode.pilots"]
            return out, (
                f"Activated: in={n} site=test pending={pending} "
                f"testmode.max_pending={max_pending} ret={out}"
            )
        activated = ctx.wms.ready
        out = max(0, activated - pending)
        # (key, how it bounds out, what is subtracted from the key's value)
        limits: tuple[tuple[str, Callable[[int, int], int], int], ...] = (
            ("max_jobs_torun", min, pending + running),
            ("min_pilots_pending", max, pending),
            ("max_pilots_per_cycle", min, 0),
            ("min_pilots_per_cycle", max, 0),
            ("max_pilots_pending", min, pending),
        )
        applied = ""
        for key, bound, minus in limits:
            if p[key] is not None:
                out = bound(out, p[key] - minus)
                applied += f" {key}={p[key]}"
        out = max(0, out)
        return out, (
            f"Activated: in={n} site={status.value} activated={activated} pending={pending} "
            f"running={running}{applied} ret={out}"
        )
