"""Condor / CondorEC2 batch status: this factory's jobs (and VMs' startds), one query per cycle.

One instance per schedd (and collector) serves every queue that points there. Jobs are found
by the factory's own label (``PilotFactoryId``), so two factories on one schedd never see each
other. Each VM job is joined to its startd and master ads by instance id; what the factory
recorded in the job ad (retire requested / un-retired) decides between RETIRING, RETIRED and
"vanished" (BOOTING, which the planner turns into LOST past ``boot_timeout``).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pilotfactory.factory.contract import (
    RETIRE_MODE,
    RETIRE_REQUESTED,
    RUNNING_STATUSES,
    TARGET_PARAMS,
    UNRETIRED_AT,
    WORKER_ID,
    JobStatus,
    Universe,
    classad_string,
    target_from,
)
from pilotfactory.factory.info import BatchQueueInfo, JobRecord, RetireMode, Worker, WorkerState
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import BatchStatusPlugin, Env
from pilotfactory.factory.ports import CondorPort
from pilotfactory.factory.vmstate import Phase, VMObservation, derive_state

log = logging.getLogger(__name__)

Ad = Mapping[str, Any]
S = WorkerState
JOB_ATTRS = (
    "ClusterId", "ProcId", "JobStatus", "EnteredCurrentStatus", "QDate", "JobStartDate",
    "CompletionDate", "HoldReason", "JobUniverse", "RemoteHost", "EC2InstanceName",
    "PilotFactoryQueue", "APF_QUEUE", RETIRE_REQUESTED, RETIRE_MODE, UNRETIRED_AT,
)  # fmt: skip
HISTORY_ATTRS = (
    "ClusterId", "ProcId", "JobStatus", "PilotFactoryQueue", "APF_QUEUE", "JobStartDate",
    "CompletionDate", "EnteredCurrentStatus",
)  # fmt: skip
# JobStatus -> pilot state; 3 (removed) and 4 (completed) are not workers any more.
PILOT_STATE: dict[int, WorkerState] = {
    JobStatus.UNEXPANDED: S.PENDING,
    JobStatus.IDLE: S.PENDING,
    JobStatus.RUNNING: S.BUSY,
    JobStatus.TRANSFERRING_OUTPUT: S.BUSY,
    JobStatus.HELD: S.HELD,
}
RUNNING = RUNNING_STATUSES


def _time(ad: Ad, key: str) -> float | None:
    """A positive timestamp, else None (0 means "never" in job ads)."""
    value = ad.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def job_id(ad: Ad) -> str:
    """``cluster.proc``; a direct-cloud instance, fed in as a job-like mapping, carries its
    worker id instead (so ``vm_worker`` and ``Pool`` serve both kinds of VM)."""
    wid = ad.get(WORKER_ID)
    if isinstance(wid, str) and wid:
        return wid
    return f"{ad.get('ClusterId')}.{ad.get('ProcId')}"


def queue_of(ad: Ad) -> str | None:
    return ad.get("PilotFactoryQueue") or ad.get("APF_QUEUE")


def retire_active(requested: float | None, unretired: float | None) -> bool:
    """A retire the factory recorded and has not un-retired since."""
    return requested is not None and (unretired is None or unretired <= requested)


def base_fields(ad: Ad, queue: str) -> dict[str, Any]:
    requested, unretired = _time(ad, RETIRE_REQUESTED), _time(ad, UNRETIRED_AT)
    return {
        "id": job_id(ad),
        "queue": queue,
        "retire_requested_at": requested if retire_active(requested, unretired) else None,
        "retire_mode": RetireMode.parse(ad.get(RETIRE_MODE)),
        "unretired_at": unretired,
        "submitted_at": _time(ad, "QDate"),
        "hold_reason": ad.get("HoldReason") if ad.get("JobStatus") == JobStatus.HELD else None,
    }


def pilot_worker(ad: Ad, queue: str, now: float) -> Worker | None:
    """A pilot job: JobStatus alone says it all (running = BUSY)."""
    state = PILOT_STATE.get(int(ad.get("JobStatus", -1)))
    if state is None:
        return None
    since = _time(ad, "EnteredCurrentStatus") or _time(ad, "QDate") or now
    host = ad.get("RemoteHost")
    return Worker(
        state=state,
        since=since,
        remote_host=str(host) if host else None,
        **base_fields(ad, queue),
    )


def history_records(ads: Sequence[Ad], cutoff: float) -> list[JobRecord]:
    """Jobs started since ``cutoff``; a running one has no end yet."""
    out = []
    for ad in ads:
        started = _time(ad, "JobStartDate")
        if started is None or started < cutoff:
            continue
        ended = None
        if ad.get("JobStatus") not in RUNNING:
            ended = _time(ad, "CompletionDate") or _time(ad, "EnteredCurrentStatus")
        out.append(JobRecord(job_id(ad), started, ended))
    return out


@dataclass
class Snapshot:
    time: float
    infos: dict[str, BatchQueueInfo] = field(default_factory=dict)
    unmatched: tuple[str, ...] = ()
    pool_startds: int | None = None


class CondorBatchStatus(BatchStatusPlugin):
    """Pilot jobs of this factory on one schedd, per queue."""

    NAME = "Condor"
    PARAMS = (
        *TARGET_PARAMS,
        BatchStatusPlugin.MAXAGE,
        Param("history_limit", int, 2000, "at most this many history ads per cycle", minimum=1),
    )

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self.target = target_from(params)
        self._windows: dict[str, float] = {}
        self._snap: Snapshot | None = None

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        return (cls.NAME, target_from(params))

    @property
    def port(self) -> CondorPort:
        return self.env.world.condor(self.target)

    def want_history(self, queue: str, window: float) -> None:
        self._windows[queue] = max(window, self._windows.get(queue, 0.0))

    # ------------------------------------------------------------------ per-kind hooks

    def fetch(self, now: float) -> tuple[Sequence[Ad], Sequence[Ad]]:
        """This factory's workers as job ads, and the history the queues asked for."""
        match = {"PilotFactoryId": self.env.factory_id}
        jobs = self.port.query_jobs(match, JOB_ATTRS)
        history: Sequence[Ad] = []
        if self._windows:
            since = now - max(self._windows.values())
            limit = int(self.params.get("history_limit") or 2000)
            history = self.port.query_history(match, HISTORY_ATTRS, since, limit)
        return jobs, history

    def collect(self, jobs: Sequence[Ad], now: float) -> Any:
        """Extra per-cycle data (startds) for ``worker``; none for pilots."""
        return None

    def worker(self, ad: Ad, queue: str, now: float, extra: Any) -> Worker | None:
        return pilot_worker(ad, queue, now)

    def unmatched(self, jobs: Sequence[Ad], extra: Any) -> tuple[str, ...]:
        return ()

    # ------------------------------------------------------------------ the cycle

    def refresh(self) -> None:
        now = self.env.clock.now()
        jobs, history = self.fetch(now)
        extra = self.collect(jobs, now)
        workers: dict[str, list[Worker]] = {}
        for ad in jobs:
            queue = queue_of(ad)
            w = self.worker(ad, queue, now, extra) if queue else None
            if w is not None and queue:
                workers.setdefault(queue, []).append(w)
        snap = Snapshot(now, unmatched=self.unmatched(jobs, extra))
        if isinstance(extra, Pool):
            snap.pool_startds = extra.ads
        for queue in set(workers) | set(self._windows):
            snap.infos[queue] = BatchQueueInfo(
                queue,
                now,
                tuple(workers.get(queue, ())),
                self._history(queue, now, jobs, history),
                snap.unmatched,
                snap.pool_startds,
            )
        self._snap = snap
        self.snapshot_time = now
        log.debug("[%s] %d job(s), %d queue(s)", self.NAME, len(jobs), len(workers))

    def _history(
        self, queue: str, now: float, jobs: Sequence[Ad], history: Sequence[Ad]
    ) -> tuple[JobRecord, ...] | None:
        window = self._windows.get(queue)
        if window is None:
            return None
        mine = [ad for ad in [*history, *jobs] if queue_of(ad) == queue]
        records = {r.id: r for r in history_records(mine, now - window)}
        return tuple(records.values())

    def info(self, queue: str) -> BatchQueueInfo | None:
        snap = self._snap
        maxage = float(self.MAXAGE.of(self.params))
        now = self.env.clock.now()
        if snap is None or now - snap.time > maxage:
            log.warning("[%s] no batch status (snapshot missing or older than %gs)", queue, maxage)
            return None
        hit = snap.infos.get(queue)
        if hit is not None:
            return hit
        history = () if queue in self._windows else None
        return BatchQueueInfo(queue, snap.time, (), history, snap.unmatched, snap.pool_startds)

    def recheck_jobs(self, workers: Sequence[Worker]) -> list[Ad]:
        """One query constrained to these job ids."""
        terms = []
        for w in workers:
            cluster, _, proc = w.id.partition(".")
            if cluster.isdigit() and proc.isdigit():
                terms.append(f"ClusterId == {cluster} && ProcId == {proc}")
        if not terms:
            return []
        wanted = {w.id for w in workers}
        match = {"PilotFactoryId": self.env.factory_id}
        ads = self.port.query_jobs(match, JOB_ATTRS, " || ".join(f"({t})" for t in terms))
        return [ad for ad in ads if job_id(ad) in wanted]

    def recheck(self, workers: Sequence[Worker]) -> dict[str, Worker]:
        now = self.env.clock.now()
        out: dict[str, Worker] = {}
        for ad in self.recheck_jobs(workers):
            w = self.worker(ad, queue_of(ad) or "", now, None)
            if w is not None:
                out[w.id] = w
        return out


