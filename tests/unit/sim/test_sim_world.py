"""The world as a whole: determinism, time order, workloads, metrics, scale."""

from __future__ import annotations

import time

import pytest

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.contract import TAG_QUEUE
from pilotfactory.factory.ports import LaunchSpec, World
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.metrics import SimMetrics, percentile
from pilotfactory.sim.pool import PoolConfig
from pilotfactory.sim.workload import PRESETS, Burst, Workload, preset
from pilotfactory.sim.world import SimConfig, SimWorld

T0 = 1_700_000_000.0


def run(seed: int, tick: float = 60.0, until: float = 4 * 3600) -> SimWorld:
    """A small elastic scenario driven by hand: 20 VMs, then half of them retired."""
    cfg = SimConfig(
        seed=seed,
        pool=PoolConfig(static_nodes=1),
        cloud=CloudConfig(default_retirement_time=3600, spot_pending_probability=0.3),
        workload=preset("burst", label="elastic", scale=0.2, seed=seed),
    )
    w = SimWorld(VirtualClock(T0), cfg)
    w.sim_cloud.launch(LaunchSpec("ami", "m1.large", spot_price=0.1), 20, {TAG_QUEUE: "vmq"})
    retired = False
    while w.loop.now < T0 + until:
        w.advance(tick)
        if not retired and w.loop.now >= T0 + 3600:
            for machine in [m for m in w.pool.machines() if m.startswith("vm")][:10]:
                w.pool.drain(machine, "pilotfactory")
            retired = True
    return w


def test_world_satisfies_the_protocol() -> None:
    w: World = SimWorld(VirtualClock())
    assert w is not None


def test_same_seed_same_world() -> None:
    a, b = run(7), run(7)
    assert a.metrics.snapshots == b.metrics.snapshots
    assert a.summary() == b.summary()
    assert [i.id for i in a.sim_cloud.list({})] == [i.id for i in b.sim_cloud.list({})]
    c = run(8)
    assert [i.id for i in a.sim_cloud.list({})] != [i.id for i in c.sim_cloud.list({})]


def test_results_do_not_depend_on_how_often_the_world_ticks() -> None:
    fine, coarse = run(3, tick=5.0), run(3, tick=300.0)
    assert fine.summary()["payload_completed"] == coarse.summary()["payload_completed"]
    assert fine.metrics.vm_hours(fine.loop.now) == coarse.metrics.vm_hours(coarse.loop.now)
    assert fine.metrics.waits == coarse.metrics.waits


def test_burst_preset_arrives_over_the_first_hour_then_stops() -> None:
    w = SimWorld(VirtualClock(T0), SimConfig(workload=preset("burst", label="elastic")))
    w.advance(1800)
    half = w.snapshot().jobs_idle
    assert 150 < half < 250
    w.advance(1800)
    assert w.snapshot().jobs_idle == 400
    w.advance(7200)
    assert w.snapshot().jobs_idle == 400  # nothing runs without workers, nothing new arrives


@pytest.mark.parametrize("name", PRESETS)
def test_presets_install(name: str) -> None:
    wl = preset(name, label="L", site="S", scale=0.5)
    w = SimWorld(VirtualClock(T0), SimConfig(workload=wl))
    w.advance(10 * 3600)
    s = w.snapshot()
    assert s.jobs_idle + s.panda_activated == wl.total_jobs


def test_custom_workload_mixes_pool_and_panda_jobs() -> None:
    wl = Workload(
        (
            Burst(100, 3, label="L", duration=(10, 20)),
            Burst(200, 2, site="S", duration=(10, 20)),
        )
    )
    w = SimWorld(VirtualClock(T0), SimConfig(workload=wl))
    w.advance(150)
    assert w.snapshot().jobs_idle == 3 and w.snapshot().panda_activated == 0
    w.advance(100)
    assert w.snapshot().panda_activated == 2
    with pytest.raises(ValueError):
        Burst(0, 1)
    with pytest.raises(ValueError):
        preset("nope")


def test_metrics_track_cost_work_and_waits() -> None:
    w = run(1)
    s = w.summary()
    assert s["instances_launched"] == 20
    assert s["payload_completed"] == 80
    assert s["payload_killed"] == 0  # drained with a long retirement time: nothing killed
    waits = w.metrics.wait_stats("elastic")
    assert waits["count"] == 80 and waits["mean"] >= 0 and waits["p95"] >= 0
    assert s["vm_hours_by_queue"]["vmq"] > 0
    assert len(w.metrics.snapshots) == 4 * 60
    last = w.metrics.snapshots[-1]
    assert last.startds == 11 and last.instances_running == 20
    assert last.instances_by_queue == {"vmq": 20}


def test_percentile_and_empty_stats() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    m = SimMetrics()
    assert m.wait_stats() == {"count": 0.0, "mean": 0.0, "p95": 0.0}
    m.vm_stop("i-unknown", 10.0)  # never started: ignored
    assert m.vm_hours(10.0) == {}


def test_ten_thousand_jobs_and_five_hundred_vms_tick_quickly() -> None:
    w = SimWorld(VirtualClock(T0), SimConfig(cloud=CloudConfig(default_retirement_time=3600)))
    w.pool.add_payload_jobs("q", [600 + (i % 50) * 60 for i in range(10_000)])
    w.sim_cloud.launch(LaunchSpec("ami", "m1.large"), 500, {TAG_QUEUE: "q"})
    start = time.perf_counter()
    for _ in range(120):
        w.advance(60)
        w.pool.query_jobs({"MATCH_APF_QUEUE": "q"}, ["ClusterId", "ProcId", "JobStatus"])
        w.pool.query_startds({}, ["Name", "Machine", "State", "Activity", "Cpus"])
    elapsed = time.perf_counter() - start
    snap = w.snapshot()
    assert snap.startds == 500 and snap.cpus_busy == 2000
    assert elapsed < 10.0, f"120 cycles took {elapsed:.1f}s"
