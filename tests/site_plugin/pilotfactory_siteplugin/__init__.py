"""A site's own scheduler plugin, packaged separately, found only through its entry point."""

from __future__ import annotations

from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class SiteQuota(SchedPlugin):
    """Grants ``share`` percent of the ready jobs, at least ``floor`` workers."""

    NAME = "SiteQuota"
    PARAMS = (Param("share", int, 50), Param("floor", int, 0))

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        ready = ctx.wms.ready if ctx.wms else 0
        out = max(int(self.params["floor"]), ready * int(self.params["share"]) // 100)
        return out, f"SiteQuota: ready={ready} share={self.params['share']} ret={out}"
