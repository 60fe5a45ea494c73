"""Condor / CondorEC2 batch status: this factory's jobs (and VMs' startds), one query per cycle.

One instance per schedd (and collector) serves every queue that points there. Jobs are found
by the factory's own label (``PilotFactoryId``), so two factories on one schedd never see each
other. CondorEC2 turns each VM job into a ``VMRecord`` (``vm_record``) and leaves the join
with its startd and master ads, and the state table, to ``StartdJoin`` (shared with the
direct-cloud plugins).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from pilotfactory.factory.constraints import job_ids_constraint
from pilotfactory.factory.contract import (
    DEADLINE_ATTR,
    FINGERPRINT_ATTR,
    INTERRUPTED_AT,
    RETIRE_MODE,
    RETIRE_REQUESTED,
    RUNNING_STATUSES,
    TARGET_PARAMS,
    UNRETIRED_AT,
    JobStatus,
    Universe,
    target_from,
    target_text,
)
from pilotfactory.factory.info import (
    BatchQueueInfo,
    JobRecord,
    RetireMode,
    Worker,
    WorkerSet,
    WorkerState,
)
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import BatchStatusPlugin, Env
from pilotfactory.factory.ports import CondorPort, World
from pilotfactory.factory.probe import Probe, collector_probe, schedd_probe
from pilotfactory.factory.text import clip, redact_url
from pilotfactory.factory.vmstate import Phase
from pilotfactory.plugins.batchstatus.common import (
    Snapshot,
    SnapshotStatus,
    by_queue,
    retire_active,
    timestamp,
)
from pilotfactory.plugins.batchstatus.vmjoin import (
    JOIN_ATTRIBUTE,
    UNRETIRE_GRACE,
    Pool,
    StartdJoin,
    VMRecord,
    join_worker,
    keep_machines,
)

log = logging.getLogger(__name__)
REASON_LIMIT = 300  # characters of a HoldReason kept (head + tail)

Ad = Mapping[str, Any]
S = WorkerState
JOB_ATTRS = (
    "ClusterId", "ProcId", "JobStatus", "EnteredCurrentStatus", "QDate", "JobStartDate",
    "CompletionDate", "HoldReason", "JobUniverse", "RemoteHost", "EC2InstanceName",
    "PilotFactoryQueue", "APF_QUEUE", RETIRE_REQUESTED, RETIRE_MODE, UNRETIRED_AT,
    "GridResource", "GridResourceUnavailableTime", INTERRUPTED_AT, FINGERPRINT_ATTR,
    DEADLINE_ATTR,
)  # fmt: skip
HISTORY_ATTRS = (
    "ClusterId", "ProcId", "JobStatus", "PilotFactoryQueue", "APF_QUEUE", "JobStartDate",
    "CompletionDate", "EnteredCurrentStatus",
)  # fmt: skip
ENDED: frozenset[int] = frozenset({JobStatus.REMOVED, JobStatus.COMPLETED})
"""Statuses of jobs that are no worker any more."""
# JobStatus -> pilot state; any other status (suspended, one HTCondor adds later, none at all)
# is UNKNOWN: still supply, never dropped from the books.
PILOT_STATE: dict[int, WorkerState] = {
    JobStatus.UNEXPANDED: S.PENDING,
    JobStatus.IDLE: S.PENDING,
    JobStatus.RUNNING: S.BUSY,
    JobStatus.TRANSFERRING_OUTPUT: S.BUSY,
    JobStatus.HELD: S.HELD,
}


def pilot_state(status: int) -> WorkerState | None:
    """A pilot's state from its JobStatus; None: removed or completed."""
    return None if status in ENDED else PILOT_STATE.get(status, S.UNKNOWN)


RUNNING = RUNNING_STATUSES
GRID = int(Universe.GRID)
NO_INSTANCE: frozenset[int] = frozenset({JobStatus.IDLE, JobStatus.REMOVED, JobStatus.COMPLETED})
"""Statuses of a VM job with no instance running (any other, held included, may have one)."""


def _time(ad: Ad, key: str) -> float | None:
    return timestamp(ad.get(key))


def job_id(ad: Ad) -> str:
    return f"{ad.get('ClusterId')}.{ad.get('ProcId')}"


def queue_of(ad: Ad) -> str | None:
    return ad.get("PilotFactoryQueue") or ad.get("APF_QUEUE")