# ---------------------------------------------------------------------------- VMs


JOIN_ATTRIBUTE = Param(
    "join_attribute", str, "EC2InstanceID", "startd attribute holding the instance id"
)
UNRETIRE_GRACE = Param(
    "unretire_grace", float, 120.0, "s an un-retired startd may be absent", minimum=0
)


def _join_keys(ad: Ad, attr: str) -> list[str]:
    """Keys a startd/master ad joins on: ``i:<instance id>`` and ``w:<worker id>``."""
    keys = []
    if isinstance(ad.get(attr), str) and ad[attr]:
        keys.append("i:" + ad[attr])
    if isinstance(ad.get("PilotFactoryWorker"), str) and ad["PilotFactoryWorker"]:
        keys.append("w:" + ad["PilotFactoryWorker"])
    return keys


def _job_keys(ad: Ad) -> list[str]:
    keys = ["w:" + job_id(ad)]
    if ad.get("EC2InstanceName"):
        keys.append("i:" + str(ad["EC2InstanceName"]))
    return keys


@dataclass
class Pool:
    """Startd slot ads and master ads of one collector, indexed by join key."""

    slots: dict[str, list[Ad]] = field(default_factory=dict)
    masters: dict[str, Ad] = field(default_factory=dict)
    ads: int = 0
    """How many slot ads the collector returned (all of them, joined or not)."""

    @classmethod
    def build(cls, slots: Sequence[Ad], masters: Sequence[Ad], attr: str) -> Pool:
        pool = cls(ads=len(slots))
        for ad in slots:
            for key in _join_keys(ad, attr):
                pool.slots.setdefault(key, []).append(ad)
        for ad in masters:
            for key in _join_keys(ad, attr):
                pool.masters[key] = ad
        return pool

    def lookup(self, job: Ad) -> tuple[list[Ad], Ad | None]:
        slots: dict[str, Ad] = {}
        master = None
        for key in _job_keys(job):
            slots.update((str(s.get("Name")), s) for s in self.slots.get(key, ()))
            master = master or self.masters.get(key)
        return list(slots.values()), master


