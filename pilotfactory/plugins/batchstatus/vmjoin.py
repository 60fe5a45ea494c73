"""VM workers: what the request side says (a grid job, or a cloud instance) joined with the
startd and master ads of one collector, judged by the engine's ``STATE_TABLE``.

Every VM status plugin composes this: it turns what it read into ``VMRecord``s with its own
small adapter, and ``StartdJoin`` does the rest (one slot and one master query per refresh, the
join by instance id or worker id, the per-VM memory the state table needs), so a grid-universe
VM and a direct-cloud VM are judged by the same rules.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from pilotfactory.factory.constraints import among, any_of
from pilotfactory.factory.contract import (
    DEADLINE_ATTR,
    INTERRUPTION_ATTR,
    KEEP_ATTR,
)
from pilotfactory.factory.info import RetireMode, Worker, WorkerState
from pilotfactory.factory.params import DURATION_MAX, Param
from pilotfactory.factory.ports import CondorPort
from pilotfactory.factory.vmstate import Phase, VMObservation, derive_state
from pilotfactory.plugins.batchstatus.common import retire_active, timestamp

Ad = Mapping[str, Any]

JOIN_ATTRIBUTE = Param(
    "join_attribute", str, "EC2InstanceID", "startd attribute holding the instance id"
)
UNRETIRE_GRACE = Param(
    "unretire_grace",
    float,
    120.0,
    "s an un-retired startd may be absent",
    minimum=0,
    maximum=DURATION_MAX,
)
WORKER_ATTR = "PilotFactoryWorker"
"""The startd attribute a VM advertises its worker id in (the VM contract)."""


class VMRecord(NamedTuple):
    """What the request side (grid job or cloud instance) says about one VM (a named tuple:
    immutable, and cheap to build once per VM per cycle)."""

    id: str
    phase: Phase
    entered: float
    """When the job / instance entered its phase."""
    started: float | None = None
    submitted_at: float | None = None
    instance_id: str | None = None
    retire_requested_at: float | None = None
    """As recorded; ``active_retire`` says whether an un-retire has cancelled it."""
    unretired_at: float | None = None
    retire_mode: RetireMode | None = None
    hold_reason: str | None = None
    launched_as: str | None = None
    """Cloud instances: what was launched (the ``launched_as`` tag)."""
    lease_until: float | None = None
    deadline: float | None = None
    fingerprint: str | None = None
    interrupted_at: float | None = None
    """When the factory recorded vacating this VM for an interruption notice."""

    @property
    def active_retire(self) -> float | None:
        requested = self.retire_requested_at
        return requested if retire_active(requested, self.unretired_at) else None

    @property
    def keys(self) -> list[str]:
        """Join keys: ``w:<worker id>`` and, once known, ``i:<instance id>``."""
        return ["w:" + self.id, *(["i:" + self.instance_id] if self.instance_id else [])]


def _ad_keys(ad: Ad, attr: str) -> list[str]:
    """Keys a startd/master ad joins on: ``i:<instance id>`` and ``w:<worker id>``."""
    iid, wid = ad.get(attr), ad.get(WORKER_ATTR)
    keys = []
    if iid and type(iid) is str:
        keys.append("i:" + iid)
    if wid and type(wid) is str:
        keys.append("w:" + wid)
    return keys


@dataclass
class Pool:
    """Startd slot ads and master ads of one collector, indexed by join key."""

    slots: dict[str, list[Ad]] = field(default_factory=dict)
    masters: dict[str, Ad] = field(default_factory=dict)
    ads: int = 0
    """The circuit breaker's gauge: partitionable and static slot ads of startds the factory is
    not retiring. Dynamic slots come and go with payload, and retiring VMs leave on purpose;
    neither says anything about the collector."""
    left: int = 0
    """Ads the previous gauge counted of VMs then idle that are ``leaving`` now and still have
    their master ad (see ``BatchQueueInfo``)."""
    steady: dict[str, int] = field(default_factory=dict)
    """The gauge by idle VM (first join key): what the next cycle's ``left`` is computed from."""

    @classmethod
    def build(
        cls,
        slots: Sequence[Ad],
        masters: Sequence[Ad],
        attr: str,
        leaving: Collection[str] = (),
        previous: Mapping[str, int] | None = None,
        running: Collection[str] | None = None,
    ) -> Pool:
        """``leaving``: join keys of the VMs the factory is retiring (not in the gauge);
        ``previous``: the last cycle's gauge by VM, to count what left it on purpose;
        ``running``: join keys of the VMs the request side says run (None: not known)."""
        pool = cls()
        index = pool.slots
        steady = 0
        by_vm = pool.steady
        busy: set[str] = set()
        shared: set[int] = set()  # ids of the lists two keys share (``lookup``'s fast path)
        for ad in slots:  # ~50,000 slot ads at a large site: _ad_keys written out
            get = ad.get
            iid, wid = get(attr), get(WORKER_ATTR)
            ikey = "i:" + iid if iid and type(iid) is str else None
            wkey = "w:" + wid if wid and type(wid) is str else None
            if ikey is None and wkey is None:
                continue
            first_key: str = ikey or wkey  # type: ignore[assignment]
            if get("State") == "Claimed":
                busy.add(first_key)
            if get("SlotType") != "Dynamic" and ikey not in leaving and wkey not in leaving:
                steady += 1
                by_vm[first_key] = by_vm.get(first_key, 0) + 1
            if ikey is not None and wkey is not None:
                first, second = index.get(ikey), index.get(wkey)
                if first is None and second is None:
                    # The usual VM: its slots carry both its instance and its worker id, so
                    # both keys hold one list and the join reads it without merging.
                    group = [ad]
                    index[ikey] = index[wkey] = group
                    shared.add(id(group))
                    continue
                if first is second:
                    first.append(ad)  # type: ignore[union-attr]
                    continue
            for key in (ikey, wkey):
                if key is None:
                    continue
                have = index.get(key)
                if have is None:
                    index[key] = [ad]
                elif id(have) in shared:
                    index[key] = [*have, ad]  # the other key keeps its list unchanged
                else:
                    have.append(ad)
        for key in busy:
            by_vm.pop(key, None)
        pool.ads = steady
        for ad in masters:
            for key in _ad_keys(ad, attr):
                pool.masters[key] = ad
        if previous and (leaving or running is not None):
            # An idle VM (no claimed slot last cycle) being retired whose master still
            # advertises left on purpose: a peaceful retire ends its startd at once. A busy
            # one's startd stays until its jobs end, so its slots vanishing the cycle after its
            # retire is a collector losing ads (test_collector_losing_ads_freezes_reaping).
            # A VM the request side no longer runs (it powered itself off after its retire,
            # as the worker contract has it, master and all; or its instance ended) left the
            # collector with it: no collector lost those ads.
            heard = pool.masters
            pool.left = sum(
                n
                for key, n in previous.items()
                if (key in leaving and key in heard) or (running is not None and key not in running)
            )
        return pool

    def lookup(self, rec: VMRecord) -> tuple[Sequence[Ad], Ad | None]:
        """The VM's slot ads (by worker id and instance id, each once; the pool's own list,
        not to be changed) and its master ad (the one naming its worker id first)."""
        wkey = "w:" + rec.id
        by_worker = self.slots.get(wkey)
        master = self.masters.get(wkey)
        if rec.instance_id is None:
            return by_worker or (), master
        ikey = "i:" + rec.instance_id
        by_instance = self.slots.get(ikey)
        master = master or self.masters.get(ikey)
        if by_worker is by_instance or not by_worker or not by_instance:
            return by_worker or by_instance or (), master
        slots = {str(s.get("Name")): s for s in by_worker}
        for s in by_instance:
            slots[str(s.get("Name"))] = s
        return list(slots.values()), master


