"""EC2 / OpenStack batch status: instances this factory launched, joined with their startds.

Each refresh is one cloud list (by the factory's tag), one startd and one master query, shared
by every queue on the same account and collector. Each instance becomes a ``VMRecord`` (its id
is its worker tag) and ``StartdJoin`` judges it by the same state table as a grid-universe VM:

    instance    startd        -> state
    pending     -                PENDING (spot requests too)
    running     none             BOOTING (LOST past boot_timeout), RETIRED if retire recorded
    running     joined           IDLE / BUSY, RETIRING if retire recorded
    error       -                HELD, the provider's fault as hold reason
    stopping / stopped / terminated, ended by the factory, a retire, an interruption or the
                VM's own poweroff (the worker contract): not a worker; else LOST (someone
                else ended it), as is a VM that powered itself off without ever joining
    stopped, not a worker        terminated by ``reconcile`` (it holds quota and volumes)

Orphans are reported in ``unmatched_startds``, never touched: instances whose queue tag names
no queue of this factory, and startds advertising ``PilotFactoryWorker`` that match no instance.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from pilotfactory.factory.contract import (
    TAG_DEADLINE,
    TAG_ENDED,
    TAG_FACTORY,
    TAG_FINGERPRINT,
    TAG_INTERRUPTED,
    TAG_LAUNCHED,
    TAG_LEASE,
    TAG_QUEUE,
    TAG_RETIRE,
    TAG_RETIRE_MODE,
    TAG_UNRETIRED,
    TAG_WORKER,
    TARGET_PARAMS,
    target_from,
)
from pilotfactory.factory.info import BatchQueueInfo, RetireMode, Worker, WorkerSet, WorkerState
from pilotfactory.factory.params import DURATION_MAX, Param
from pilotfactory.factory.plugin import BatchStatusPlugin, Env
from pilotfactory.factory.ports import CloudError, CloudPort, CondorPort, Instance, World
from pilotfactory.factory.probe import Probe, collector_probe
from pilotfactory.factory.text import clip
from pilotfactory.factory.vmstate import Phase
from pilotfactory.plugins.batchstatus.common import (
    Snapshot,
    SnapshotStatus,
    retire_active,
    timestamp,
)
from pilotfactory.plugins.batchstatus.vmjoin import (
    JOIN_ATTRIBUTE,
    UNRETIRE_GRACE,
    StartdJoin,
    VMRecord,
    keep_machines,
)
from pilotfactory.plugins.cloudaccount import (
    EC2_PARAMS,
    FACTORY_LIMIT_PARAMS,
    OPENSTACK_PARAMS,
    TAG_LAUNCHED_AS,
    TAG_PRICE,
    Census,
    account_of,
    account_probe,
    account_text,
    provider_key,
    publish_census,
)
from pilotfactory.plugins.sweep import sweep_account

log = logging.getLogger(__name__)

PHASE = {
    "pending": Phase.QUEUED,
    "running": Phase.RUNNING,
    "error": Phase.HELD,
    "stopping": Phase.GONE,
    "stopped": Phase.GONE,
    "shutting-down": Phase.GONE,
    "terminated": Phase.GONE,
}
"""Provider-neutral instance state as a phase; an unknown state counts as running."""


def instance_record(inst: Instance, now: float, never_joined: bool = False) -> VMRecord:
    """The adapter from a cloud instance: times and the retire record come from its tags.

    An instance that ended with no record of the factory's is LOST, unless the provider says
    the VM powered itself off: the worker contract ends every VM that way (no claim for
    ``STARTD_NOCLAIM_SHUTDOWN``, a peaceful retire, the lease), so it is no failure.
    ``never_joined``: this source watched the VM run and never saw its startd; then its
    poweroff is a boot failure (the master powers off a VM whose startd is not running) and
    stays LOST."""
    tags = inst.tags
    phase = PHASE.get(inst.state, Phase.RUNNING)
    # The later of the factory's launch mark and the provider's stamp: a fulfilled spot
    # request's instance starts after the request; a provider stamp before the launch call is
    # wrong (moto's spot requests all say 2015-01-01).
    stamps = [t for t in (timestamp(tags.get(TAG_LAUNCHED)), timestamp(inst.launched_at)) if t]
    launched = max(stamps) if stamps else None
    retire = timestamp(tags.get(TAG_RETIRE))
    unretired = timestamp(tags.get(TAG_UNRETIRED))
    interrupted = timestamp(tags.get(TAG_INTERRUPTED))
    if (
        phase is Phase.GONE
        and not tags.get(TAG_ENDED)
        and interrupted is None  # the provider's announced end: no failure
        and not retire_active(retire, unretired)
        and (never_joined or not inst.self_shutdown)
    ):
        phase = Phase.ENDED_UNASKED
    return VMRecord(
        id=tags.get(TAG_WORKER) or inst.id,
        phase=phase,
        entered=launched or now,
        started=launched,
        submitted_at=launched,
        instance_id=inst.id,
        retire_requested_at=retire,
        unretired_at=unretired,
        retire_mode=RetireMode.parse(tags.get(TAG_RETIRE_MODE)),
        hold_reason=_cause(inst, phase),
        launched_as=_launched_as(inst),
        lease_until=timestamp(tags.get(TAG_LEASE)),
        deadline=timestamp(tags.get(TAG_DEADLINE)),
        fingerprint=tags.get(TAG_FINGERPRINT) or None,
        interrupted_at=interrupted,
    )


def _launched_as(inst: Instance) -> str | None:
    """The ``launched_as`` tag; a fleet launch whose answer was never recorded (the tag still
    names the fleet's options) is described by what the provider says the instance is."""
    text = inst.tags.get(TAG_LAUNCHED_AS)
    if (not text or text.startswith("fleet ")) and inst.placed:
        price = inst.tags.get(TAG_PRICE)
        text = inst.placed + (f" <={price}/h" if price and text else "")
    return clip(text, 200) if text else None


def _price(text: str | None) -> float:
    """An instance's price tag; none (or an unreadable one) counts as free."""
    try:
        value = float(text or 0.0)
    except ValueError:
        return 0.0
    return value if value >= 0.0 and value != float("inf") else 0.0


def _cause(inst: Instance, phase: Phase) -> str | None:
    """Why the instance is held, lost or still pending, in the provider's words, made inert
    (a port keeps them clipped; a fake or new one may not)."""
    text: str | None
    if phase is Phase.HELD:
        text = inst.fault or f"instance {inst.id} is in state {inst.state}"
    elif phase is Phase.ENDED_UNASKED and inst.self_shutdown:
        text = f"instance {inst.id} powered itself off ({inst.state}) and never joined the pool"
    elif phase is Phase.ENDED_UNASKED:
        text = (
            f"instance {inst.id} is {inst.state} but the factory never asked: ended by "
            "someone else or by the provider"
        )
    else:
        text = inst.fault  # pending: why the provider does not fulfil the request
    return clip(text, 300) if text else None


def _sweep_text(due: int, stopped: int) -> str:
    parts = [f"{due} past their lease"] if due else []
    return " and ".join([*parts, *([f"{stopped} stopped"] if stopped else [])])


ORPHAN_PARAMS: tuple[Param, ...] = (
    Param("reap_orphans", bool, True, "terminate orphans (instances no configured queue claims)"),
    Param(
        "orphan_grace",
        float,
        900.0,
        "seconds an orphan is reported before it is terminated",
        minimum=0.0,
        maximum=DURATION_MAX,
    ),
    Param(
        "orphan_boot_timeout",
        float,
        1800.0,
        "an orphan still booting this long after launch never joins (its queue's "
        "boot_timeout is gone with it)",
        minimum=1.0,
        maximum=DURATION_MAX,
    ),
)
ORPHAN_STATES = frozenset({WorkerState.LOST, WorkerState.RETIRED, WorkerState.HELD})
"""Orphans in these states are terminated after the grace; pending, joined and unknown ones
(and booting ones within ``orphan_boot_timeout``) are reported only: one may still be
someone's work."""


class CloudBatchStatus(SnapshotStatus):
    """The instances of one cloud account, joined with one collector's startds."""

    PROVIDER: ClassVar[str] = ""
    COMMON: ClassVar[tuple[Param, ...]] = (
        *TARGET_PARAMS,
        SnapshotStatus.MAXAGE,
        JOIN_ATTRIBUTE,
        UNRETIRE_GRACE,
        *ORPHAN_PARAMS,
        *FACTORY_LIMIT_PARAMS,
    )

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self.target = target_from(params)
        self.vms = StartdJoin.from_params(params)
        self._cloud: CloudPort | None = None
        self._queues: set[str] = set()
        self._by_queue: dict[str, list[str]] = {}  # queue tag -> live instance ids
        self._prices: dict[str, float] = {}  # instance id -> price per hour (its tag)
        self._orphans_since: dict[str, float] = {}  # instance id -> first cycle seen orphaned
        self._orphan_workers: list[Worker] = []  # last refresh: workers of unlabelled instances
        self._listed: list[Instance] = []  # last refresh: every instance of this factory
        self._ended: frozenset[str] = frozenset()  # last refresh: ids of instances not workers
        self._joined: dict[str, bool] = {}  # VM id -> ever joined, since this source saw it run

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        return (cls.NAME, provider_key(cls.PROVIDER, params), target_from(params).collector)

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The cloud account and the collector its VMs join."""
        return [
            account_probe(cls.PROVIDER, cls.namespaces()[0], params, world),
            collector_probe(world, target_from(params)),
        ]

    def source_label(self) -> str:
        text = account_text(self.PROVIDER, self.params)
        collector = self.target.collector
        return f"{text} collector {collector}" if collector else text

    @property
    def cloud(self) -> CloudPort:
        if self._cloud is None:  # one client (and Keystone session) per source
            self._cloud = self.env.world.cloud(account_of(self.PROVIDER, self.params))
        return self._cloud

    @property
    def port(self) -> CondorPort:
        return self.env.world.condor(self.target)

    def want_history(self, queue: str, window: float) -> None:
        log.warning(
            "[%s] %s batch status keeps no job history; Throttle sees none", queue, self.NAME
        )

    def _instances(
        self, tags: Mapping[str, str], now: float, keep: list[Instance] | None = None
    ) -> list[tuple[str, VMRecord]]:
        """(queue tag, record) of the live instances and of those ended without the factory
        asking (LOST until reaped); the factory's own terminated ones are history. ``keep``
        receives every instance listed (the lease sweep reads their tags)."""
        out = []
        prices: dict[str, float] = {}
        listed = self.cloud.list(tags)
        if keep is not None:
            keep.extend(listed)
        joined = self._joined
        for inst in listed:
            never = inst.self_shutdown and joined.get(inst.tags.get(TAG_WORKER) or inst.id) is False
            rec = instance_record(inst, now, never)
            if inst.state != "terminated" or rec.phase is not Phase.GONE:
                out.append((inst.tags.get(TAG_QUEUE) or "", rec))
                prices[inst.id] = _price(inst.tags.get(TAG_PRICE))
        self._prices = prices
        return out

    def observe(self, now: float) -> Snapshot:
        listed: list[Instance] = []
        live = self._instances({TAG_FACTORY: self.env.factory_id}, now, listed)
        self._listed = listed
        leaving = {
            k
            for _, rec in live
            if rec.active_retire is not None or rec.interrupted_at is not None
            for k in rec.keys
        }
        running = {k for _, rec in live if rec.phase is Phase.RUNNING for k in rec.keys}
        pool = self.vms.read(self.port, (rec.id for _, rec in live), leaving, running)
        workers: dict[str, list[Worker]] = {}
        unlabelled: list[Worker] = []
        by_queue: dict[str, list[str]] = {}
        ended: set[str] = set()
        before, joined = self._joined, {}
        for queue, rec in live:
            if rec.phase is not Phase.GONE:
                by_queue.setdefault(queue, []).append(rec.instance_id or rec.id)
            else:
                ended.add(rec.instance_id or rec.id)
            w = self.vms.worker(rec, queue, now, pool)
            was = before.get(rec.id)
            if rec.phase is Phase.RUNNING:
                joined[rec.id] = bool(was) or (w is not None and w.slots_total > 0)
            elif was is not None:
                joined[rec.id] = was
            if w is not None and queue:
                workers.setdefault(queue, []).append(w)
            elif w is not None:
                unlabelled.append(w)
        self._by_queue = by_queue
        self._orphan_workers = unlabelled
        self._ended = frozenset(ended)
        self._joined = joined
        spend: dict[str, tuple[int, float]] = {}
        for queue, rec in live:
            if rec.phase not in (Phase.GONE, Phase.ENDED_UNASKED):
                n, rate = spend.get(queue, (0, 0.0))
                spend[queue] = (n + 1, rate + self._prices.get(rec.instance_id or "", 0.0))
        p = self.params
        publish_census(
            self.env.factory_id,
            self.account,
            Census(
                now,
                spend,
                p.get("factory_max_instances"),
                p.get("factory_budget_per_hour"),
                p.get("factory_budget_per_day"),
            ),
        )
        known = {key for _, rec in live for key in rec.keys}
        unmatched = self.vms.unmatched(known, pool, self.env.factory_id, worker_keys_only=True)
        seen = {queue: len(ids) for queue, ids in by_queue.items() if queue}
        snap = Snapshot(
            now, unmatched=unmatched, pool_startds=pool.ads, pool_left=pool.left, seen=seen
        )
        for queue, ws in workers.items():
            snap.infos[queue] = BatchQueueInfo(
                queue, now, WorkerSet(ws), None, unmatched, pool.ads, pool.left
            )
        log.debug("[%s] %d instance(s), %d queue(s)", self.NAME, len(live), len(workers))
        return snap

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

    @property
    def account(self) -> Hashable:
        return (self.PROVIDER, provider_key(self.PROVIDER, self.params))

    def reconcile(
        self, claims: Mapping[str, BatchStatusPlugin], protected: Collection[str], dry_run: bool
    ) -> list[str]:
        """Orphans: live instances tagged with this factory whose queue tag names no queue
        reading this account (``claims``: each configured queue's batch source), except queues
        whose config is broken (``protected``: they may come back). Each is reported from the
        first refresh that sees it; after ``orphan_grace`` those that are lost, retired, held
        or booting past ``orphan_boot_timeout`` are marked ended and terminated in one call
        (a dry run says so and acts on nothing). Instances without this factory's tag are never
        listed, so never touched. Of several sources on one account the first claimed one
        (by queue order) acts, so an orphan is terminated once."""
        if self._snap is None:
            return []
        claimed = {
            q
            for q, src in claims.items()
            if isinstance(src, CloudBatchStatus) and src.account == self.account
        }
        first = next(
            (
                s
                for s in claims.values()
                if isinstance(s, CloudBatchStatus) and s.account == self.account
            ),
            self,
        )
        if first is not self:
            return []
        now = self._snap.time
        notes = self._sweep_leases(now, dry_run)
        boot = float(self.params.get("orphan_boot_timeout") or 1800.0)
        grace = float(self.params.get("orphan_grace") or 0.0)
        found: list[Worker] = list(self._orphan_workers)
        for queue, info in self._snap.infos.items():
            if queue not in claimed and queue not in protected:
                found.extend(info.workers)
        alive = {w.instance_id or w.id for w in found}
        for gone in set(self._orphans_since) - alive:
            del self._orphans_since[gone]
        swept = set(self._swept)
        due: list[Worker] = []
        for w in found:
            iid = w.instance_id or w.id
            if iid in swept:
                continue
            since = self._orphans_since.setdefault(iid, now)
            stale_boot = w.state is WorkerState.BOOTING and now - w.since > boot
            if w.state not in ORPHAN_STATES and not stale_boot:
                notes.append(f"orphan {iid} (queue {w.queue or '?'}, {w.state.value}): reported")
            elif now - since < grace:
                left = grace - (now - since)
                notes.append(
                    f"orphan {iid} (queue {w.queue or '?'}, {w.state.value}): terminated in "
                    f"{left:.0f}s"
                )
            else:
                due.append(w)
        if due and self.params.get("reap_orphans", True):
            ids = [w.instance_id or w.id for w in due]
            if dry_run:
                notes.append(
                    f"dry run: would terminate {len(ids)} orphan(s): {', '.join(ids[:20])}"
                )
            else:
                try:
                    self.cloud.set_tags(ids, {TAG_ENDED: str(int(now))})
                    self.cloud.terminate(ids)
                except CloudError as exc:
                    notes.append(f"terminating {len(ids)} orphan(s) failed: {exc}")
                    log.error("[%s] terminating orphans failed: %s", self.NAME, exc)
                else:
                    for iid in ids:
                        self._orphans_since.pop(iid, None)
                    notes.append(f"terminated {len(ids)} orphan(s): {', '.join(ids[:20])}")
                    log.warning("[%s] terminated %d orphan(s): %s", self.NAME, len(ids), ids)
        elif due:
            notes.append(f"{len(due)} orphan(s) due, reap_orphans is off: reported only")
        return notes

    _swept: tuple[str, ...] = ()

    def _sweep_leases(self, now: float, dry_run: bool) -> list[str]:
        """The daemon's own sweep (issue 18), on the instances this refresh listed: those of
        this factory past ``pilotfactory:lease_until`` plus the grace tagged at launch are
        marked ended and terminated in one call, configured queue or not (the VM has powered
        itself off by then, or should have). The running daemon renews the leases of the
        workers it wants, so only workers it let go (retiring past their lease, orphans) or a
        renewal that keeps failing come here. The same call terminates the stopped instances
        that are no worker (a VM that powered itself off, on a provider that stops it): no one
        else would, and they hold quota and volumes; a stopped LOST one is the planner's (or
        the orphan reaper's), which counts it."""
        self._swept = ()
        ended = self._ended
        result = sweep_account(
            self.cloud,
            self.source_label(),
            self.env.factory_id,
            now,
            dry_run=dry_run,
            instances=self._listed,
            reap_stopped=lambda inst: inst.id in ended,
        )
        if not result.targets:
            return []
        shown = ", ".join([d.text(now) for d in result.due[:5]] + result.stopped[:5])
        what = _sweep_text(len(result.due), len(result.stopped))
        if dry_run:
            return [f"dry run: would terminate {what}: {shown}"]
        if result.error:
            log.error("[%s] sweep: %s", self.NAME, result.error)
            return [f"terminating {what} failed: {result.error}"]
        self._swept = tuple(result.terminated)
        log.warning("[%s] terminated %s: %s", self.NAME, what, shown)
        return [f"terminated {what}: {shown}"]

    def recheck(self, workers: Sequence[Worker]) -> dict[str, Worker]:
        """One list (narrowed to the queue when all candidates share one), then one startd
        query for the candidates that may be joined."""
        now = self.env.clock.now()
        wanted = {w.id for w in workers}
        tags = {TAG_FACTORY: self.env.factory_id}
        queues = {w.queue for w in workers}
        if len(queues) == 1:
            tags[TAG_QUEUE] = queues.pop()
        live = [(q, rec) for q, rec in self._instances(tags, now) if rec.id in wanted]
        pool = self.vms.reread(self.port, [rec for _, rec in live])
        out: dict[str, Worker] = {}
        for queue, rec in live:
            w = self.vms.worker(rec, queue, now, pool)
            if w is not None:
                out[w.id] = w
        return keep_machines(out, workers)


class EC2BatchStatus(CloudBatchStatus):
    NAME = "EC2"
    PROVIDER = "ec2"
    PARAMS = (*EC2_PARAMS, *CloudBatchStatus.COMMON)


class OpenStackBatchStatus(CloudBatchStatus):
    NAME = "OpenStack"
    PROVIDER = "openstack"
    PARAMS = (*OPENSTACK_PARAMS, *CloudBatchStatus.COMMON)
