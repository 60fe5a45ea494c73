"""Ready: one new worker per waiting WMS job that no pending worker will pick up yet."""

from __future__ import annotations

from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class Ready(SchedPlugin):
    """``max(0, (ready - offset) - pending)``; ignores n.

    Pending workers will each take a ready job once they start, so they are subtracted;
    running ones already have theirs. Without WMS or batch info it returns 0 (fail closed).
    """

    NAME = "Ready"
    PARAMS = (Param("offset", int, 0, doc="ready jobs to leave unserved (headroom)"),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if ctx.wms is None:
            return 0, "Ready: no wms info, ret=0"
        if ctx.batch is None:
            return 0, "Ready: no batch info, ret=0"
        offset = self.params["offset"]
        ready, pending = ctx.wms.ready, ctx.batch.pending
        out = max(0, (ready - offset) - pending)
        return out, f"Ready: in={n} ready={ready} offset={offset} pending={pending} ret={out}"