class SlotSummary(NamedTuple):
    """What the join reads from one VM's slot ads, gathered in one pass over them (each slot
    was read a dozen times over five passes: a fifth of a cycle at 25,000 VMs,
    benchmarks/scale.py)."""

    total: int
    """Slots; a pslot's Cpus is what is left unclaimed, so its dslots' Cpus are added."""
    busy: int
    first_activity: float | None
    last_activity: float | None
    interruption: float | None
    """The provider's stated action time of an interruption notice on any slot."""
    retirement: Any
    """The least MaxJobRetirementTime advertised, as advertised; None: none."""
    keep: bool
    retiring: bool
    """A slot shows a retire under way (Draining, Drained or Retiring)."""


def summarize(slots: Sequence[Ad]) -> SlotSummary:
    """Once per joined VM per cycle, over its pslot and every dslot: the rare attributes
    (a notice, a keep request, a retire under way) cost one read each when absent."""
    claimed = cpus = 0
    partitionable = keep = retiring = False
    first = last = notice = retirement = None
    for s in slots:
        get = s.get
        kind = get("SlotType")
        state = get("State")
        if kind == "Partitionable":
            partitionable = True
        elif state == "Claimed":
            claimed += 1
        if kind != "Static":
            cpus += int(get("Cpus") or 0)
        t = get("EnteredCurrentActivity")
        if t is not None and (t := timestamp(t)):
            if first is None or t < first:
                first = t
            if last is None or t > last:
                last = t
        n = get(INTERRUPTION_ATTR)
        if n is not None and (n := _epoch(n)) is not None and (notice is None or n < notice):
            notice = n
        r = get("MaxJobRetirementTime")
        if r is not None and (retirement is None or r < retirement):
            retirement = r
        if not keep and get(KEEP_ATTR) is True:
            keep = True
        if not retiring and (
            state == "Drained" or get("Activity") == "Retiring" or get("Draining") is True
        ):
            retiring = True
    total = cpus if partitionable else len(slots)
    return SlotSummary(total, claimed, first, last, notice, retirement, keep, retiring)