def _number(status: Any) -> int:
    try:
        return int(status)
    except (TypeError, ValueError):
        return -1


def _status(ad: Ad) -> Any:
    status = ad.get("JobStatus", -1)
    return status if type(status) is int else int(status)


def retire_record(ad: Ad) -> tuple[float | None, float | None, RetireMode | None]:
    """(requested, unretired, mode) of the retire the factory recorded in a job ad.

    A drain is recorded as a time alone (``RETIRE_REQUESTED``), any other mode as
    ``"<mode> <time>"`` (``RETIRE_MODE``); the newer of the two is the retire. A bare mode
    (the record before modes carried their time) goes with ``RETIRE_REQUESTED``."""
    get = ad.get
    requested, unretired = timestamp(get(RETIRE_REQUESTED)), timestamp(get(UNRETIRED_AT))
    raw = get(RETIRE_MODE)
    if raw is None:
        return requested, unretired, None
    mode_text, _, stamp = str(raw).strip().partition(" ")
    mode = RetireMode.parse(mode_text)
    if not stamp:
        return requested, unretired, mode
    at = timestamp(stamp.strip())
    if at is None or mode is None:
        return requested, unretired, None  # not ours to read: the drain record stands
    if requested is None or at >= requested:
        return at, unretired, mode
    return requested, unretired, None  # a drain recorded after it


def pilot_worker(ad: Ad, queue: str, now: float) -> Worker | None:
    """A pilot job: JobStatus alone says it all (running = BUSY).

    The hot path of a cycle (once per pilot, ~200,000 at a large site), hence written out:
    a pilot without a retire record (nearly all) skips those reads."""
    get = ad.get
    state = pilot_state(_status(ad))
    if state is None:
        return None
    submitted = timestamp(get("QDate"))
    requested = unretired = mode = None
    if RETIRE_REQUESTED in ad or UNRETIRED_AT in ad or RETIRE_MODE in ad:
        requested, unretired, mode = retire_record(ad)
        if not retire_active(requested, unretired):
            requested = None
    host = get("RemoteHost")
    return Worker(
        f"{get('ClusterId')}.{get('ProcId')}",
        queue,
        state,
        timestamp(get("EnteredCurrentStatus")) or submitted or now,
        retire_requested_at=requested,
        retire_mode=mode,
        unretired_at=unretired,
        submitted_at=submitted,
        hold_reason=_reason(get("HoldReason")) if state is S.HELD else None,
        remote_host=str(host) if host else None,
    )


def _submitted(ad: Ad) -> float | None:
    """A pilot's ``submitted_at`` (its QDate), read without building it."""
    return timestamp(ad.get("QDate"))


def _pilot(ad: Ad, queue: str, now: float) -> Worker:
    w = pilot_worker(ad, queue, now)
    assert w is not None  # sorted by a known JobStatus before it is built
    return w


def history_records(ads: Sequence[Ad], cutoff: float) -> list[JobRecord]:
    """Jobs started since ``cutoff``; a running one has no end yet."""
    out = []
    for ad in ads:  # every job of a Throttle queue each cycle: the old ones skip fast
        get = ad.get
        raw = get("JobStartDate")
        if raw is None or ((type(raw) is int or type(raw) is float) and raw < cutoff):
            continue
        started = timestamp(raw)
        if started is None or started < cutoff:
            continue
        ended = None
        if get("JobStatus") not in RUNNING:
            ended = timestamp(get("CompletionDate")) or timestamp(get("EnteredCurrentStatus"))
        out.append(JobRecord(f"{get('ClusterId')}.{get('ProcId')}", started, ended))
    return out


class JobIndex:
    """A schedd's answer sorted in one pass, shared by the pilot and the VM source reading it:
    each queue's ads, the same by JobStatus (pilot queues' lazy workers), and the grid-universe
    (VM) ads. Three passes over ~200,000 ads were a tenth of a cycle (benchmarks/scale.py)."""

    __slots__ = ("by_queue", "by_status", "vms")

    def __init__(self, jobs: Iterable[Ad]) -> None:
        by_queue: dict[str, list[Ad]] = {}
        by_status: dict[str, dict[Any, list[Ad]]] = {}  # raw keys: an enum's hash is Python
        vms: list[Ad] = []
        for ad in jobs:
            get = ad.get
            # the grid-universe (VM) jobs: the only ones a startd can claim by instance or
            # worker id
            if get("JobUniverse", GRID) == GRID or get("EC2InstanceName"):
                vms.append(ad)
            queue = get("PilotFactoryQueue") or get("APF_QUEUE")
            if not queue:
                continue
            status = get("JobStatus")
            group = by_queue.get(queue)
            if group is None:
                by_queue[queue] = [ad]
                by_status[queue] = {status: [ad]}
                continue
            group.append(ad)
            statuses = by_status[queue]
            same = statuses.get(status)
            if same is None:
                statuses[status] = [ad]
            else:
                same.append(ad)
        self.by_queue = by_queue
        self.by_status = by_status
        self.vms = vms


