"""EC2 / OpenStack batch status: instances this factory launched, joined with their startds.

Each refresh is one cloud list (by the factory's tag), one startd and one master query, shared
by every queue on the same account and collector. Each instance is fed to CondorEC2's join and
state table (``vm_worker``, ``Pool``) as a job-like mapping whose id is its worker tag, so a
direct-cloud VM and a grid-universe VM are judged by the same rules:

    instance    startd        -> state
    pending     -                PENDING (spot requests too)
    running     none             BOOTING (LOST past boot_timeout), RETIRED if retire recorded
    running     joined           IDLE / BUSY, RETIRING if retire recorded
    error       -                HELD, the provider's fault as hold reason
    stopping / terminated        not a worker (the factory or someone else is ending it)

Orphans are reported in ``unmatched_startds``, never touched: instances whose queue tag names
no queue of this factory, and startds advertising ``PilotFactoryWorker`` that match no instance.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from pilotfactory.factory.contract import (
    RETIRE_MODE,
    RETIRE_REQUESTED,
    TAG_FACTORY,
    TAG_QUEUE,
    TAG_RETIRE,
    TAG_RETIRE_MODE,
    TAG_UNRETIRED,
    TAG_WORKER,
    TARGET_PARAMS,
    UNRETIRED_AT,
    WORKER_ID,
    JobStatus,
    target_from,
)
from pilotfactory.factory.info import BatchQueueInfo, Worker
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import Env
from pilotfactory.factory.ports import CloudPort, Instance
from pilotfactory.plugins.batchstatus.condor import (
    JOIN_ATTRIBUTE,
    UNRETIRE_GRACE,
    Ad,
    CondorEC2BatchStatus,
    Pool,
)
from pilotfactory.plugins.cloudaccount import EC2_PARAMS, OPENSTACK_PARAMS, provider_key

log = logging.getLogger(__name__)

# Instance state -> JobStatus of the job-like mapping (3: not a worker; unknown: present).
JOB_STATUS = {
    "pending": JobStatus.IDLE,
    "running": JobStatus.RUNNING,
    "error": JobStatus.HELD,
    "stopping": JobStatus.REMOVED,
    "terminated": JobStatus.REMOVED,
}


def _stamp(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value and value > 0 else None


def instance_ad(inst: Instance) -> dict[str, Any]:
    """An instance as the job ad ``vm_worker`` reads: worker id, status, times, retire record."""
    tags = inst.tags
    ad: dict[str, Any] = {
        WORKER_ID: tags.get(TAG_WORKER) or inst.id,
        "JobStatus": JOB_STATUS.get(inst.state, JobStatus.RUNNING),
        "QDate": inst.launched_at,
        "EnteredCurrentStatus": inst.launched_at,
        "JobStartDate": inst.launched_at,
        "EC2InstanceName": inst.id,
    }
    if tags.get(TAG_QUEUE):
        ad["PilotFactoryQueue"] = tags[TAG_QUEUE]
    for tag, attr in ((TAG_RETIRE, RETIRE_REQUESTED), (TAG_UNRETIRED, UNRETIRED_AT)):
        if (value := _stamp(tags.get(tag))) is not None:
            ad[attr] = value
    if tags.get(TAG_RETIRE_MODE):
        ad[RETIRE_MODE] = tags[TAG_RETIRE_MODE]
    if ad["JobStatus"] == JobStatus.HELD:
        ad["HoldReason"] = inst.fault or f"instance {inst.id} is in state {inst.state}"
    return ad


class CloudBatchStatus(CondorEC2BatchStatus):
    """CondorEC2's join and state table over cloud instances instead of VM jobs."""

    PROVIDER: ClassVar[str] = ""
    COMMON: ClassVar[tuple[Param, ...]] = (
        *TARGET_PARAMS,
        CondorEC2BatchStatus.MAXAGE,
        JOIN_ATTRIBUTE,
        UNRETIRE_GRACE,
    )

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self._cloud: CloudPort | None = None
        self._queues: set[str] = set()
        self._by_queue: dict[str, list[str]] = {}  # queue tag -> live instance ids

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        return (cls.NAME, provider_key(cls.PROVIDER, params), target_from(params).collector)

    @property
    def cloud(self) -> CloudPort:
        if self._cloud is None:  # one client (and Keystone session) per source
            self._cloud = self.env.world.cloud(self.PROVIDER, self.params)
        return self._cloud

    def want_history(self, queue: str, window: float) -> None:
        log.warning(
            "[%s] %s batch status keeps no job history; Throttle sees none", queue, self.NAME
        )

    def fetch(self, now: float) -> tuple[Sequence[Ad], Sequence[Ad]]:
        """One list of this factory's instances; terminated ones are history, not workers."""
        ads = []
        by_queue: dict[str, list[str]] = {}
        for inst in self.cloud.list({TAG_FACTORY: self.env.factory_id}):
            if inst.state == "terminated":
                continue
            ads.append(instance_ad(inst))
            if inst.state != "stopping":
                by_queue.setdefault(inst.tags.get(TAG_QUEUE) or "", []).append(inst.id)
        self._by_queue = by_queue
        return ads, []

    def unmatched(self, jobs: Sequence[Ad], extra: Any) -> tuple[str, ...]:
        """Startds advertising a worker id (of this factory, when they say) that no instance
        claims; CondorEC2's rule, on the ``PilotFactoryWorker`` carriers only."""
        if not isinstance(extra, Pool):
            return ()
        mine = (None, self.env.factory_id)
        carriers = {
            key: [s for s in slots if s.get("PilotFactoryId") in mine]
            for key, slots in extra.slots.items()
            if key.startswith("w:")
        }
        return super().unmatched(jobs, Pool(slots=carriers))

    def info(self, queue: str) -> BatchQueueInfo | None:
        """Also reports live instances whose queue tag no queue has asked for. The factory asks
        for every queue's info (its totals) before any queue acts, so the list is complete by
        the time a queue reads it."""
        self._queues.add(queue)
        base = super().info(queue)
        if base is None:
            return None
        orphans = tuple(
            f"instance {iid} (queue {q or '?'})"
            for q, ids in sorted(self._by_queue.items())
            if q not in self._queues
            for iid in ids
        )
        return (
            replace(base, unmatched_startds=base.unmatched_startds + orphans) if orphans else base
        )

    def recheck_jobs(self, workers: Sequence[Worker]) -> list[Ad]:
        """One list (narrowed to the queue when all candidates share one), as job-like ads;
        CondorEC2's ``recheck`` then does the one constrained startd query."""
        wanted = {w.id for w in workers}
        tags = {TAG_FACTORY: self.env.factory_id}
        queues = {w.queue for w in workers}
        if len(queues) == 1:
            tags[TAG_QUEUE] = queues.pop()
        ads = [instance_ad(i) for i in self.cloud.list(tags) if i.state != "terminated"]
        return [ad for ad in ads if ad[WORKER_ID] in wanted]


class EC2BatchStatus(CloudBatchStatus):
    NAME = "EC2"
    PROVIDER = "ec2"
    PARAMS = (*EC2_PARAMS, *CloudBatchStatus.COMMON)


class OpenStackBatchStatus(CloudBatchStatus):
    NAME = "OpenStack"
    PROVIDER = "openstack"
    PARAMS = (*OPENSTACK_PARAMS, *CloudBatchStatus.COMMON)
