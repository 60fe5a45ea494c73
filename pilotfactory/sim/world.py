"""The simulated world: one pool, one cloud and one PanDA on a shared virtual clock.

``SimWorld`` implements the ``World`` protocol, so the factory's plugins get simulated ports
exactly where production gets real ones. Everything random comes from one seed, and every
component advances through one event loop, so a run is a pure function of (seed, config,
factory behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pilotfactory.factory.clock import Clock
from pilotfactory.factory.ports import CloudAccount, CondorTarget
from pilotfactory.sim.cloud import CloudConfig, SimCloud
from pilotfactory.sim.events import EventLoop, seeded_rng
from pilotfactory.sim.metrics import SimMetrics, Snapshot
from pilotfactory.sim.panda import SimPanda
from pilotfactory.sim.pool import PoolConfig, SimPool


class Installable(Protocol):
    """A workload (``workload.Workload``, ``traces.Trace``): schedules its arrivals."""

    def install(self, loop: EventLoop, pool: SimPool, panda: SimPanda) -> None: ...


@dataclass
class SimConfig:
    seed: int = 0
    step: float = 5.0
    """Longest time step of the event loop (and the negotiator's cycle)."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    sites: Mapping[str, str] = field(default_factory=dict)
    """PanDA site -> initial status (online / test / offline / brokeroff)."""
    workload: Installable | None = None


class SimWorld:
    """``World`` for the demo and the simulation tests; ``tick()`` after moving the clock."""

    blocking_io = False
    """Nothing stalls in the simulation; sources are read in order, on the caller's thread."""

    def __init__(self, clock: Clock, config: SimConfig | None = None) -> None:
        self.clock = clock
        self.config = config or SimConfig()
        root = seeded_rng(self.config.seed)
        self.metrics = SimMetrics()
        self.loop = EventLoop(clock, self.config.step)
        self.sim_panda = SimPanda(lambda: self.loop.now, self.metrics)
        self.pool = SimPool(
            self.loop,
            self.config.pool,
            seeded_rng(root.getrandbits(64)),
            self.metrics,
            panda=self.sim_panda,
        )
        self.sim_cloud = SimCloud(
            self.loop,
            self.config.cloud,
            seeded_rng(root.getrandbits(64)),
            self.metrics,
            pool=self.pool,
        )
        self.pool.cloud = self.sim_cloud
        for site, status in self.config.sites.items():
            self.sim_panda.set_site_status(site, status)
        if self.config.workload is not None:
            self.config.workload.install(self.loop, self.pool, self.sim_panda)

    # ------------------------------------------------------------------ World protocol

    def condor(self, target: CondorTarget) -> SimPool:
        return self.pool

    def cloud(self, account: CloudAccount) -> SimCloud:
        return self.sim_cloud

    def panda(self, settings: Mapping[str, Any]) -> SimPanda:
        return self.sim_panda

    def site_status(self, settings: Mapping[str, Any]) -> SimPanda:
        return self.sim_panda

    # ------------------------------------------------------------------ driving

    def tick(self) -> Snapshot:
        """Advance every component to the clock's now, in time order; record a snapshot."""
        self.loop.advance(self.clock.now())
        snap = self.snapshot()
        self.metrics.snapshots.append(snap)
        return snap

    def advance(self, seconds: float) -> Snapshot:
        """Move the clock (a virtual one) and tick: the tests' way to let time pass."""
        self.clock.sleep(seconds)
        return self.tick()

    def snapshot(self) -> Snapshot:
        now = self.loop.now
        pool = self.pool.census()
        cloud = self.sim_cloud.census()
        panda = self.sim_panda.counts()
        return Snapshot(
            t=now,
            jobs_idle=pool["jobs_idle"],
            jobs_running=pool["jobs_running"],
            jobs_held=pool["jobs_held"],
            pilots_idle=pool["pilots_idle"],
            pilots_running=pool["pilots_running"],
            vm_jobs_idle=pool["vm_jobs_idle"],
            vm_jobs_running=pool["vm_jobs_running"],
            vm_jobs_held=pool["vm_jobs_held"],
            instances_pending=cloud.pending,
            instances_running=cloud.running,
            startds=pool["startds"],
            cpus_total=pool["cpus_total"],
            cpus_busy=pool["cpus_busy"],
            panda_activated=panda.get("activated", 0),
            panda_running=panda.get("running", 0),
            completed=sum(self.metrics.payload_completed.values()),
            killed=sum(self.metrics.payload_killed.values()),
            vm_hours=round(sum(self.metrics.vm_hours(now).values()), 4),
            instances_by_queue=cloud.by_queue,
        )

    def summary(self) -> dict[str, Any]:
        return self.metrics.summary(self.loop.now)