class CondorBatchStatus(SnapshotStatus):
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

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        return (cls.NAME, target_from(params))

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The schedd holding the pilot jobs."""
        return [schedd_probe(world, target_from(params))]

    def source_label(self) -> str:
        return target_text(self.target)

    def recheck_key(self) -> Hashable:
        """The pilot and the VM source of one schedd re-read together (the VM one, which
        judges pilots too, for both)."""
        return ("condor jobs", self.target, self.env.factory_id)

    @property
    def port(self) -> CondorPort:
        return self.env.world.condor(self.target)

    # ------------------------------------------------------------------ per-kind hooks

    def fetch(self, now: float) -> tuple[Sequence[Ad], Sequence[Ad]]:
        """This factory's workers as job ads (one query per schedd per cycle, shared with the
        other kind's source there), and the history the queues asked for."""
        match = {"PilotFactoryId": self.env.factory_id}
        key = ("jobs", self.target, self.env.factory_id)
        jobs = self.env.reads.get(key, lambda: self.port.query_jobs(match, JOB_ATTRS))
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

    def workers_of(
        self,
        queue: str,
        ads: Sequence[Ad],
        now: float,
        extra: Any,
        statuses: Mapping[Any, list[Ad]] | None = None,
    ) -> WorkerSet:
        """Pilots sorted by state from JobStatus alone (``statuses``: ``ads`` already grouped
        so); each state's workers are built only when a decision reads them (running pilots,
        most of them, usually never)."""
        by_status = statuses
        if by_status is None:
            by_status = {}
            for ad in ads:
                by_status.setdefault(ad.get("JobStatus"), []).append(ad)
        by_state: dict[WorkerState, list[Ad]] = {}
        for status, group in by_status.items():
            state = pilot_state(status if type(status) is int else _number(status))
            if state is not None:
                by_state.setdefault(state, []).extend(group)
        return WorkerSet(
            lazy=by_state,
            build=lambda ad: _pilot(ad, queue, now),
            id_of=job_id,
            submitted_of=_submitted,
        )

    def unmatched(self, jobs: Sequence[Ad], extra: Any) -> tuple[str, ...]:
        return ()

    # ------------------------------------------------------------------ the cycle

    def index(self, jobs: Sequence[Ad]) -> JobIndex:
        """``jobs`` sorted once per schedd per cycle: the pilot and the VM source read one
        answer."""
        key = ("jobs index", self.target, self.env.factory_id)
        return self.env.reads.get(key, lambda: JobIndex(jobs))

    def observe(self, now: float) -> Snapshot:
        jobs, history = self.fetch(now)
        extra = self.collect(jobs, now)
        index = self.index(jobs)
        ads, statuses = index.by_queue, index.by_status
        past = by_queue(history) if history else {}
        unmatched = self.unmatched(jobs, extra)
        startds = extra.ads if isinstance(extra, Pool) else None
        left = extra.left if isinstance(extra, Pool) else 0

        # Refers to no snapshot (a snapshot -> build -> snapshot cycle would keep a whole
        # cycle's ads alive until the cyclic collector ran).
        def build(queue: str) -> BatchQueueInfo | None:
            mine = ads.get(queue, ())
            if not mine and queue not in self._windows:
                return None
            workers = self.workers_of(queue, mine, now, extra, statuses.get(queue))
            records = self._history(queue, now, mine, past.get(queue, ()))
            return BatchQueueInfo(queue, now, workers, records, unmatched, startds, left)

        seen = {queue: len(group) for queue, group in ads.items()}
        snap = Snapshot(
            now, unmatched=unmatched, pool_startds=startds, pool_left=left, seen=seen, build=build
        )
        log.debug("[%s] %d job(s), %d queue(s)", self.NAME, len(jobs), len(ads))
        return snap

    def _history(
        self, queue: str, now: float, jobs: Sequence[Ad], history: Sequence[Ad]
    ) -> tuple[JobRecord, ...] | None:
        """Records of this queue's jobs (its ads only: grouped once per refresh)."""
        window = self._windows.get(queue)
        if window is None:
            return None
        records = {r.id: r for r in history_records([*history, *jobs], now - window)}
        return tuple(records.values())

    def recheck_jobs(self, workers: Sequence[Worker]) -> list[Ad]:
        """One query constrained to these job ids (a decision tree on ClusterId: the schedd
        evaluates it against every job it holds; ``job_ids_constraint``)."""
        wanted = {w.id for w in workers}
        constraint = job_ids_constraint(wanted)
        if constraint is None:
            return []
        match = {"PilotFactoryId": self.env.factory_id}
        ads = self.port.query_jobs(match, JOB_ATTRS, constraint)
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