NO_SLOTS = SlotSummary(0, 0, None, None, None, None, False, False)


def _epoch(value: Any) -> float | None:
    """A positive epoch number from an ad (outside text: anything else is None)."""
    if type(value) in (int, float) and 0 < value < 1e11:
        return float(value)
    return None


def observe(
    rec: VMRecord,
    slots: Sequence[Ad],
    master: Ad | None,
    last_joined: float | None = None,
    summary: SlotSummary | None = None,
) -> VMObservation:
    """The record and its startd ads as the one observation the state table reads."""
    sm = summary if summary is not None else summarize(slots) if slots else NO_SLOTS
    return VMObservation(
        rec.phase,
        rec.entered,
        rec.started,
        rec.instance_id is not None,
        sm.total,
        sm.busy,
        len(slots),
        sm.first_activity,
        sm.last_activity,
        master is not None,
        rec.active_retire,
        rec.unretired_at,
        last_joined,
        rec.phase is Phase.RUNNING
        and (rec.interrupted_at is not None or sm.interruption is not None),
    )


def join_worker(
    rec: VMRecord,
    queue: str,
    now: float,
    slots: Sequence[Ad],
    master: Ad | None,
    grace: float,
    last_joined: float | None = None,
    idle_from: float | None = None,
) -> Worker | None:
    """One VM joined with its slot and master ads, judged by ``STATE_TABLE``; an IDLE one
    counts its idleness from ``idle_from`` at the earliest."""
    sm = summarize(slots) if slots else NO_SLOTS
    obs = observe(rec, slots, master, last_joined, sm)
    derived = derive_state(obs, now, grace)
    if derived is None:
        return None
    state, since = derived
    joined = state is not WorkerState.HELD and state is not WorkerState.PENDING
    if state is WorkerState.IDLE and idle_from is not None and idle_from > since:
        since = idle_from
    machine = (slots[0] if slots else master or {}).get("Machine") if joined else None
    # the VM's own deadline when the request side does not say (grid jobs); the fingerprint
    # only ever from the factory's own record (tag, job ad): a VM cannot talk itself current
    deadline = rec.deadline or (_epoch(slots[0].get(DEADLINE_ATTR)) if slots else None)
    return Worker(
        rec.id,
        queue,
        state,
        since,
        instance_id=rec.instance_id,
        machine=machine,
        slots_total=sm.total if joined else 0,
        slots_busy=sm.busy if joined else 0,
        retire_requested_at=obs.retire_requested_at,
        retire_mode=rec.retire_mode,
        unretired_at=rec.unretired_at,
        submitted_at=rec.submitted_at,
        retirement_time=float(sm.retirement) if joined and sm.retirement is not None else None,
        hold_reason=rec.hold_reason if not joined or state is WorkerState.LOST else None,
        master_seen=obs.master_seen if joined else None,
        keep=joined and sm.keep,
        retire_visible=sm.retiring if slots else None,
        launched_as=rec.launched_as,
        interruption=(sm.interruption or rec.interrupted_at) if obs.interrupted else None,
        vacated=rec.interrupted_at is not None,
        deadline=deadline or None,
        fingerprint=rec.fingerprint,
        lease_until=rec.lease_until or None,
    )


def keep_machines(fresh: dict[str, Worker], before: Sequence[Worker]) -> dict[str, Worker]:
    """A re-read reads no master ads: a VM whose startd is gone keeps the machine its master
    named when the candidate was planned (the retire commands need it)."""
    old = {w.id: w for w in before}
    for wid, w in fresh.items():
        if w.machine is None and wid in old and old[wid].machine:
            fresh[wid] = replace(w, machine=old[wid].machine)
    return fresh


