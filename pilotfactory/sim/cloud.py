"""Simulated cloud (EC2 / OpenStack alike): instances that boot, join the pool, and cost money.

An instance goes ``pending`` -> ``running`` after a boot delay; its startd joins the simulated
pool a few seconds later (unless its image is listed as broken: then it runs and never joins,
the failure the factory's ``boot_timeout`` exists for). Spot launches return spot request ids
and may stay open. Terminating an instance makes its ads vanish and evicts its jobs at once.
"""

from __future__ import annotations

import builtins
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pilotfactory.factory.contract import TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.ports import (
    CloudError,
    CloudQuota,
    CloudQuotaError,
    Instance,
    LaunchSpec,
)
from pilotfactory.sim.events import EventLoop, seeded_rng
from pilotfactory.sim.metrics import SimMetrics


class PoolSide(Protocol):
    """What the cloud tells the pool (``SimPool`` implements it): the gridmanager's view of
    instances, and startds joining or vanishing. A protocol, so the cloud never imports the pool."""

    def vm_spot_opened(self, job_id: str, request_id: str) -> None: ...

    def vm_created(self, job_id: str, instance_id: str) -> None: ...

    def vm_joined(self, inst: SimInstance, cpus: int, retirement_time: float) -> None: ...

    def vm_gone(self, inst: SimInstance) -> None: ...

    def vm_notice(self, inst: SimInstance, action_time: float) -> None: ...


DEFAULT_FLAVORS: dict[str, int] = {
    "t2.micro": 1,
    "t2.small": 1,
    "t2.medium": 2,
    "m1.small": 1,
    "m1.medium": 2,
    "m1.large": 4,
    "m1.xlarge": 8,
    "m5.large": 2,
    "m5.xlarge": 4,
    "m5.2xlarge": 8,
    "c5.xlarge": 4,
    "c5.2xlarge": 8,
}
LIVE = ("pending", "running")


@dataclass
class CloudConfig:
    boot_delay: float = 120.0
    boot_jitter: float = 30.0
    """Boot time is ``boot_delay`` +- uniform jitter (at least 1 s)."""
    startd_delay: float = 5.0
    """Instance running -> its startd and master are in the collector."""
    terminate_delay: float = 5.0
    """``stopping`` -> ``terminated`` (the pool side is gone at once)."""
    terminated_visible: float = 3600.0
    """Terminated instances stay listed this long, as EC2's describe_instances does."""
    quota: int | None = None
    """Live instances + open spot requests allowed; beyond it launch raises CloudQuotaError."""
    flavor_cpus: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_FLAVORS))
    default_cpus: int = 4
    image_retirement_time: Mapping[str, float] = field(default_factory=dict)
    """MaxJobRetirementTime advertised by VMs of an image (APF-era images: 0)."""
    default_retirement_time: float = 0.0
    broken_images: Collection[str] = ()
    """Images whose VMs boot but whose startd never joins."""
    spot_pending_probability: float = 0.0
    """Chance that a spot request stays open instead of being fulfilled at once."""
    spot_pending_time: float | None = 600.0
    """How long an open spot request stays open; None: until cancelled."""
    boot_distribution: str = "uniform"
    """``uniform``: ``boot_delay`` +- ``boot_jitter``; ``lognormal``: median ``boot_delay``,
    sigma ``boot_jitter / boot_delay`` (a long tail of slow boots, as clouds have)."""
    never_join_fraction: float = 0.0
    """Chance that a VM boots but its startd never joins (a bad image or network, per VM)."""
    interruption_rate: float = 0.0
    """Per VM-hour: the provider ends a running VM unasked (spot interruption), Poisson."""
    interruption_notice: float = 0.0
    """Seconds of notice before an interruption (EC2 gives 120): the VM's metadata says so
    and its startd advertises ``PilotFactoryInterruption``; 0: no notice."""
    poweroff_delay: float | None = None
    """The worker contract (etc/worker): once a VM's startd has exited (``condor_off
    -peaceful``, a drain with ``-exit-on-completion``, a no-claim shutdown) its master ends
    (``MASTER.DAEMON_SHUTDOWN``, not in its first minute) and ``/sbin/poweroff`` ends the
    instance this many seconds later. None: images that do not follow the contract (the VM
    stays up, master alone, until someone terminates it)."""
    api_latency: float = 0.0
    """Seconds from a ``terminate`` call to the instance ending (the call's round trip): the
    caller decided on what it read before, and a job the negotiator matches to the VM in
    between dies with it."""
    noclaim_shutdown: float | None = None
    """The template's ``STARTD_NOCLAIM_SHUTDOWN``: a VM's startd unclaimed this long shuts
    HTCondor down (then ``poweroff_delay`` applies); None: not set."""