PHASE: dict[int, Phase] = {
    JobStatus.UNEXPANDED: Phase.QUEUED,
    JobStatus.IDLE: Phase.QUEUED,
    JobStatus.RUNNING: Phase.RUNNING,
    JobStatus.TRANSFERRING_OUTPUT: Phase.RUNNING,
    JobStatus.HELD: Phase.HELD,
}
"""A VM job's JobStatus as a phase: removed and completed are GONE, any status not listed
(suspended, none at all) is UNKNOWN."""


RECORDED_DEFAULT = RetireMode.DRAIN
"""A VM job whose retire is recorded without a mode was drained (the contract: CondorEC2
records a drain as its time alone, any other mode with its time: one edit per retire)."""


def vm_record(ad: Ad, now: float) -> VMRecord:
    """The adapter from a grid-universe VM job ad.

    Once per VM per cycle (~25,000 at a large site), hence written out: the factory's own
    records and the hold reasons are read only when the ad has them, and the record is built
    by position (benchmarks/scale.py)."""
    get = ad.get
    status = _status(ad)
    instance = get("EC2InstanceName")
    submitted = timestamp(get("QDate"))
    fp = get(FINGERPRINT_ATTR)
    requested = unretired = mode = reason = deadline = interrupted = None
    if (  # what the factory records in a VM job ad: most VMs carry none of it
        RETIRE_REQUESTED in ad
        or UNRETIRED_AT in ad
        or RETIRE_MODE in ad
        or INTERRUPTED_AT in ad
        or DEADLINE_ATTR in ad
    ):
        requested, unretired, mode = retire_record(ad)
        if mode is None and requested is not None:
            mode = RECORDED_DEFAULT
        deadline = timestamp(get(DEADLINE_ATTR))
        interrupted = timestamp(get(INTERRUPTED_AT))
    if "HoldReason" in ad or "GridResourceUnavailableTime" in ad:
        reason = _reason(get("HoldReason")) or _unavailable(ad)
    return VMRecord(
        f"{get('ClusterId')}.{get('ProcId')}",  # id
        Phase.GONE if status in ENDED else PHASE.get(status, Phase.UNKNOWN),  # phase
        timestamp(get("EnteredCurrentStatus")) or submitted or now,  # entered
        timestamp(get("JobStartDate")),  # started
        submitted,  # submitted_at
        str(instance) if instance else None,  # instance_id
        requested,  # retire_requested_at
        unretired,  # unretired_at
        mode,  # retire_mode
        reason,  # hold_reason
        None,  # launched_as: cloud instances only
        None,  # lease_until: cloud instances only
        deadline,
        fp if type(fp) is str and fp else None,  # fingerprint
        interrupted,  # interrupted_at
    )


def _reason(value: Any) -> str | None:
    """A HoldReason as the factory shows it (trace notes, logs, back-off causes): whoever put
    the job on hold wrote it, so it is clipped and inert."""
    return clip(str(value), REASON_LIMIT) if value else None


def _resource(value: Any) -> str:
    """A GridResource (``ec2 https://...``) for a message: its URL redacted, clipped."""
    words = str(value or "?").split()
    return clip(" ".join(redact_url(w) if "://" in w else w for w in words), 200)


