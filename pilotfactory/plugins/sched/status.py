"""Site-status overrides: a fixed number of workers while the WMS site is offline / in test."""

from __future__ import annotations

from typing import ClassVar

from pilotfactory.factory.info import SiteStatus
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class _SiteStatusOverride(SchedPlugin):
    """``pilots`` when the site is in ``STATUS``, else n; no WMS info gives 0 (fail closed)."""

    STATUS: ClassVar[SiteStatus]
    PARAMS = (Param("pilots", int, 0),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if ctx.wms is None:
            return 0, f"{self.NAME}: no wms info, ret=0"
        status = ctx.wms.site_status
        pilots = self.params["pilots"]
        out = pilots if status is self.STATUS else n
        return out, f"{self.NAME}: in={n} site={status.value} pilots={pilots} ret={out}"


class StatusOffline(_SiteStatusOverride):
    """Offline site: usually 0, or a trickle to notice when it comes back."""

    NAME = "StatusOffline"
    STATUS = SiteStatus.OFFLINE


class StatusTest(_SiteStatusOverride):
    """Site in test: a few workers to run the test jobs, not the full demand."""

    NAME = "StatusTest"
    STATUS = SiteStatus.TEST