@dataclass(frozen=True)
class CloudCensus:
    pending: int
    running: int
    by_queue: dict[str, int]
    """Live instances (pending or running, open spot requests included) per queue label."""


class SimInstance:
    """One instance or spot request; ``instance_id`` is None while a spot request is open."""

    def __init__(
        self, spec: LaunchSpec, tags: Mapping[str, str], queue: str, owner_job: str | None
    ) -> None:
        self.spec = spec
        self.tags: dict[str, str] = dict(tags)
        self.queue = queue
        self.owner_job = owner_job
        self.request_id: str | None = None
        self.instance_id: str | None = None
        self.state = "pending"
        self.launched_at = 0.0
        self.terminated_at: float | None = None
        self.machine = ""
        self.fault: str | None = None
        self.self_shutdown = False
        """It powered itself off (``power_off``), as the provider's state reason would say."""

    @property
    def public_id(self) -> str:
        return self.instance_id or self.request_id or ""

    @property
    def worker(self) -> str | None:
        return self.tags.get(TAG_WORKER)


class SimCloud:
    """Implements ``CloudPort``. Failure switch: ``launch_error`` (raised by every launch,
    the gridmanager's included, which then holds the EC2 job); ``instance_limit``
    (from ``CloudConfig.quota``)."""

    def __init__(
        self,
        loop: EventLoop,
        config: CloudConfig | None = None,
        rng: random.Random | None = None,
        metrics: SimMetrics | None = None,
        pool: PoolSide | None = None,
    ) -> None:
        self.loop = loop
        self.config = config or CloudConfig()
        self.rng = rng or seeded_rng(0)
        self.metrics = metrics or SimMetrics()
        self.pool = pool
        self.instance_limit = self.config.quota
        self.launch_error: CloudError | None = None
        self._records: builtins.list[SimInstance] = []
        self._index: dict[str, SimInstance] = {}
        self._vm_count = 0

    # ------------------------------------------------------------------ CloudPort

    def launch(self, spec: LaunchSpec, count: int, tags: Mapping[str, str]) -> builtins.list[str]:
        self._enter("cloud_launch")
        queue = tags.get(TAG_QUEUE) or tags.get("pilotfactory_queue") or "unlabelled"
        try:
            recs = self._launch(spec, count, tags, queue, None)
        except CloudError:
            self.metrics.failed("cloud_launch")
            raise
        # like EC2: a spot launch answers with request ids (instances come later)
        return [r.request_id or r.public_id for r in recs]

    def list(self, tags: Mapping[str, str]) -> builtins.list[Instance]:
        self._enter("cloud_list")
        now = self.loop.now
        keep = self.config.terminated_visible
        self._records = [
            r
            for r in self._records
            if r.state != "cancelled"
            and not (r.terminated_at is not None and now - r.terminated_at > keep)
        ]
        return [
            Instance(
                id=r.public_id,
                state=r.state,
                launched_at=r.launched_at,
                tags=dict(r.tags),
                spot_request_id=r.request_id,
                fault=r.fault,
                self_shutdown=r.self_shutdown,
            )
            for r in self._records
            if all(r.tags.get(k) == v for k, v in tags.items())
        ]

    def set_tags(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> None:
        self._enter("cloud_set_tags")
        for rec in self._lookup(instance_ids):
            rec.tags.update(tags)

    def terminate(self, instance_ids: Sequence[str]) -> None:
        self._enter("cloud_terminate")
        recs = self._lookup(instance_ids)

        def land() -> None:
            for rec in recs:
                self._terminate(rec, notify=True)

        if self.config.api_latency > 0:
            self.loop.after(self.config.api_latency, land)
        else:
            land()

    # ------------------------------------------------------------------ gridmanager side

    def launch_for_job(
        self, spec: LaunchSpec, tags: Mapping[str, str], job_id: str, queue: str
    ) -> SimInstance:
        """One instance for an EC2 grid job; the pool hears of it through its callbacks."""
        return self._launch(spec, 1, tags, queue, job_id)[0]

    def alive(self, instance_id: str) -> bool:
        rec = self._index.get(instance_id)
        return rec is not None and rec.instance_id == instance_id and rec.state in LIVE

    def cancel_request(self, request_id: str) -> None:
        rec = self._index.get(request_id)
        if rec is not None and rec.instance_id is None:
            self._terminate(rec, notify=False)

    def quota(self) -> CloudQuota | None:
        """``quota`` as the provider would state it: live instances and open requests."""
        self._enter("cloud_quota")
        live = sum(1 for r in self._records if r.state in LIVE)
        return CloudQuota(used=live, limit=self.instance_limit)

    def terminate_now(self, instance_id: str) -> None:
        rec = self._index.get(instance_id)
        if rec is not None:
            self._terminate(rec, notify=True)

    def power_off(self, instance_id: str) -> None:
        """The VM powered itself off: with ``instance-initiated-shutdown-behavior =
        terminate`` (what the worker contract assumes) the instance ends as if terminated,
        and is billed no more, but no API call asked for it: its listing says so
        (``Instance.self_shutdown``), as the provider's state reason would."""
        rec = self._index.get(instance_id)
        if rec is None or rec.state not in LIVE:
            return
        self.metrics.self_shutdowns += 1
        rec.self_shutdown = True
        self._terminate(rec, notify=True)

    def cpus_for(self, flavor: str) -> int:
        return int(self.config.flavor_cpus.get(flavor, self.config.default_cpus))

    def retirement_time_for(self, image: str) -> float:
        return float(
            self.config.image_retirement_time.get(image, self.config.default_retirement_time)
        )

    def census(self) -> CloudCensus:
        by_queue: dict[str, int] = {}
        pending = running = 0
        for r in self._records:
            if r.state not in LIVE:
                continue
            if r.state == "running":
                running += 1
            else:
                pending += 1
            by_queue[r.queue] = by_queue.get(r.queue, 0) + 1
        return CloudCensus(pending, running, dict(sorted(by_queue.items())))

    def instances(self) -> builtins.list[SimInstance]:
        """Every record still known (for tests)."""
        return list(self._records)

    # ------------------------------------------------------------------ internals

    def _enter(self, kind: str) -> None:
        self.loop.advance()
        self.metrics.count(kind)

    def _lookup(self, ids: Sequence[str]) -> builtins.list[SimInstance]:
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise CloudError(f"InvalidInstanceID.NotFound: {', '.join(missing)}")
        return [self._index[i] for i in ids]

    def _launch(
        self,
        spec: LaunchSpec,
        count: int,
        tags: Mapping[str, str],
        queue: str,
        owner_job: str | None,
    ) -> builtins.list[SimInstance]:
        if count < 1:
            raise CloudError(f"InvalidParameterValue: cannot launch {count} instances")
        if self.launch_error is not None:
            raise self.launch_error
        if self.instance_limit is not None:
            live = sum(1 for r in self._records if r.state in LIVE)
            if live + count > self.instance_limit:
                raise CloudQuotaError(
                    f"InstanceLimitExceeded: {live} of {self.instance_limit} in use, "
                    f"{count} requested"
                )
        recs = []
        for _ in range(count):
            rec = SimInstance(spec, tags, queue, owner_job)
            rec.launched_at = self.loop.now
            self.metrics.launched(rec.launched_at)
            self._records.append(rec)
            recs.append(rec)
            if spec.spot_price is None:
                self._instantiate(rec)
                continue
            rec.request_id = self._new_id("sir-", 32, 8)
            self._index[rec.request_id] = rec
            if self.rng.random() < self.config.spot_pending_probability:
                if owner_job is not None and self.pool is not None:
                    self.pool.vm_spot_opened(owner_job, rec.request_id)
                if self.config.spot_pending_time is not None:
                    self._fulfil_later(rec, self.config.spot_pending_time)
            else:
                self._instantiate(rec)
        return recs

    def _new_id(self, prefix: str, bits: int, width: int) -> str:
        while True:
            new = f"{prefix}{self.rng.getrandbits(bits):0{width}x}"
            if new not in self._index:
                return new

    def _fulfil_later(self, rec: SimInstance, wait: float) -> None:
        def fulfil() -> None:
            if rec.state == "pending" and rec.instance_id is None:
                self._instantiate(rec)

        self.loop.after(wait, fulfil)

    def _instantiate(self, rec: SimInstance) -> None:
        now = self.loop.now
        iid = self._new_id("i-", 68, 17)
        self._vm_count += 1
        rec.instance_id = iid
        rec.state = "pending"
        rec.launched_at = now
        rec.machine = f"vm{self._vm_count}.pool.test"
        self._index[iid] = rec
        self.metrics.vm_start(iid, rec.queue, now)
        if rec.owner_job is not None and self.pool is not None:
            self.pool.vm_created(rec.owner_job, iid)
        self.loop.after(self._boot_time(), lambda: self._boot(rec))

    def _boot_time(self) -> float:
        c = self.config
        if c.boot_distribution == "lognormal" and c.boot_delay > 0:
            sigma = c.boot_jitter / c.boot_delay
            return max(1.0, c.boot_delay * self.rng.lognormvariate(0.0, sigma))
        return max(1.0, c.boot_delay + self.rng.uniform(-c.boot_jitter, c.boot_jitter))

    def interrupt(self, rec: SimInstance, after: float) -> None:
        """The provider ends ``rec`` ``after`` seconds from now, with the configured notice
        (``interruption_notice`` seconds before, on the VM's startd) when there is one."""
        notice = self.config.interruption_notice
        end = self.loop.now + after
        if notice > 0:

            def announce() -> None:
                if rec.state == "running" and self.pool is not None:
                    self.pool.vm_notice(rec, end)

            self.loop.at(max(self.loop.now, end - notice), announce)
        self.loop.at(end, lambda: self._interrupt(rec))

    def _interrupt(self, rec: SimInstance) -> None:
        if rec.state not in LIVE or rec.instance_id is None:
            return
        self.metrics.interrupted += 1
        self.metrics.interrupting = True
        try:
            self._terminate(rec, notify=True)
        finally:
            self.metrics.interrupting = False

    def _boot(self, rec: SimInstance) -> None:
        if rec.state != "pending":
            return
        rec.state = "running"
        c = self.config
        if c.interruption_rate > 0:
            life = self.rng.expovariate(c.interruption_rate / 3600.0)
            self.interrupt(rec, life)
        if rec.spec.image in c.broken_images:
            return
        if c.never_join_fraction > 0 and self.rng.random() < c.never_join_fraction:
            self.metrics.never_joined += 1
            return
        self.loop.after(self.config.startd_delay, lambda: self._join(rec))

    def _join(self, rec: SimInstance) -> None:
        if rec.state == "running" and self.pool is not None:
            self.pool.vm_joined(
                rec, self.cpus_for(rec.spec.flavor), self.retirement_time_for(rec.spec.image)
            )

    def _terminate(self, rec: SimInstance, notify: bool) -> None:
        if rec.state not in LIVE:
            return
        now = self.loop.now
        if rec.instance_id is None:
            rec.state = "cancelled"
            if rec.request_id is not None:
                self._index.pop(rec.request_id, None)
        else:
            rec.state = "stopping"
            rec.terminated_at = now
            self.metrics.vm_stop(rec.instance_id, now)

            def done() -> None:
                rec.state = "terminated"

            self.loop.after(self.config.terminate_delay, done)
        if self.pool is not None and (notify or rec.instance_id is not None):
            self.pool.vm_gone(rec)