def _unavailable(ad: Ad) -> str | None:
    """Why an idle grid job gets no instance: the gridmanager sets GridResourceUnavailableTime
    and retries for ever without holding the job (e.g. key files its owner cannot read)."""
    since = ad.get("GridResourceUnavailableTime")
    if since is None:
        return None
    return (
        f"grid resource {_resource(ad.get('GridResource'))} unavailable to the "
        "gridmanager since "
        f"{time.strftime('%H:%M:%S', time.gmtime(float(since)))} UTC (endpoint down, or "
        "credential files the job owner cannot read)"
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
    """One VM job joined with its slot and master ads (no memory between cycles)."""
    return join_worker(vm_record(ad, now), queue, now, slots, master, grace, last_joined)


def _is_pilot(ad: Ad) -> bool:
    """A vanilla/local job under a VM status plugin (a queue may mix them)."""
    return (
        "JobUniverse" in ad and ad["JobUniverse"] != Universe.GRID and not ad.get("EC2InstanceName")
    )


class CondorEC2BatchStatus(CondorBatchStatus):
    """VM jobs joined with their startds (one startd + one master query per cycle)."""

    NAME = "CondorEC2"
    FAMILY = "Condor"
    RECHECK_RANK = 1
    PARAMS = (
        *CondorBatchStatus.PARAMS,
        JOIN_ATTRIBUTE,
        UNRETIRE_GRACE,
    )

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The schedd holding the VM jobs and the collector their startds join."""
        target = target_from(params)
        return [schedd_probe(world, target), collector_probe(world, target)]

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self.vms = StartdJoin.from_params(params)
        self._known: set[str] | None = None
        """The join keys of every VM job of the answer ``collect`` read (``unmatched``'s)."""

    def collect(self, jobs: Sequence[Ad], now: float) -> Pool:
        """The startd and master ads, with what the circuit breaker's gauge needs: the VMs
        being retired (``leaving``) and those whose job says no instance runs (``running``
        leaves them out: idle, removed or completed; held ones may still run)."""
        alive: list[str] = []
        leaving: set[str] = set()
        running: set[str] = set()
        known = self._known = set()
        for ad in self.index(jobs).vms:
            wid = job_id(ad)
            alive.append(wid)
            instance = ad.get("EC2InstanceName")
            keys = ("w:" + wid, "i:" + str(instance))
            known.add(keys[0])
            if instance:
                known.add(keys[1])
            if RETIRE_REQUESTED in ad and retire_active(
                _time(ad, RETIRE_REQUESTED), _time(ad, UNRETIRED_AT)
            ):
                leaving.update(keys)
            if ad.get("JobStatus") not in NO_INSTANCE:
                running.update(keys)
        return self.vms.read(self.port, alive, leaving, running)

    def workers_of(
        self,
        queue: str,
        ads: Sequence[Ad],
        now: float,
        extra: Any,
        statuses: Mapping[Any, list[Ad]] | None = None,
    ) -> WorkerSet:
        """VMs are joined with their startds now (the join keeps memory per VM)."""
        return WorkerSet(w for ad in ads if (w := self.worker(ad, queue, now, extra)) is not None)

    def worker(self, ad: Ad, queue: str, now: float, extra: Any) -> Worker | None:
        if _is_pilot(ad):
            return pilot_worker(ad, queue, now)
        pool = extra if isinstance(extra, Pool) else Pool()
        return self.vms.worker(vm_record(ad, now), queue, now, pool)

    def unmatched(self, jobs: Sequence[Ad], extra: Any) -> tuple[str, ...]:
        if not isinstance(extra, Pool):
            return ()
        known, self._known = self._known, None  # collect's, of this same answer
        if known is None:
            vms = self.index(jobs).vms
            known = {"w:" + job_id(ad) for ad in vms}
            known.update("i:" + str(i) for ad in vms if (i := ad.get("EC2InstanceName")))
        return self.vms.unmatched(known, extra, self.env.factory_id)

    def recheck(self, workers: Sequence[Worker]) -> dict[str, Worker]:
        """One constrained job query, then one startd query for the VMs that may be joined."""
        now = self.env.clock.now()
        jobs = self.recheck_jobs(workers)
        records = [(ad, None if _is_pilot(ad) else vm_record(ad, now)) for ad in jobs]
        pool = self.vms.reread(self.port, [rec for _, rec in records if rec is not None])
        out: dict[str, Worker] = {}
        for ad, rec in records:
            queue = queue_of(ad) or ""
            if rec is None:
                w = pilot_worker(ad, queue, now)
            else:
                w = self.vms.worker(rec, queue, now, pool)
            if w is not None:
                out[w.id] = w
        return keep_machines(out, workers)
