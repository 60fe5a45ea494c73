"""The autoscalers' own test scenarios (cluster-autoscaler, Karpenter, elastiq), on the
simulated world at their full sizes, through ``pilotfactory sim``'s runner.

One VM per job (``t2.micro``: 1 core, ``JobsPerVM`` 1), so every count is exact.
"""

from __future__ import annotations

from pathlib import Path

from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import TAG_QUEUE
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.trace import CycleTrace
from pilotfactory.sim import whatif
from pilotfactory.sim.traces import Trace, TraceJob
from pilotfactory.sim.world import SimWorld

QUEUE = """
[DEFAULT]
apfqueue.sleep = 60
retire_confirm_cycles = 1
boot_timeout = 600
retire_mode = drain
{extra}

[Q]
wmsstatusplugin = Condor
wmsqueue = Q
batchstatusplugin = EC2
batchsubmitplugin = EC2
schedplugin = JobsPerVM, IdleShutdown, MinVMs, MaxVMs
sched.jobspervm.jobs = 1
sched.idleshutdown.idle_time = 600
sched.minvms.minimum = {minimum}
sched.maxvms.maximum = {maximum}
batchsubmit.ec2.flavor = t2.micro
batchsubmit.ec2.image = ami-1
batchsubmit.ec2.region = RegionOne
batchsubmit.ec2.collectorhost = cm.example.org
batchstatus.ec2.region = RegionOne
batchstatus.ec2.collectorhost = cm.example.org
"""
WORLD = whatif.WorldSettings(boot_time=120.0, boot_jitter=30.0)


class Watch:
    """Per tick: the queue's live VMs, the most ever, retires per cycle, retired workers."""

    def __init__(self) -> None:
        self.max_live = 0
        self.live = 0
        self.retired: list[str] = []
        self.per_cycle: list[int] = []
        self.max_booting = 0

    def __call__(self, world: SimWorld, factory: Factory, traces: list[CycleTrace]) -> None:
        self.live = world.sim_cloud.census().by_queue.get("Q", 0)
        self.max_live = max(self.max_live, self.live)
        joined = {i for i, (alive, _, _) in world.pool.vm_view().items() if alive}
        booting = sum(
            1
            for r in world.sim_cloud.instances()
            if r.tags.get(TAG_QUEUE) == "Q"
            and r.state in ("pending", "running")
            and r.instance_id not in joined
        )
        self.max_booting = max(self.max_booting, booting)
        for t in traces:
            n = 0
            for a in t.planned:
                if a.kind.value == "retire":
                    self.retired.extend(w.id for w in a.workers)
                    n += len(a.workers)
            self.per_cycle.append(n)


def run(
    tmp_path: Path,
    trace: Trace,
    hours: float,
    *,
    minimum: int = 0,
    maximum: int = 1000,
    extra: str = "",
    world: whatif.WorldSettings = WORLD,
    watch: Watch | None = None,
) -> tuple[dict, Watch]:
    conf = tmp_path / "q.conf"
    conf.write_text(QUEUE.format(minimum=minimum, maximum=maximum, extra=extra))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    w = watch or Watch()
    result = whatif.run_config(
        "config", default_factory_config(), tuple(res.queues), trace, world, 1, hours, None, w
    )
    return result.metrics, w


def burst(count: int, duration: float, at: float = 0.0) -> list[TraceJob]:
    return [TraceJob(at, duration, 1, "Q") for _ in range(count)]


def test_burst_to_1000_vms(tmp_path: Path) -> None:
    m, w = run(tmp_path, Trace(tuple(burst(1000, 4 * 3600))), 0.5)
    assert m["vms_submitted"] == 1000 and w.live == 1000 and w.max_live == 1000
    assert m["wait_max"] <= 60 + 150 + 5 + 60  # one cycle, the slowest boot, join, a cycle


def test_second_burst_during_scale_up_buys_no_duplicates(tmp_path: Path) -> None:
    # The second 500 arrive while the first 500 VMs are still booting.
    trace = Trace(tuple(burst(500, 4 * 3600) + burst(500, 4 * 3600, at=90.0)))
    m, w = run(tmp_path, trace, 0.5)
    assert m["vms_submitted"] == 1000 and w.max_live == 1000


def test_300_of_1000_empty_exactly_300_retired_within_the_budget(tmp_path: Path) -> None:
    trace = Trace(tuple(burst(700, 10 * 3600) + burst(300, 1200)))
    m, w = run(tmp_path, trace, 1.0, extra="max_retire_per_cycle = 50")
    assert len(w.retired) == len(set(w.retired)) == 300
    assert max(w.per_cycle) == 50 and sum(1 for n in w.per_cycle if n) >= 6
    assert w.live == 700 and m["jobs_evicted"] == 0 and m["vms_submitted"] == 1000


def test_queue_minimum_970_of_1000_retires_exactly_30(tmp_path: Path) -> None:
    m, w = run(tmp_path, Trace(tuple(burst(1000, 1200))), 1.0, minimum=970)
    assert len(w.retired) == len(set(w.retired)) == 30
    assert w.live == 970 and m["jobs_evicted"] == 0


def test_protected_vms_are_never_retired(tmp_path: Path) -> None:
    protected: set[str] = set()

    class Protect(Watch):
        def __call__(self, world: SimWorld, factory: Factory, traces: list[CycleTrace]) -> None:
            if not protected:
                view = world.pool.vm_view()
                joined = sorted(
                    (r for r in world.sim_cloud.instances() if view.get(r.instance_id or "")),
                    key=lambda r: r.machine,
                )
                if len(joined) >= 1000:
                    for r in joined[:100]:
                        world.pool.set_machine_attr(r.machine, "PilotFactoryKeep", True)
                        protected.add(r.worker or "")
            super().__call__(world, factory, traces)

    m, w = run(tmp_path, Trace(tuple(burst(1000, 1200))), 1.0, watch=Protect())
    assert len(protected) == 100
    assert protected.isdisjoint(w.retired)
    assert len(w.retired) == 900 and w.live == 100 and m["jobs_evicted"] == 0


def test_1000_unmatchable_jobs_do_not_block_30000_matchable_ones(tmp_path: Path) -> None:
    big = [TraceJob(0.0, 600.0, 64, "Q") for _ in range(1000)]
    small = [TraceJob(60.0 + i % 60, 30.0 + i % 61, 1, "Q") for i in range(30000)]
    m, w = run(
        tmp_path,
        Trace(tuple(big + small)),
        1.25,
        extra="wmsstatus.condor.slot_ad = [ Cpus = 1; Memory = 2048 ]",
    )
    assert m["completed"] == 30000  # every matchable job ran; the 64-core ones never can
    assert w.max_live == 1000
    assert w.live == 0  # and once they ran, nothing is kept for the unmatchable ones


def test_vms_that_never_join_stay_within_max_booting_for_30_minutes(tmp_path: Path) -> None:
    never = whatif.WorldSettings(boot_time=120.0, never_join=1.0)
    m, w = run(
        tmp_path, Trace(tuple(burst(1000, 3600))), 0.5, extra="max_booting = 50", world=never
    )
    assert w.max_booting == 50  # it tried, and never went past the cap
    assert m["completed"] == 0 and m["vms_submitted"] >= 50
    assert m["vms_lost"] >= m["vms_submitted"] - 50  # all but the last ones still booting