def _slot_counts(slots: Sequence[Ad]) -> tuple[int, int]:
    """(total, busy). A pslot's Cpus is what is left unclaimed, so its dslots are added."""
    claimed = sum(
        1 for s in slots if s.get("SlotType") != "Partitionable" and s.get("State") == "Claimed"
    )
    if any(s.get("SlotType") == "Partitionable" for s in slots):
        total = sum(int(s.get("Cpus") or 0) for s in slots if s.get("SlotType") != "Static")
    else:
        total = len(slots)
    return total, claimed


PHASE: dict[int, Phase] = {
    JobStatus.UNEXPANDED: Phase.QUEUED,
    JobStatus.IDLE: Phase.QUEUED,
    JobStatus.RUNNING: Phase.RUNNING,
    JobStatus.TRANSFERRING_OUTPUT: Phase.RUNNING,
    JobStatus.HELD: Phase.HELD,
}
"""A VM job's JobStatus as a phase; any other status (removed, completed, suspended) is GONE."""


def vm_observation(
    ad: Ad,
    now: float,
    slots: Sequence[Ad],
    master: Ad | None,
    last_joined: float | None = None,
) -> VMObservation:
    """The adapter from a VM job ad (or a job-like instance mapping) and its startd ads."""
    f = base_fields(ad, "")
    total, busy = _slot_counts(slots) if slots else (0, 0)
    activity = [t for s in slots if (t := _time(s, "EnteredCurrentActivity")) is not None]
    return VMObservation(
        phase=PHASE.get(int(ad.get("JobStatus", -1)), Phase.GONE),
        entered=_time(ad, "EnteredCurrentStatus") or _time(ad, "QDate") or now,
        started=_time(ad, "JobStartDate"),
        instance_known=bool(ad.get("EC2InstanceName")),
        slots_total=total,
        slots_busy=busy,
        slot_ads=len(slots),
        first_activity=min(activity, default=None),
        last_activity=max(activity, default=None),
        master_seen=master is not None,
        retire_requested_at=f["retire_requested_at"],
        unretired_at=f["unretired_at"],
        last_joined=last_joined,
    )