class StartdJoin:
    """The startd side of one VM status source, and the memory it keeps per VM between cycles:
    when its slots were last seen (the un-retire grace) and the first cycle that saw it idle."""

    def __init__(self, join_attribute: str, grace: float) -> None:
        self.join = join_attribute
        self.grace = grace
        self._last_joined: dict[str, float] = {}
        self._idle_from: dict[str, float] = {}
        self._steady: dict[str, int] = {}

    @classmethod
    def from_params(cls, params: Any) -> StartdJoin:
        return cls(str(JOIN_ATTRIBUTE.of(params)), float(UNRETIRE_GRACE.of(params)))

    def _slots(self, port: CondorPort, constraint: str) -> list[dict[str, Any]]:
        attrs = (
            "Name", "Machine", "State", "Activity", "SlotType", "Cpus", "EnteredCurrentActivity",
            "MaxJobRetirementTime", "Draining", WORKER_ATTR, "PilotFactoryId", KEEP_ATTR,
            INTERRUPTION_ATTR, DEADLINE_ATTR, self.join,
        )  # fmt: skip
        return port.query_startds({}, attrs, constraint)

    def read(
        self,
        port: CondorPort,
        alive: Iterable[str],
        leaving: Collection[str] = (),
        running: Collection[str] | None = None,
    ) -> Pool:
        """Every startd and master carrying a join key; forgets VMs no longer alive.
        ``leaving`` / ``running``: join keys of the VMs being retired / running on the request
        side (see ``Pool.build``)."""
        carriers = f"{self.join} =!= undefined || {WORKER_ATTR} =!= undefined"
        slots = self._slots(port, carriers)
        masters = port.query_masters({}, ("Name", "Machine", WORKER_ATTR, self.join), carriers)
        alive = set(alive)
        for memory in (self._last_joined, self._idle_from):
            for gone in set(memory) - alive:
                del memory[gone]
        pool = Pool.build(slots, masters, self.join, leaving, self._steady, running)
        self._steady = pool.steady
        return pool

    def reread(self, port: CondorPort, records: Sequence[VMRecord]) -> Pool:
        """The slots of just these (running) VMs, in one constrained query; no masters."""
        keys = {k for rec in records if rec.phase is Phase.RUNNING for k in rec.keys}
        slots: list[dict[str, Any]] = []
        if keys:
            by_attr: dict[str, dict[str, str | None]] = {}
            for k in sorted(keys):
                by_attr.setdefault(self.join if k[0] == "i" else WORKER_ATTR, {})[k[2:]] = None
            slots = self._slots(port, any_of([among(a, ks) for a, ks in by_attr.items()]))
        return Pool.build(slots, [], self.join)

    def worker(self, rec: VMRecord, queue: str, now: float, pool: Pool) -> Worker | None:
        slots, master = pool.lookup(rec)
        if slots:
            self._last_joined[rec.id] = now
        # A pslot's activity time does not move when its dslots end: count idleness from the
        # first cycle that saw it idle too (a restart only delays an idle retire).
        idle_from = self._idle_from.get(rec.id, now)
        w = join_worker(
            rec, queue, now, slots, master, self.grace, self._last_joined.get(rec.id), idle_from
        )
        if w is None or w.state is not WorkerState.IDLE:
            self._idle_from.pop(rec.id, None)
        else:
            self._idle_from[rec.id] = idle_from
        return w

    def unmatched(
        self, known: set[str], pool: Pool, factory_id: str, worker_keys_only: bool = False
    ) -> tuple[str, ...]:
        """Startds with a join key that no VM of this factory claims (``known``: the join keys
        of every VM the request side listed); reported, never touched. A startd that says it
        belongs to another factory (``PilotFactoryId``) is that factory's business.

        ``worker_keys_only``: only startds advertising a worker id count (a cloud source cannot
        tell whose the bare instance ids are)."""
        mine = (None, factory_id)
        out = {
            str(s.get("Machine") or s.get("Name"))
            for key, slots in pool.slots.items()
            if key not in known and (not worker_keys_only or key.startswith("w:"))
            for s in slots
            if not any(k in known for k in _ad_keys(s, self.join))
            and s.get("PilotFactoryId") in mine
        }
        return tuple(sorted(out))
