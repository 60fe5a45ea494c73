"""``pilotfactory sim``: what a configuration would cost and how long its users would wait.

The user's queues run unchanged (the same ``Factory`` as ``run``) on a virtual clock against
the simulated pool and cloud, fed a job trace; the same trace then goes through an
elastiq-style policy in the same simulated world, and into an oracle computed from the trace
alone. Every number in the report is measured by the world (``SimMetrics``), never taken from
the factory's own view, so a policy cannot flatter itself.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import ConfigError, FactoryConfig, QueueConfig
from pilotfactory.factory.contract import TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.info import WorkerKind
from pilotfactory.factory.ports import LaunchSpec
from pilotfactory.factory.trace import CycleTrace
from pilotfactory.sim.cloud import LIVE, CloudConfig
from pilotfactory.sim.metrics import percentile
from pilotfactory.sim.pool import PoolConfig
from pilotfactory.sim.runner import START, _dummy_secrets, _makes_vms, pool_config
from pilotfactory.sim.traces import Trace, TraceJob
from pilotfactory.sim.world import SimConfig, SimWorld

Progress = Callable[[str, float], None]
"""Called with (what is running, fraction done); the CLI draws it on a terminal only."""

STARTD_DELAY = 5.0
SAMPLE_EVERY = 60.0


@dataclass(frozen=True)
class WorldSettings:
    """The world a configuration is judged in (``pilotfactory sim`` flags)."""

    boot_time: float = 120.0
    """Seconds from launch to a running VM (its startd joins ``STARTD_DELAY`` later)."""
    boot_jitter: float = 30.0
    boot_distribution: str = "uniform"
    never_join: float = 0.0
    interruption_rate: float = 0.0
    """Spot interruptions per VM-hour."""
    price: float = 0.10
    """Per VM-hour."""
    activation_rate: float | None = None
    """PanDA jobs activated per minute and site."""
    poweroff_delay: float | None = 10.0
    """The shipped worker template's self-shutdown: a VM whose startd has exited (a peaceful
    off, a drain with ``-exit-on-completion``) powers off this long after (about half the
    template's 20 s master update interval, when ``MASTER.DAEMON_SHUTDOWN`` is evaluated,
    plus the master's exit and ``/sbin/poweroff``). None: images without the contract."""
    noclaim_shutdown: float | None = None
    """The template's ``STARTD_NOCLAIM_SHUTDOWN`` (it ships 1200 s); None: not modelled."""
    api_latency: float = 2.0
    """Seconds a cloud API call takes: a terminate lands this long after the caller decided
    on what it read (a job matched to the VM meanwhile is evicted), and a policy's loop
    (elastiq's) is that much later for each call it made."""

    def __post_init__(self) -> None:
        if self.boot_distribution not in ("uniform", "lognormal"):
            raise ConfigError(f"boot distribution {self.boot_distribution!r}: uniform, lognormal")
        if not 0.0 <= self.never_join <= 1.0:
            raise ConfigError(f"never-join fraction {self.never_join} must be in [0, 1]")
        checks = (self.boot_time, self.boot_jitter, self.interruption_rate, self.price)
        if any(not math.isfinite(v) or v < 0 for v in checks):
            raise ConfigError("boot time, jitter, interruption rate and price must be >= 0")
        if self.activation_rate is not None and not self.activation_rate > 0:
            raise ConfigError("activation rate must be > 0 jobs per minute")
        if not 0 <= self.api_latency < math.inf:
            raise ConfigError("API latency must be >= 0 seconds")
        if self.poweroff_delay is not None and not 0 <= self.poweroff_delay < math.inf:
            raise ConfigError("power-off delay must be >= 0 seconds")
        if self.noclaim_shutdown is not None and not 0 < self.noclaim_shutdown < math.inf:
            raise ConfigError("no-claim shutdown must be > 0 seconds")

    def cloud(self) -> CloudConfig:
        return CloudConfig(
            boot_delay=self.boot_time,
            boot_jitter=min(self.boot_jitter, self.boot_time)
            if self.boot_distribution == "uniform"
            else self.boot_jitter,
            boot_distribution=self.boot_distribution,
            startd_delay=STARTD_DELAY,
            never_join_fraction=self.never_join,
            interruption_rate=self.interruption_rate,
            # Images built for pilotfactory set MAXJOBRETIREMENTTIME, so drain is safe.
            default_retirement_time=86400.0,
            poweroff_delay=self.poweroff_delay,
            noclaim_shutdown=self.noclaim_shutdown,
            api_latency=self.api_latency,
        )

    def mean_join_time(self) -> float:
        """Launch -> startd in the collector, on average (what the oracle pays per VM)."""
        if self.boot_distribution == "lognormal" and self.boot_time > 0:
            sigma = self.boot_jitter / self.boot_time
            boot = self.boot_time * math.exp(sigma * sigma / 2)
        else:
            boot = self.boot_time
        return boot + STARTD_DELAY if boot > 0 else 0.0


@dataclass
class Sample:
    t: float
    waiting: int
    booting: int
    idle: int
    busy: int
    cost: float


@dataclass
class RunResult:
    """One policy on one trace: the report's numbers and the series for the plot."""

    name: str
    metrics: dict[str, Any]
    series: list[Sample] = field(default_factory=list)


# ---------------------------------------------------------------------------- measuring


def measure(world: SimWorld, trace: Trace, price: float) -> dict[str, Any]:
    """The report's numbers, read from the world's own counters."""
    m = world.metrics
    now = world.loop.now
    waits = [w for ws in m.waits.values() for w in ws]
    vm_hours = sum(m.vm_hours(now).values())
    busy = m.busy_vm_hours(now)
    completed = sum(m.payload_completed.values())
    latencies = request_latencies(m.first_starts, m.launch_times)
    done = completed >= trace.total_jobs and m.last_completion is not None
    return {
        "jobs": trace.total_jobs,
        "completed": completed,
        "wait_p50": percentile(waits, 50),
        "wait_p95": percentile(waits, 95),
        "wait_max": max(waits, default=0.0),
        "makespan_h": (m.last_completion - START) / 3600.0
        if done and m.last_completion is not None
        else None,
        "vm_hours": vm_hours,
        "idle_vm_hours": max(0.0, vm_hours - busy),
        "cost": vm_hours * price,
        "vms_lost": m.interrupted + m.never_joined,
        "vms_powered_off": m.self_shutdowns,
        "jobs_evicted": sum(m.payload_killed.values()),
        "jobs_interrupted": sum(m.payload_interrupted.values()),
        "request_latency_p50": percentile(latencies, 50) if latencies else None,
        "request_latency_p99": percentile(latencies, 99) if latencies else None,
    }


def request_latencies(
    starts: Sequence[tuple[float, float]], launches: Sequence[float]
) -> list[float]:
    """Per job that waited for capacity: its submit -> the first cloud request at or after it
    (only where that request came before the job started; a job a running VM took never
    needed one)."""
    import bisect

    ordered = sorted(launches)
    out: list[float] = []
    for queued, started in starts:
        i = bisect.bisect_left(ordered, queued)
        if i < len(ordered) and ordered[i] <= started:
            out.append(ordered[i] - queued)
    return out


def _sample(world: SimWorld, price: float, queues: set[str] | None = None) -> Sample:
    snap = world.metrics.snapshots[-1] if world.metrics.snapshots else world.snapshot()
    view = world.pool.vm_view()
    idle = sum(1 for alive, jobs, _ in view.values() if alive and not jobs)
    busy = sum(1 for alive, jobs, _ in view.values() if alive and jobs)
    live = snap.instances_pending + snap.instances_running
    return Sample(
        t=(snap.t - START) / 3600.0,
        waiting=snap.jobs_idle + snap.panda_activated,
        booting=max(0, live - idle - busy),
        idle=idle,
        busy=busy,
        cost=snap.vm_hours * price,
    )


class Horizon:
    """When a run ends: after ``hours`` if given, else once every job has completed and
    ``TAIL`` more (so the shrink shows and every policy pays the same tail), at most
    ``max_hours``; each run is charged for its own horizon."""

    TAIL = 7200.0

    def __init__(self, trace: Trace, hours: float | None, max_hours: float = 168.0) -> None:
        self.jobs = trace.total_jobs
        self.fixed = START + hours * 3600.0 if hours is not None else None
        self.cap = START + max_hours * 3600.0
        self.floor = START + trace.end + self.TAIL

    def over(self, world: SimWorld) -> bool:
        now = world.loop.now
        if self.fixed is not None:
            return now >= self.fixed
        if now >= self.cap:
            return True
        m = world.metrics
        done = sum(m.payload_completed.values()) >= self.jobs
        last = m.last_completion if m.last_completion is not None else START
        return done and now >= max(self.floor if not self.jobs else START, last + self.TAIL)

    def fraction(self, world: SimWorld) -> float:
        now = world.loop.now
        if self.fixed is not None:
            return (now - START) / max(1.0, self.fixed - START)
        if not self.jobs:
            return (now - START) / max(1.0, self.floor - START)
        return sum(world.metrics.payload_completed.values()) / self.jobs


# ---------------------------------------------------------------------------- the user's config


def prepare(fcfg: FactoryConfig, workdir: str) -> FactoryConfig:
    """A factory config that touches nothing outside ``workdir``: no state or status file, no
    lock, no metrics port, logs in the temp dir (a simulation must not disturb the daemon)."""
    return replace(
        fcfg,
        base_log_dir=os.path.join(workdir, "logs"),
        raw={**fcfg.raw, "baseLogDir": os.path.join(workdir, "logs")},
        status_file=None,
        state_file=None,
        lock_file=None,
        metrics_port=None,
    )


def run_config(
    name: str,
    fcfg: FactoryConfig,
    queues: Sequence[QueueConfig],
    trace: Trace,
    settings: WorldSettings,
    seed: int,
    hours: float | None,
    progress: Progress | None = None,
    observe: Callable[[SimWorld, Factory, list[CycleTrace]], None] | None = None,
) -> RunResult:
    """The user's queues, unchanged, until the ``Horizon``; ``observe`` sees every tick (the
    scenario tests check their invariants there)."""
    with tempfile.TemporaryDirectory(prefix="pilotfactory-sim-") as workdir:
        fc = prepare(fcfg, workdir)
        qs = _dummy_secrets(queues, workdir)
        sites = {q.wmsqueue for q in qs if q.wmsstatus.name == "Panda"}
        work = replace(
            trace,
            sites=frozenset(sites & {j.label for j in trace.jobs}),
            activation_rate=settings.activation_rate,
        )
        clock = VirtualClock(START)
        world = SimWorld(
            clock,
            SimConfig(
                seed=seed,
                pool=pool_config(qs),
                cloud=settings.cloud(),
                sites={s: "online" for s in sites},
                workload=work,
            ),
        )
        factory = Factory(fc, qs, world, clock)
        step = min([fc.sleep, *(q.sleep for q in qs)]) or 30.0
        horizon = Horizon(trace, hours)
        series: list[Sample] = []
        next_sample = START
        last_cycle = START
        while True:
            world.tick()
            if horizon.over(world):
                break
            last_cycle = clock.now()
            traces = factory.cycle()
            if observe is not None:
                observe(world, factory, traces)
            if clock.now() >= next_sample:
                series.append(_sample(world, settings.price))
                next_sample += SAMPLE_EVERY
            if progress is not None:
                progress(name, horizon.fraction(world))
            # As the daemon does: wake for the first queue due (a reap follow-up comes sooner
            # than an interval), at least every ``step``.
            due = min((q.next_run for q in factory.queues.values()), default=clock.now() + step)
            clock.sleep(min(step, max(1.0, due - clock.now())))
        series.append(_sample(world, settings.price))
        metrics = measure(world, trace, settings.price)
        vm_queues = [q for q in factory.queues.values() if q.worker_kind is WorkerKind.VM]
        counted = vm_queues or list(factory.queues.values())
        for key in ("submitted", "retired", "unretired", "reaped"):
            metrics[f"vms_{key}"] = sum(q.counters[key] for q in counted)
        metrics["orphans"] = _orphans(world, factory, last_cycle)
        return RunResult(name, metrics, series)


def _orphans(world: SimWorld, factory: Factory, before: float) -> int:
    """Live instances no queue knows as a worker (launched before the last cycle's reads)."""
    known: set[str] = set()
    for name, q in factory.queues.items():
        info = q.batch_source.info(name)
        if info is not None:
            known.update(w.id for w in info.workers)
    return sum(
        1
        for r in world.sim_cloud.instances()
        if r.state in LIVE
        and r.launched_at < before
        and (r.worker or "") not in known
        and (r.owner_job or "") not in known
    )


# ---------------------------------------------------------------------------- elastiq-style


@dataclass(frozen=True)
class ElastiqParams:
    """elastiq's knobs (its defaults, or the user's JobsPerVM / IdleShutdown / MinVMs / MaxVMs)."""

    waiting_jobs_threshold: int = 0
    waiting_jobs_time: float = 40.0
    jobs_per_vm: int = 4
    idle_time: float = 3600.0
    deploy_time: float = 600.0
    min_vms: int = 0
    max_vms: int | None = None
    check_every: float = 15.0
    flavor: str = "m1.large"

    @classmethod
    def like(cls, queues: Sequence[QueueConfig]) -> ElastiqParams:
        """The same sizes and limits as the user's first VM queue, so the comparison is about
        the policy, not the knobs."""
        vmq = [q for q in queues if _makes_vms(q)]
        if not vmq:
            return cls()
        q = vmq[0]
        p: dict[str, Any] = {}
        for spec in q.sched:
            if spec.name == "JobsPerVM":
                p["jobs_per_vm"] = int(spec.params["jobs"])
            elif spec.name == "IdleShutdown":
                p["idle_time"] = float(spec.params["idle_time"])
            elif spec.name == "MinVMs":
                p["min_vms"] = int(spec.params["minimum"])
            elif spec.name == "MaxVMs" and spec.params.get("maximum") is not None:
                p["max_vms"] = int(spec.params["maximum"])
        flavor = q.batchsubmit.params.get("flavor") or q.batchsubmit.params.get("instance_type")
        if flavor:
            p["flavor"] = str(flavor)
        p["deploy_time"] = float(q.planner.boot_timeout)
        return replace(cls(), **p)


class ElastiqPolicy:
    """elastiq's loop, in the simulated world: start ceil(waiting / jobs_per_vm) VMs once jobs
    have waited ``waiting_jobs_time`` (less those still deploying), terminate VMs idle for
    ``idle_time`` at once (no drain), and VMs not joined after ``deploy_time``.

    Its cloud calls are sequential, one VM each, ``api_latency`` apiece: a terminate decided
    on this check's read lands after the calls before it and its own round trip, and the
    next check comes ``spent`` seconds later than ``check_every``."""

    QUEUE = "elastiq"

    def __init__(self, params: ElastiqParams, world: SimWorld) -> None:
        self.p = params
        self.world = world
        self.vms: dict[str, float] = {}
        self.waiting_since: float | None = None
        self.counts = {"submitted": 0, "retired": 0, "unretired": 0, "reaped": 0}
        self._seq = 0
        self.latency = world.sim_cloud.config.api_latency
        self.spent = 0.0
        """Seconds this check's cloud calls took (the loop sleeps after them)."""

    def check(self) -> None:
        self.spent = 0.0
        now = self.world.loop.now
        cloud = self.world.sim_cloud
        view = self.world.pool.vm_view()
        live = {i: t for i, t in self.vms.items() if cloud.alive(i)}
        self.vms = live
        deploying = [i for i in live if not view.get(i, (False, 0, 0.0))[0]]
        stuck = [i for i in deploying if now - live[i] > self.p.deploy_time]
        if stuck:
            self._terminate(stuck)
            self.counts["reaped"] += len(stuck)
            for i in stuck:
                del self.vms[i]
        waiting = self.world.pool.census()["jobs_idle"]
        if waiting > self.p.waiting_jobs_threshold:
            self.waiting_since = self.waiting_since if self.waiting_since is not None else now
            if now - self.waiting_since >= self.p.waiting_jobs_time:
                want = math.ceil(waiting / self.p.jobs_per_vm) - (len(deploying) - len(stuck))
                room = (self.p.max_vms - len(self.vms)) if self.p.max_vms is not None else want
                self._start(min(want, room))
        else:
            self.waiting_since = None
        if len(self.vms) < self.p.min_vms:
            self._start(self.p.min_vms - len(self.vms))
        idle = sorted(
            (v[2], i)
            for i in self.vms
            if (v := view.get(i)) is not None
            and v[0]
            and not v[1]
            and now - v[2] >= self.p.idle_time
        )
        spare = max(0, len(self.vms) - self.p.min_vms)
        victims = [i for _, i in idle[:spare]]
        if victims:
            self._terminate(victims)
            self.counts["retired"] += len(victims)
            for i in victims:
                del self.vms[i]

    def _terminate(self, ids: Sequence[str]) -> None:
        """One call per VM, each issued once the calls before it returned."""
        cloud = self.world.sim_cloud
        for i in ids:
            if self.spent > 0:
                self.world.loop.after(self.spent, partial(cloud.terminate, [i]))
            else:
                cloud.terminate([i])
            self.spent += self.latency

    def _start(self, n: int) -> None:
        if n <= 0:
            return
        tags = {TAG_QUEUE: self.QUEUE}
        for _ in range(n):
            self.spent += self.latency
            self._seq += 1
            ids = self.world.sim_cloud.launch(
                LaunchSpec(image="elastiq-worker", flavor=self.p.flavor),
                1,
                {**tags, TAG_WORKER: f"elastiq-{self._seq}"},
            )
            for i in ids:
                self.vms[i] = self.world.loop.now
        self.counts["submitted"] += n


def run_elastiq(
    params: ElastiqParams,
    trace: Trace,
    settings: WorldSettings,
    seed: int,
    hours: float | None,
    progress: Progress | None = None,
) -> RunResult:
    """The same trace (every job a pool job) through the elastiq-style policy."""
    clock = VirtualClock(START)
    work = replace(trace, sites=frozenset(), activation_rate=None)
    world = SimWorld(
        clock, SimConfig(seed=seed, cloud=settings.cloud(), workload=work, pool=PoolConfig())
    )
    policy = ElastiqPolicy(params, world)
    horizon = Horizon(trace, hours)
    series: list[Sample] = []
    next_sample = START
    while True:
        world.tick()
        if horizon.over(world):
            break
        policy.check()
        if clock.now() >= next_sample:
            series.append(_sample(world, settings.price))
            next_sample += SAMPLE_EVERY
        if progress is not None:
            progress("elastiq", horizon.fraction(world))
        clock.sleep(params.check_every + policy.spent)
    series.append(_sample(world, settings.price))
    metrics = measure(world, trace, settings.price)
    for key, value in policy.counts.items():
        metrics[f"vms_{key}"] = value
    metrics["orphans"] = 0
    return RunResult("elastiq", metrics, series)


# ---------------------------------------------------------------------------- oracle


@dataclass(frozen=True)
class Quota:
    """The VM floor and cap the oracle honours (``MinVMs`` / ``MaxVMs`` of the VM queues)."""

    floor: int = 0
    cap: int | None = None

    @classmethod
    def of(cls, queues: Sequence[QueueConfig]) -> Quota:
        """Summed over the VM queues (the cap only when every one has a ``MaxVMs``): pooling
        them is a relaxation, so the bound stays a bound."""
        floor, caps = 0, []
        vmq = [q for q in queues if _makes_vms(q)]
        for q in vmq:
            cap = None
            for spec in q.sched:
                if spec.name == "MinVMs":
                    floor += int(spec.params["minimum"])
                elif spec.name == "MaxVMs" and spec.params.get("maximum") is not None:
                    cap = int(spec.params["maximum"])
            caps.append(cap)
        total = sum(c for c in caps if c is not None) if caps and None not in caps else None
        return cls(floor if total is None else min(floor, total), total)

    def text(self) -> str:
        parts = [f"at least {self.floor} VMs"] if self.floor else []
        parts += [f"at most {self.cap} VMs"] if self.cap is not None else []
        return ", ".join(parts) or "no VM floor or cap"


def _fifo(jobs: Sequence[TraceJob], capacity: int | None) -> list[tuple[TraceJob, float]]:
    """(job, start) per job that runs: at its submit, or with ``capacity`` cores in all, as the
    pool's negotiator would start them (in queue order, a job that does not fit yet not
    blocking the ones behind it). A job bigger than the capacity never starts."""
    if capacity is None:
        return [(j, j.submit) for j in jobs]
    import heapq

    queue = sorted(jobs, key=lambda j: j.submit)
    out: list[tuple[TraceJob, float]] = []
    running: list[tuple[float, int]] = []
    waiting: list[TraceJob] = []
    free, nxt = capacity, 0
    while nxt < len(queue) or (waiting and running):
        arrive = queue[nxt].submit if nxt < len(queue) else math.inf
        now = min(arrive, running[0][0] if running else math.inf)
        while running and running[0][0] <= now:
            free += heapq.heappop(running)[1]
        while nxt < len(queue) and queue[nxt].submit <= now:
            waiting.append(queue[nxt])
            nxt += 1
        still = []
        for j in waiting:
            if j.cores <= free:
                free -= j.cores
                heapq.heappush(running, (now + j.duration, j.cores))
                out.append((j, now))
            else:
                still.append(j)
        waiting = still
    return out


def oracle(
    trace: Trace,
    settings: WorldSettings,
    cores_per_vm: int,
    quota: Quota | None = None,
    hours: float | None = None,
) -> RunResult:
    """The lower bound no policy in this world can beat, from the trace alone: every job
    starts at its submit time (VMs were launched one join time earlier), VMs are packed as a
    fluid (``cores_per_vm`` cores to a VM-hour) and ended the moment they empty. The only idle
    time is each VM's boot, for the fewest VMs the peak needs. A discrete schedule would not
    be a bound (one 1-core job on a 4-core VM costs a whole VM), hence the fluid.

    ``quota`` bounds the same under the user's own limits: with a cap, the jobs start as the
    negotiator would start them on every allowed VM up from the start (FIFO on the pooled
    cores: the earliest starts any policy gets for one-core jobs); with a floor, that many VMs
    are billed from the start to the end of the run (the last job's end + ``Horizon.TAIL``,
    or ``hours``), their cores unused by the work counted in the VM-hours. Idle VM-hours are
    measured as the world measures them (a VM running no job): the boots, and the floor VMs
    left empty with the running jobs spread one to a VM. It is the cheapest way to the
    least waiting: a policy that makes jobs wait may spend less."""
    cpv = max(1, cores_per_vm)
    q = quota or Quota()
    jobs = trace.arrivals() if settings.activation_rate else list(trace.jobs)
    capacity = q.cap * cpv if q.cap is not None else None
    ran = _fifo(jobs, capacity)
    waits = [start - j.submit for j, start in ran]
    # (time, cores, jobs) deltas; at one instant ends come first, so a slot freed and taken
    # again at once does not count twice in the peak
    events = sorted(
        [(t, j.cores, 1) for j, t in ran] + [(t + j.duration, -j.cores, -1) for j, t in ran],
        key=lambda e: (e[0], e[1]),
    )
    end = max((t + j.duration for j, t in ran), default=0.0)
    span = hours * 3600.0 if hours is not None else (end if ran else trace.end) + Horizon.TAIL
    cores = running = peak = 0
    spare = empty = 0.0
    last = 0.0
    for t, dc, dn in [*events, (max(span, end), 0, 0)]:
        width = max(0.0, min(t, span) - min(last, span))
        spare += max(0, q.floor * cpv - cores) * width
        empty += max(0, q.floor - running) * width
        last = t
        cores += dc
        running += dn
        peak = max(peak, cores)
    extra = max(0, math.ceil(peak / cpv) - q.floor)
    boots = extra * settings.mean_join_time()
    vm_h = (sum(j.duration * j.cores for j, _ in ran) / cpv + spare / cpv + boots) / 3600.0
    idle_h = (boots + empty) / 3600.0
    metrics: dict[str, Any] = {
        "jobs": trace.total_jobs,
        "completed": len(ran),
        "wait_p50": percentile(waits, 50),
        "wait_p95": percentile(waits, 95),
        "wait_max": max(waits, default=0.0),
        "makespan_h": end / 3600.0,
        "vm_hours": vm_h,
        "idle_vm_hours": idle_h,
        "cost": vm_h * settings.price,
        "vms_submitted": q.floor + extra,
        "vms_retired": extra,
        "vms_unretired": 0,
        "vms_reaped": 0,
        "vms_lost": 0,
        "vms_powered_off": 0,
        "jobs_evicted": 0,
        "jobs_interrupted": 0,
        "orphans": 0,
        "request_latency_p50": None,
        "request_latency_p99": None,
    }
    return RunResult("oracle", metrics)


def cores_per_vm(queues: Sequence[QueueConfig], settings: WorldSettings) -> int:
    """Cores of the first VM queue's flavour in the simulated cloud (its default: 4)."""
    cloud = settings.cloud()
    for q in queues:
        if _makes_vms(q):
            flavor = q.batchsubmit.params.get("flavor") or q.batchsubmit.params.get("instance_type")
            return int(cloud.flavor_cpus.get(str(flavor), cloud.default_cpus))
    return cloud.default_cpus


# ---------------------------------------------------------------------------- report

ROWS: tuple[tuple[str, str, str], ...] = (
    ("wait_p50", "payload wait p50", "s"),
    ("wait_p95", "payload wait p95", "s"),
    ("wait_max", "payload wait max", "s"),
    ("makespan_h", "makespan", "h"),
    ("vm_hours", "VM-hours", "h"),
    ("idle_vm_hours", "idle VM-hours", "h"),
    ("cost", "cost", "$"),
    ("vms_submitted", "VMs submitted", ""),
    ("vms_retired", "VMs retired", ""),
    ("vms_unretired", "VMs un-retired", ""),
    ("vms_reaped", "VMs reaped", ""),
    ("vms_lost", "VMs lost", ""),
    ("vms_powered_off", "VMs powered off by themselves", ""),
    ("jobs_evicted", "jobs evicted (must be 0)", ""),
    ("jobs_interrupted", "jobs killed by interruptions", ""),
    ("orphans", "orphan VMs (must be 0)", ""),
    ("request_latency_p50", "idle job -> cloud request p50", "s"),
    ("request_latency_p99", "idle job -> cloud request p99", "s"),
    ("completed", "jobs completed", ""),
)
RATIO_KEYS = ("wait_p95", "makespan_h", "vm_hours", "idle_vm_hours", "cost")


def ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, int | float) or not isinstance(base, int | float) or base <= 0:
        return None
    return value / base


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and unit in ("h", "$"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


def report_json(results: Sequence[RunResult], header: dict[str, Any]) -> dict[str, Any]:
    base = next((r for r in results if r.name == "oracle"), None)
    out: dict[str, Any] = {**header, "results": {}}
    for r in results:
        entry = {k: _round(v) for k, v in r.metrics.items()}
        if base is not None and r is not base:
            entry["ratio_to_oracle"] = {
                k: _round(ratio(r.metrics.get(k), base.metrics.get(k))) for k in RATIO_KEYS
            }
        out["results"][r.name] = entry
    return out


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def report_table(results: Sequence[RunResult], header: Sequence[str]) -> str:
    """Metrics down, policies across, then each policy's ratio to the oracle."""
    base = next((r for r in results if r.name == "oracle"), None)
    others = [r for r in results if r is not base]
    cols = [r.name[:16] for r in results]
    ratio_cols = [f"{r.name[:10]}/oracle" for r in others] if base is not None else []
    width = max(len(label) for _, label, _ in ROWS) + 5
    lines = list(header)
    head = f"{'metric':<{width}}" + "".join(f"{c:>17}" for c in cols + ratio_cols)
    lines += [head, "-" * len(head)]
    for key, label, unit in ROWS:
        name = f"{label} ({unit})" if unit else label
        cells = [_fmt(r.metrics.get(key), unit) for r in results]
        if base is not None:
            for r in others:
                q = ratio(r.metrics.get(key), base.metrics.get(key)) if key in RATIO_KEYS else None
                cells.append(f"{q:.2f}x" if q is not None else "")
        lines.append(f"{name:<{width}}" + "".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Fail before a long run, not after it, when ``--plot`` cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'pilotfactory[plot]' (the plot extra)"
        ) from exc


def plot(path: str, results: Sequence[RunResult]) -> None:
    """Demand, workers by state and cumulative cost over time, one PNG."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.series]
    fig, axes = plt.subplots(2 + len(runs), 1, figsize=(10, 3 + 2.2 * (1 + len(runs))), sharex=True)
    first = runs[0].series if runs else []
    axes[0].plot([s.t for s in first], [s.waiting for s in first], color="black")
    axes[0].set_ylabel("waiting jobs")
    axes[0].set_title("demand")
    for ax, r in zip(axes[1:-1], runs, strict=True):
        t = [s.t for s in r.series]
        ax.stackplot(
            t,
            [s.busy for s in r.series],
            [s.idle for s in r.series],
            [s.booting for s in r.series],
            labels=["busy", "idle", "booting"],
        )
        ax.set_ylabel("VMs")
        ax.set_title(f"{r.name}: workers by state")
        ax.legend(loc="upper right")
    for r in runs:
        axes[-1].plot([s.t for s in r.series], [s.cost for s in r.series], label=r.name)
    oracle_run = next((r for r in results if r.name == "oracle"), None)
    if oracle_run is not None:
        axes[-1].axhline(oracle_run.metrics["cost"], linestyle="--", color="grey", label="oracle")
    axes[-1].set_ylabel("cumulative cost")
    axes[-1].set_xlabel("hours")
    axes[-1].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class TerminalProgress:
    """One stderr line redrawn in place, only on a terminal (never in --json or a pipe)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = (-1, "")

    def __call__(self, what: str, fraction: float) -> None:
        if not self.enabled:
            return
        pct = min(100, int(fraction * 100))
        if (pct, what) == self._last:
            return
        self._last = (pct, what)
        bar = "#" * (pct // 5)
        sys.stderr.write(f"\rsim {what[:20]:<20} [{bar:<20}] {pct:3d}%")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._last[0] >= 0:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


# ---------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class SimRequest:
    """What ``pilotfactory sim`` was asked (the CLI's flags, parsed)."""

    configs: tuple[tuple[str, FactoryConfig, tuple[QueueConfig, ...]], ...]
    """(name, factory config, queues) per configuration: one, or two with ``--compare``."""
    workload: str = "burst"
    """A shape name, or a path to a CSV trace."""
    scale: float = 1.0
    cores: int = 1
    seed: int = 1
    hours: float | None = None
    settings: WorldSettings = field(default_factory=WorldSettings)
    baselines: bool = True


def load_trace(req: SimRequest) -> Trace:
    from pilotfactory.sim import traces

    queues = [q for _, _, qs in req.configs for q in qs]
    labels = list(dict.fromkeys(q.wmsqueue for q in queues))
    if req.workload.endswith(".csv") or os.sep in req.workload:
        return traces.load_csv(req.workload, labels[0] if labels else "SIM_QUEUE")
    return traces.shape(
        req.workload, labels or ["SIM_QUEUE"], seed=req.seed, scale=req.scale, cores=req.cores
    )


def run_request(
    req: SimRequest, progress: Progress | None = None
) -> tuple[list[RunResult], dict[str, Any]]:
    """Every configuration, then the baselines, on one trace; results and the report header."""
    trace = load_trace(req)
    hours = req.hours
    results = [
        run_config(name, fcfg, qs, trace, req.settings, req.seed, hours, progress)
        for name, fcfg, qs in req.configs
    ]
    first = req.configs[0][2]
    cpv = cores_per_vm(first, req.settings)
    quota = Quota.of(first)
    free: RunResult | None = None
    if req.baselines:
        results.append(
            run_elastiq(ElastiqParams.like(first), trace, req.settings, req.seed, hours, progress)
        )
        results.append(oracle(trace, req.settings, cpv, quota, hours))
        free = oracle(trace, req.settings, cpv)
    labels = sorted({j.label for j in trace.jobs})
    watched = {q.wmsqueue for _, _, qs in req.configs for q in qs}
    header = {
        "workload": trace.name,
        "jobs": trace.total_jobs,
        "core_hours": round(trace.core_seconds() / 3600.0, 3),
        "hours": hours,
        "seed": req.seed,
        "cores_per_vm": cpv,
        "world": {
            "boot_time": req.settings.boot_time,
            "boot_jitter": req.settings.boot_jitter,
            "boot_distribution": req.settings.boot_distribution,
            "never_join": req.settings.never_join,
            "interruptions_per_vm_hour": req.settings.interruption_rate,
            "price_per_vm_hour": req.settings.price,
            "activation_rate": req.settings.activation_rate,
            "poweroff_delay": req.settings.poweroff_delay,
            "noclaim_shutdown": req.settings.noclaim_shutdown,
            "api_latency": req.settings.api_latency,
        },
        "configs": {name: [q.name for q in qs] for name, _, qs in req.configs},
        "unwatched_labels": [lb for lb in labels if lb not in watched],
        "oracle_quota": {"floor": quota.floor, "cap": quota.cap, "text": quota.text()},
    }
    if free is not None:
        header["oracle_unconstrained"] = {k: _round(v) for k, v in free.metrics.items()}
    return results, header


def header_lines(h: dict[str, Any]) -> list[str]:
    w = h["world"]
    lines = [
        f"workload {h['workload']}: {h['jobs']} jobs, {h['core_hours']:g} core-hours; "
        + (
            f"{h['hours']:g} simulated hours"
            if h["hours"] is not None
            else "each run until its last job ends + 2 h"
        )
        + f", seed {h['seed']}, {h['cores_per_vm']} cores per VM",
        f"world: boot {w['boot_time']:g} s +- {w['boot_jitter']:g} ({w['boot_distribution']}), "
        f"never join {w['never_join']:g}, {w['interruptions_per_vm_hour']:g} interruptions "
        f"per VM-hour, ${w['price_per_vm_hour']:g} per VM-hour, cloud API calls "
        f"{w['api_latency']:g} s"
        + (f", PanDA activates {w['activation_rate']:g}/min" if w["activation_rate"] else ""),
        "VMs: "
        + (
            f"power off {w['poweroff_delay']:g} s after their startd exits (worker contract)"
            if w["poweroff_delay"] is not None
            else "no self-shutdown (the image ignores the worker contract)"
        )
        + (
            f", startd no-claim shutdown after {w['noclaim_shutdown']:g} s"
            if w["noclaim_shutdown"] is not None
            else ""
        ),
    ]
    for name, qs in h["configs"].items():
        lines.append(f"{name}: {', '.join(qs)}")
    free = h.get("oracle_unconstrained")
    if free is not None:
        lines.append(
            f"oracle: the bound under the first config's VM quota ({h['oracle_quota']['text']}); "
            f"unconstrained: VM-hours {free['vm_hours']:.2f}, idle {free['idle_vm_hours']:.2f}, "
            f"wait p95 {free['wait_p95']:.0f} s (--json: oracle_unconstrained)"
        )
    if h["unwatched_labels"]:
        lines.append(f"warning: no queue watches label(s) {', '.join(h['unwatched_labels'])}")
    lines.append("")
    return lines