def vm_worker(
    ad: Ad,
    queue: str,
    now: float,
    slots: Sequence[Ad],
    master: Ad | None,
    grace: float,
    last_joined: float | None = None,
) -> Worker | None:
    """One VM job joined with its slot and master ads, judged by ``STATE_TABLE``."""
    obs = vm_observation(ad, now, slots, master, last_joined)
    derived = derive_state(obs, now, grace)
    if derived is None:
        return None
    state, since = derived
    instance = str(ad["EC2InstanceName"]) if ad.get("EC2InstanceName") else None
    f = base_fields(ad, queue)
    if state in (S.HELD, S.PENDING):
        return Worker(state=state, since=since, instance_id=instance, **f)
    machine = (slots[0] if slots else master or {}).get("Machine")
    retire_times = [s["MaxJobRetirementTime"] for s in slots if "MaxJobRetirementTime" in s]
    return Worker(
        state=state,
        since=since,
        instance_id=instance,
        machine=machine,
        slots_total=obs.slots_total,
        slots_busy=obs.slots_busy,
        retirement_time=float(min(retire_times)) if retire_times else None,
        master_seen=obs.master_seen,
        **f,
    )


class CondorEC2BatchStatus(CondorBatchStatus):
    """VM jobs joined with their startds (one startd + one master query per cycle)."""

    NAME = "CondorEC2"
    FAMILY = "Condor"
    PARAMS = (
        *CondorBatchStatus.PARAMS,
        JOIN_ATTRIBUTE,
        UNRETIRE_GRACE,
    )

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self.join = str(JOIN_ATTRIBUTE.of(params))
        self.grace = float(UNRETIRE_GRACE.of(params))
        self._last_joined: dict[str, float] = {}  # job id -> last time its slots were seen
        self._idle_from: dict[str, float] = {}  # job id -> first cycle that saw it idle

    def _slot_query(self, constraint: str) -> list[dict[str, Any]]:
        attrs = (
            "Name", "Machine", "State", "Activity", "SlotType", "Cpus", "EnteredCurrentActivity",
            "MaxJobRetirementTime", "Draining", "PilotFactoryWorker", "PilotFactoryId", self.join,
        )  # fmt: skip
        return self.port.query_startds({}, attrs, constraint)

    def collect(self, jobs: Sequence[Ad], now: float) -> Pool:
        carriers = f"{self.join} =!= undefined || PilotFactoryWorker =!= undefined"
        slots = self._slot_query(carriers)
        masters = self.port.query_masters(
            {}, ("Name", "Machine", "PilotFactoryWorker", self.join), carriers
        )
        alive = {job_id(ad) for ad in jobs}
        for memory in (self._last_joined, self._idle_from):
            for gone in set(memory) - alive:
                del memory[gone]
        return Pool.build(slots, masters, self.join)

    def worker(self, ad: Ad, queue: str, now: float, extra: Any) -> Worker | None:
        if (
            "JobUniverse" in ad
            and ad["JobUniverse"] != Universe.GRID
            and not ad.get("EC2InstanceName")
        ):
            return pilot_worker(ad, queue, now)  # a pilot under a VM status plugin
        jid = job_id(ad)
        slots, master = extra.lookup(ad) if isinstance(extra, Pool) else ([], None)
        if slots:
            self._last_joined[jid] = now
        w = vm_worker(ad, queue, now, slots, master, self.grace, self._last_joined.get(jid))
        if w is None or w.state is not S.IDLE:
            self._idle_from.pop(jid, None)
            return w
        # A pslot's activity time does not move when its dslots end: count idleness from the
        # first cycle that saw it idle too (a restart only delays an idle retire).
        return replace(w, since=max(w.since, self._idle_from.setdefault(jid, now)))

    def unmatched(self, jobs: Sequence[Ad], extra: Any) -> tuple[str, ...]:
        """Startds with a join key that no job of this factory claims (reported each cycle)."""
        if not isinstance(extra, Pool):
            return ()
        known = {key for ad in jobs for key in _job_keys(ad)}
        out = {
            str(s.get("Machine") or s.get("Name"))
            for key, slots in extra.slots.items()
            if key not in known
            for s in slots
            if not any(k in known for k in _join_keys(s, self.join))
        }
        return tuple(sorted(out))

    def recheck(self, workers: Sequence[Worker]) -> dict[str, Worker]:
        """One constrained job query, then one startd query for the VMs that may be joined."""
        now = self.env.clock.now()
        jobs = self.recheck_jobs(workers)
        keys = {k for ad in jobs if ad.get("JobStatus") in RUNNING for k in _job_keys(ad)}
        slots: list[dict[str, Any]] = []
        if keys:
            attr = {"i": self.join, "w": "PilotFactoryWorker"}
            terms = [f"{attr[k[0]]} =?= {classad_string(k[2:])}" for k in sorted(keys)]
            slots = self._slot_query(" || ".join(terms))
        pool = Pool.build(slots, [], self.join)
        old = {w.id: w for w in workers}
        out: dict[str, Worker] = {}
        for ad in jobs:
            w = self.worker(ad, queue_of(ad) or "", now, pool)
            if w is None:
                continue
            if w.machine is None and old[w.id].machine:
                w = replace(w, machine=old[w.id].machine)  # the master ad is not re-read
            out[w.id] = w
        return out
