"""Condor WMS status: payload waiting in an HTCondor pool, counted per ``MATCH_APF_QUEUE`` label.

This is how the two-queue elastic pool works: payload jobs (which may be another queue's
pilots) carry a label, and a VM queue whose ``wmsqueue`` is that label grows the pool from
their idle count. One projected query per schedd per cycle serves every queue.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import replace
from typing import Any

from pilotfactory.factory.contract import TARGET_PARAMS, target_from
from pilotfactory.factory.info import SiteStatus, WMSQueueInfo
from pilotfactory.factory.plugin import Env, WMSStatusPlugin
from pilotfactory.factory.ports import CondorTarget

log = logging.getLogger(__name__)

ANY = "ANY"
# JobStatus -> WMSQueueInfo field (APF's Condor WMS mapping).
FIELD = {0: "ready", 1: "ready", 2: "running", 6: "running", 3: "done", 4: "done", 5: "failed"}
# VM jobs of any pilotfactory are supply, not payload.
CONSTRAINT = "MATCH_APF_QUEUE =!= undefined && !(JobUniverse == 9 && PilotFactoryId =!= undefined)"
PROJECTION = ("MATCH_APF_QUEUE", "JobStatus", "JobUniverse", "PilotFactoryId", "PilotFactoryQueue")


def is_payload(ad: Mapping[str, Any]) -> bool:
    if not ad.get("MATCH_APF_QUEUE"):
        return False
    return not (ad.get("JobUniverse") == 9 and ad.get("PilotFactoryId") is not None)


class CondorWMSStatus(WMSStatusPlugin):
    """Idle / running / done / held payload jobs per label; ``ANY`` sums every label."""

    NAME = "Condor"
    ALIASES = ("CondorLocal",)
    PARAMS = (
        *TARGET_PARAMS,
        WMSStatusPlugin.MAXAGE,
    )

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self.target: CondorTarget = target_from(params)
        self._counts: dict[str, dict[str, int]] = {}
        self._own: dict[tuple[str, str], dict[str, int]] = {}  # (label, queue) -> its pilots

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        return (cls.NAME, target_from(params))

    def refresh(self) -> None:
        now = self.env.clock.now()
        port = self.env.world.condor(self.target)
        ads = port.query_jobs({}, PROJECTION, CONSTRAINT)
        counts: dict[str, dict[str, int]] = {}
        own: dict[tuple[str, str], dict[str, int]] = {}
        for ad in ads:
            if not is_payload(ad):
                continue
            label = str(ad["MATCH_APF_QUEUE"])
            name = FIELD.get(int(ad.get("JobStatus", -1)), "unknown")
            bucket = counts.setdefault(label, {})
            bucket[name] = bucket.get(name, 0) + 1
            if ad.get("PilotFactoryId") == self.env.factory_id and ad.get("PilotFactoryQueue"):
                mine = own.setdefault((label, str(ad["PilotFactoryQueue"])), {})
                mine[name] = mine.get(name, 0) + 1
        self._counts, self._own = counts, own
        self.snapshot_time = now
        log.debug("[%s] %d payload job(s) under %d label(s)", self.NAME, len(ads), len(counts))

    def info_for(self, queue: str, wmsqueue: str, params: Mapping[str, Any]) -> WMSQueueInfo | None:
        """A pilot queue whose ``wmsqueue`` is the label its own pilots carry does not count
        them as its waiting work (it would feed on itself until a cap stopped it); another
        queue's pilots under that label stay payload (the two-queue elastic pool)."""
        info = self.info(wmsqueue, params)
        if info is None:
            return None
        labels = list(self._counts) if wmsqueue == ANY else [wmsqueue]
        for label in labels:
            for name, n in self._own.get((label, queue), {}).items():
                info = replace(info, **{name: getattr(info, name) - n})
        return info

    def info(self, wmsqueue: str, params: Mapping[str, Any]) -> WMSQueueInfo | None:
        maxage = float(self.MAXAGE.of(params if params.get("maxage") is not None else self.params))
        now = self.env.clock.now()
        if self.snapshot_time is None or now - self.snapshot_time > maxage:
            log.warning("[%s] no Condor WMS status (missing or older than %gs)", wmsqueue, maxage)
            return None
        labels = list(self._counts) if wmsqueue == ANY else [wmsqueue]
        info = WMSQueueInfo(wmsqueue, self.snapshot_time, site_status=SiteStatus.ONLINE)
        for label in labels:
            for name, n in self._counts.get(label, {}).items():
                info = replace(info, **{name: getattr(info, name) + n})
        return info
