"""The whole factory against the simulated world: behaviour over hours, in milliseconds.

Each scenario is a regression guard for a failure users of elastic scalers reported
(elastic-lessons.md): killed payloads, buying capacity twice, never-joining VMs, stale ads.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.trace import CycleTrace
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.pool import PoolConfig
from pilotfactory.sim.runner import START, _dummy_secrets, simulate
from pilotfactory.sim.workload import Burst, Workload, preset
from pilotfactory.sim.world import SimConfig, SimWorld

VMQ = """
[DEFAULT]
apfqueue.sleep = 60
boot_timeout = 600
held_timeout = 600
retire_confirm_cycles = 2

[VMS]
wmsstatusplugin = Condor
wmsqueue = LABEL
batchstatusplugin = CondorEC2
batchsubmitplugin = CondorEC2
schedplugin = {chain}
sched.jobspervm.jobs = 4
sched.idleshutdown.idle_time = 300
sched.maxvms.maximum = 30
sched.maxpercycle.maximum = 10
retire_mode = drain
batchsubmit.condorec2.gridresource = https://ec2.us-east-1.example.test/
batchsubmit.condorec2.ami_id = {ami}
batchsubmit.condorec2.instance_type = m5.xlarge
batchsubmit.condorec2.access_key_id = /nonexistent/access
batchsubmit.condorec2.secret_access_key = /nonexistent/secret
{extra}
"""
ELASTIC = "JobsPerVM, IdleShutdown, MaxPerCycle, MaxVMs"


def queues(tmp_path: Path, chain: str = ELASTIC, ami: str = "ami-good", extra: str = "") -> list:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(VMQ.format(chain=chain, ami=ami, extra=extra)))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return _dummy_secrets(res.queues, str(tmp_path))


def fcfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    return replace(
        default_factory_config(),
        factory_id="scenario",
        sleep=60.0,
        raw={"baseLogDir": str(tmp_path / "logs")},
    )


def world_and_factory(
    tmp_path: Path, qs: list, workload: Workload | None = None, **cloud: object
) -> tuple[SimWorld, Factory, VirtualClock]:
    clock = VirtualClock(START)
    cc = CloudConfig(default_retirement_time=86400.0, **cloud)  # type: ignore[arg-type]
    world = SimWorld(clock, SimConfig(seed=3, pool=PoolConfig(), cloud=cc, workload=workload))
    return world, Factory(fcfg(tmp_path), qs, world, clock), clock


def run(world: SimWorld, factory: Factory, clock: VirtualClock, minutes: int) -> list[CycleTrace]:
    traces: list[CycleTrace] = []
    for _ in range(minutes):
        world.tick()
        traces += factory.cycle()
        clock.sleep(60)
    world.tick()
    return traces


def test_elastic_queue_grows_with_idle_jobs_and_shrinks_after(tmp_path: Path) -> None:
    summary = simulate(fcfg(tmp_path), queues(tmp_path), 5.0, 2, "burst", verbose=False)
    q = summary["queues"]["VMS"]
    w = summary["world"]
    assert q["peak_workers"] >= 10
    assert q["final_workers"] == 0
    assert q["retired"] >= q["peak_workers"] - 1
    assert w["payload_completed"] == summary["jobs"] == 400
    assert w["payload_killed"] == 0  # scale-down never killed a running job


def test_constant_demand_converges_without_flapping(tmp_path: Path) -> None:
    qs = queues(tmp_path)
    wl = Workload((Burst(0.0, 16, label="LABEL", duration=(40_000.0, 40_000.0)),))
    world, factory, clock = world_and_factory(tmp_path, qs, wl)
    traces = run(world, factory, clock, 120)
    late = [t for t in traces if t.time > START + 1800]
    assert all(t.n == 0 for t in late), [t.n for t in late if t.n]
    assert world.metrics.instances_launched.total() == 4  # 16 jobs / 4 slots, bought once


def test_unretire_busy_vms_instead_of_buying_new_ones(tmp_path: Path) -> None:
    qs = queues(tmp_path, chain="Fixed")
    wl = Workload((Burst(0.0, 8, label="LABEL", duration=(20_000.0, 20_000.0)),))
    world, factory, clock = world_and_factory(tmp_path, qs, wl)
    queue = factory.queues["VMS"]
    fixed = queue.sched[0]
    fixed.params = {"pilotspercycle": 2}
    run(world, factory, clock, 1)
    fixed.params = {"pilotspercycle": 0}
    run(world, factory, clock, 10)
    info = queue.batch_source.info("VMS")
    assert info is not None and info.count(WorkerState.BUSY) == 2
    fixed.params = {"pilotspercycle": -2}
    run(world, factory, clock, 3)  # two candidates cycles, then retire (drain: jobs go on)
    info = queue.batch_source.info("VMS")
    assert info is not None and info.count(WorkerState.RETIRING) == 2
    fixed.params = {"pilotspercycle": 2}
    traces = run(world, factory, clock, 1)
    assert [a.kind.value for a in traces[-1].planned] == ["unretire"]
    fixed.params = {"pilotspercycle": 0}
    run(world, factory, clock, 5)
    info = queue.batch_source.info("VMS")
    assert info is not None and info.count(WorkerState.BUSY) == 2
    assert world.metrics.instances_launched.total() == 2
    assert sum(world.metrics.payload_killed.values()) == 0


def test_collector_losing_ads_freezes_reaping(tmp_path: Path) -> None:
    qs = queues(tmp_path, chain="Fixed")
    wl = Workload((Burst(0.0, 24, label="LABEL", duration=(20_000.0, 20_000.0)),))
    world, factory, clock = world_and_factory(tmp_path, qs, wl)
    queue = factory.queues["VMS"]
    queue.sched[0].params = {"pilotspercycle": 6}
    run(world, factory, clock, 1)
    queue.sched[0].params = {"pilotspercycle": 0}
    run(world, factory, clock, 10)
    queue.sched[0].params = {"pilotspercycle": -6}
    run(world, factory, clock, 3)
    info = queue.batch_source.info("VMS")
    assert info is not None and info.count(WorkerState.RETIRING) == 6
    queue.sched[0].params = {"pilotspercycle": 0}
    world.pool.collector_drop_fraction = 1.0  # the collector answers, but with no ads
    traces = run(world, factory, clock, 2)
    assert all(not t.planned for t in traces), [t.decision() for t in traces]
    assert any("suspect a partial collector answer" in n for t in traces for n in t.notes)
    world.pool.collector_drop_fraction = 0.0
    run(world, factory, clock, 3)
    assert sum(world.metrics.payload_killed.values()) == 0
    info = queue.batch_source.info("VMS")
    assert info is not None and info.count(WorkerState.RETIRING) == 6


def test_vms_that_never_join_are_reaped_and_the_queue_backs_off(tmp_path: Path) -> None:
    qs = queues(
        tmp_path,
        ami="ami-broken",
        extra="failure_limit = 4\nmax_booting = 4\nbackoff.initial = 600",
    )
    wl = Workload((Burst(0.0, 200, label="LABEL", duration=(600.0, 600.0)),))
    world, factory, clock = world_and_factory(tmp_path, qs, wl, broken_images=("ami-broken",))
    traces = run(world, factory, clock, 90)
    launched = world.metrics.instances_launched.total()
    assert launched <= 12, launched  # bounded by max_booting and the failure back-off
    assert any("lost: never joined" in a.reason for t in traces for a in t.planned)
    assert any("last 4 workers all failed" in n for t in traces for n in t.notes)
    assert factory.queues["VMS"].backoff.failure_delay == 1800  # 600, 1200, then backoff.max


def test_held_vm_jobs_are_reaped_after_held_timeout(tmp_path: Path) -> None:
    qs = queues(tmp_path, extra="failure_limit = 3")
    wl = Workload((Burst(0.0, 12, label="LABEL", duration=(600.0, 600.0)),))
    world, factory, clock = world_and_factory(tmp_path, qs, wl)
    world.pool.held_fraction = 1.0
    traces = run(world, factory, clock, 40)
    reaps = [a for t in traces for a in t.planned if a.kind.value == "reap" and a.failure]
    assert reaps and "Create_Instance_Failed" in reaps[0].reason
    assert any("backing off" in n for t in traces for n in t.notes)


def test_schedd_down_fails_closed_then_recovers(tmp_path: Path) -> None:
    qs = queues(tmp_path)
    wl = preset("spike", label="LABEL", scale=0.05)
    world, factory, clock = world_and_factory(tmp_path, qs, wl)
    world.pool.schedd_down = True
    traces = run(world, factory, clock, 5)
    assert all(not t.planned for t in traces)
    assert all(any("fail closed" in n for n in t.notes) for t in traces)
    world.pool.schedd_down = False
    traces = run(world, factory, clock, 2)
    assert any(a.kind.value == "submit" for t in traces for a in t.planned)


@pytest.mark.parametrize("status", ["offline", "online"])
def test_panda_pilot_queue_follows_site_status(tmp_path: Path, status: str) -> None:
    conf = tmp_path / "queues.conf"
    conf.write_text(
        textwrap.dedent(
            """
            [SITE]
            wmsstatusplugin = Panda
            wmsqueue = SITE
            batchstatusplugin = Condor
            batchsubmitplugin = CondorLocal
            batchsubmit.condorlocal.executable = /bin/true
            schedplugin = Activated
            sched.activated.max_pilots_per_cycle = 10
            apfqueue.sleep = 60
            wmsstatus.panda.sitestatus_url = http://sim.invalid/queues.json
            """
        )
    )
    qs = load_queues([str(conf)]).queues
    wl = preset("panda", site="SITE", scale=0.2)
    clock = VirtualClock(START)
    world = SimWorld(
        clock,
        SimConfig(seed=1, pool=PoolConfig(static_nodes=4), sites={"SITE": status}, workload=wl),
    )
    factory = Factory(fcfg(tmp_path), qs, world, clock)
    traces = run(world, factory, clock, 30)
    submitted = factory.queues["SITE"].counters["submitted"]
    if status == "offline":
        assert submitted == 0
        assert all(t.n == 0 for t in traces)
    else:
        assert submitted >= 10
        assert sum(world.metrics.payload_completed.values()) > 0
