"""The worker VM contract (issue 18), factory side, on the simulated pool and cloud: a spot
notice (vacated, replaced within one cycle, never a failure), a template change rolling the
pool (zero evictions, supply never below the target), leases renewed in one write and
advertised in one ad per queue, and no VM outliving its lease once the factory stops."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import TAG_FINGERPRINT, TAG_INTERRUPTED, TAG_LEASE, TAG_QUEUE
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.planner import ActionKind
from pilotfactory.factory.trace import CycleTrace
from pilotfactory.plugins.sweep import sweep_all
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.pool import PoolConfig
from pilotfactory.sim.world import SimConfig, SimWorld

Q = "POOL"
TARGET = 6
STEP = 60.0
QUEUES = """
[{q}]
wmsstatusplugin = Condor
wmsqueue = {q}
batchstatusplugin = EC2
batchsubmitplugin = EC2
schedplugin = JobsPerVM, MinVMs, MaxVMs
sched.jobspervm.jobs = 1
sched.minvms.minimum = {n}
sched.maxvms.maximum = {n}
apfqueue.sleep = 60
retire_confirm_cycles = 2
max_retire_per_cycle = 2
batchsubmit.ec2.image = {image}
batchsubmit.ec2.flavor = m1.small
batchsubmit.ec2.lease = 1800
batchsubmit.ec2.lease_grace = 300
"""


def queues(tmp_path: Path, image: str = "img-v1", n: int = TARGET) -> list:
    conf = tmp_path / f"queues-{image}.conf"
    conf.write_text(QUEUES.format(q=Q, n=n, image=image))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return res.queues


def world_and_factory(tmp_path: Path, notice: float = 0.0) -> tuple[SimWorld, Factory]:
    clock = VirtualClock()
    world = SimWorld(
        clock,
        SimConfig(
            seed=3,
            pool=PoolConfig(static_nodes=0),
            cloud=CloudConfig(default_retirement_time=86400.0, interruption_notice=notice),
        ),
    )
    fcfg = replace(default_factory_config(), factory_id="lease", raw={"baseLogDir": str(tmp_path)})
    return world, Factory(fcfg, queues(tmp_path), world, clock)


def run(world: SimWorld, factory: Factory, seconds: float, seen: list[CycleTrace]) -> None:
    end = world.clock.now() + seconds
    while world.clock.now() < end:
        world.tick()
        seen.extend(factory.cycle())
        world.advance(STEP)


def staying(factory: Factory) -> int:
    info = factory.queues[Q].batch_source.info(Q)
    assert info is not None
    return info.count(WorkerState.IDLE, WorkerState.BUSY)


def test_spot_notice_vacates_and_replaces_within_one_cycle_never_a_failure(
    tmp_path: Path,
) -> None:
    world, factory = world_and_factory(tmp_path, notice=120.0)
    world.pool.add_payload_jobs(Q, [20_000.0] * 12)  # more work than VMs: all stay busy
    traces: list[CycleTrace] = []
    run(world, factory, 900, traces)
    assert staying(factory) == TARGET
    victim = next(r for r in world.sim_cloud.instances() if r.state == "running")
    world.sim_cloud.interrupt(victim, after=120.0)  # the notice is on its startd at once
    traces.clear()
    world.advance(5.0)
    (t,) = factory.cycle(force=True)  # the next cycle
    kinds = {a.kind: a for a in t.planned}
    # the same cycle: vacated, and its replacement bought (it is no supply any more)
    assert [w.instance_id for w in kinds[ActionKind.VACATE].workers] == [victim.instance_id]
    assert kinds[ActionKind.SUBMIT].count == 1
    assert "vacated 1 (spot interruption)" in t.results
    assert victim.tags.get(TAG_INTERRUPTED)
    # the payload went back to the queue at once (not at the provider's kill)
    assert (
        world.metrics.payload_interrupted[Q] == 1
        and sum(world.metrics.payload_killed.values()) == 0
    )
    world.advance(STEP)
    run(world, factory, 1800, traces)
    assert victim.state == "terminated"  # the provider ended it
    q = factory.queues[Q]
    assert all(not failure for failure, _ in q.backoff.endings)  # no failure counted
    for tr in traces:
        assert not any(a.failure for a in tr.planned), tr.planned
        assert not any(w.state is WorkerState.LOST for w in (tr.batch.workers if tr.batch else ()))
    assert staying(factory) == TARGET
    assert q.counters["vacated"] == 1 and q.counters["submitted"] == TARGET + 1


def test_a_new_image_rolls_the_pool_with_zero_evictions_and_supply_kept(tmp_path: Path) -> None:
    world, factory = world_and_factory(tmp_path)
    world.pool.add_payload_jobs(Q, [3000.0] * 60)  # long jobs, more than the VMs take
    traces: list[CycleTrace] = []
    run(world, factory, 900, traces)
    assert staying(factory) == TARGET
    old = factory.queues[Q].submitter.fingerprint()
    assert factory.reload(queues(tmp_path, image="img-v2"))
    new = factory.queues[Q].submitter.fingerprint()
    assert new != old
    low, peak = [], 0
    traces.clear()
    end = world.clock.now() + 4 * 3600
    while world.clock.now() < end:
        world.tick()
        traces.extend(factory.cycle())
        low.append(staying(factory))
        peak = max(peak, world.sim_cloud.census().by_queue.get(Q, 0))
        world.advance(STEP)
    live = [r for r in world.sim_cloud.instances() if r.state in ("pending", "running")]
    assert len(live) == TARGET
    assert all(r.spec.image == "img-v2" and r.tags[TAG_FINGERPRINT] == new for r in live)
    assert min(low) >= TARGET, low  # joined, staying VMs never below what the chain wants
    # the surge buys at most the budget a cycle; a drained VM stays until its job ends, so
    # with jobs longer than the roll the pool peaks at twice its size, never more
    assert peak <= 2 * TARGET
    buys = [a.count for t in traces for a in t.planned if a.kind is ActionKind.SUBMIT]
    assert max(buys) <= 2
    assert sum(world.metrics.payload_killed.values()) == 0  # zero evictions
    retires = [a for t in traces for a in t.planned if a.kind is ActionKind.RETIRE]
    assert retires and all("drift" in a.reason for a in retires)
    assert max(len(a.workers) for a in retires) <= 2  # the disruption budget
    assert not any(a.failure for t in traces for a in t.planned)


def test_leases_renewed_in_one_write_and_advertised_then_swept_when_the_factory_stops(
    tmp_path: Path,
) -> None:
    world, factory = world_and_factory(tmp_path)
    world.pool.add_payload_jobs(Q, [100_000.0] * 12)
    traces: list[CycleTrace] = []
    run(world, factory, 3 * 3600, traces)  # twelve half-leases
    ad = world.pool.generic_ads[f"lease/{Q}"]
    assert ad["MyType"] == "PilotFactoryLease" and ad["PilotFactoryLeaseUntil"] > world.clock.now()
    assert world.metrics.queries["advertise"] == len(traces)  # one per cycle, never per VM
    renewals = [r for t in traces for r in t.results if r.startswith("renewed")]
    # one write per half lease (and a cycle) for the whole queue: not per VM, not per cycle
    assert 10 <= len(renewals) <= 12 < len(traces) / 10, renewals
    assert world.metrics.queries["cloud_set_tags"] == len(renewals)
    now = world.clock.now()
    mine = [r for r in world.sim_cloud.instances() if r.tags.get(TAG_QUEUE) == Q]
    assert all(float(r.tags[TAG_LEASE]) > now for r in mine if r.state == "running")
    # the factory stops; an hour later sweep (no daemon) finds every lease passed + grace
    world.advance(1800 + 300 + 60)
    results = sweep_all([q.cfg for q in factory.queues.values()], world, "lease", world.clock.now())
    assert [len(r.terminated) for r in results] == [TARGET]
    assert all(r.state != "running" for r in world.sim_cloud.instances())


def test_one_advertise_per_collector_per_cycle_for_all_its_queues(tmp_path: Path) -> None:
    clock = VirtualClock()
    world = SimWorld(clock, SimConfig(seed=1, pool=PoolConfig(static_nodes=0)))
    text = "".join(
        QUEUES.format(q=name, n=1, image="img") + f"batchsubmit.ec2.collectorhost = {cm}\n"
        for name, cm in (("A", "cm1"), ("B", "cm1"), ("C", "cm2"))
    )
    conf = tmp_path / "queues.conf"
    no_lease = QUEUES.format(q="D", n=1, image="img").replace("batchsubmit.ec2.lease = 1800\n", "")
    conf.write_text(text + no_lease)
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    fcfg = replace(default_factory_config(), factory_id="lease", raw={"baseLogDir": str(tmp_path)})
    factory = Factory(fcfg, res.queues, world, clock)
    calls: list[list[str]] = []
    real = world.pool.advertise

    def advertise(ads: list[dict[str, object]]) -> None:
        calls.append([str(a["Name"]) for a in ads])
        real(ads)

    world.pool.advertise = advertise  # type: ignore[method-assign,assignment]
    for _ in range(3):
        world.tick()
        factory.cycle()
        world.advance(STEP)
    # per cycle: cm1 gets A and B in one call, cm2 gets C; D has no lease and no ad
    assert sorted(map(sorted, calls)) == sorted([["lease/A", "lease/B"], ["lease/C"]] * 3)


def test_max_lifetime_retires_staggered_peacefully(tmp_path: Path) -> None:
    """max_lifetime with its stagger: the pool launched at once is not retired at once; each
    VM past its deadline is retired (drained, its job finishes: zero evictions) and replaced."""
    clock = VirtualClock()
    world = SimWorld(
        clock,
        SimConfig(
            seed=5,
            pool=PoolConfig(static_nodes=0),
            cloud=CloudConfig(default_retirement_time=86400.0),
        ),
    )
    conf = tmp_path / "queues.conf"
    conf.write_text(
        QUEUES.format(q=Q, n=TARGET, image="img").replace(
            "max_retire_per_cycle = 2", "max_retire_per_cycle = 6"
        )
        + "batchsubmit.ec2.max_lifetime = 3600\nbatchsubmit.ec2.lifetime_stagger = 0.5\n"
    )
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    fcfg = replace(default_factory_config(), factory_id="life", raw={"baseLogDir": str(tmp_path)})
    factory = Factory(fcfg, res.queues, world, clock)
    world.pool.add_payload_jobs(Q, [600.0] * 200)
    traces: list[CycleTrace] = []
    run(world, factory, 3 * 3600, traces)
    lifetime = [(t.time, a) for t in traces for a in t.planned if a.reason.startswith("lifetime")]
    # the six launched together retire over several cycles (the budget would allow one)
    retired = sorted(((t, wk) for t, a in lifetime for wk in a.workers), key=lambda x: x[0])
    assert len(retired) >= TARGET
    assert len({t for t, _ in retired[:TARGET]}) >= 3
    assert all(a.mode is not None and a.mode.value == "drain" for _, a in lifetime)
    assert sum(world.metrics.payload_killed.values()) == 0
    for t, wk in retired:
        assert wk.deadline is not None and t >= wk.deadline
        assert wk.submitted_at is not None and wk.deadline - wk.submitted_at <= 3600 + 1
    # each one replaced by the chain (lifetime buys no surge: a replacement boots after)
    info = factory.queues[Q].batch_source.info(Q)
    assert info is not None
    S_ = WorkerState
    assert info.count(S_.PENDING, S_.BOOTING, S_.IDLE, S_.BUSY) == TARGET


def test_condorec2_spot_notice_vacated_and_replaced_never_a_failure(tmp_path: Path) -> None:
    """The grid-universe path: the notice on the VM's slots, the record in its job ad, the
    gridmanager's job ending when the provider ends the instance: no failure, one replacement."""
    from pilotfactory.sim.workload import Burst, Workload
    from tests.unit.sim.test_scenarios import queues as grid_queues
    from tests.unit.sim.test_scenarios import run as grid_run
    from tests.unit.sim.test_scenarios import world_and_factory as grid_world

    qs = grid_queues(tmp_path, chain="JobsPerVM, MaxVMs")
    wl = Workload((Burst(0.0, 16, label="LABEL", duration=(40_000.0, 40_000.0)),))
    world, factory, clock = grid_world(tmp_path, qs, wl, interruption_notice=120.0)
    grid_run(world, factory, clock, 30)
    assert world.metrics.instances_launched.total() == 4
    victim = next(r for r in world.sim_cloud.instances() if r.state == "running")
    world.sim_cloud.interrupt(victim, after=120.0)
    clock.sleep(5)
    world.tick()
    (t,) = factory.cycle(force=True)
    (vacate,) = [a for a in t.planned if a.kind is ActionKind.VACATE]
    assert [w.instance_id for w in vacate.workers] == [victim.instance_id]
    assert "vacated 1 (spot interruption)" in t.results
    job = world.pool.job(victim.owner_job or "")
    assert job is not None and job.get("PilotFactoryInterruptedAt")
    assert job.get("PilotFactoryFingerprint") == factory.queues["VMS"].submitter.fingerprint()
    traces = [t, *grid_run(world, factory, clock, 30)]
    assert sum(a.count for tr in traces for a in tr.planned if a.kind is ActionKind.SUBMIT) == 1
    assert not any(a.failure for tr in traces for a in tr.planned)
    assert all(not failure for failure, _ in factory.queues["VMS"].backoff.endings)
    assert world.metrics.instances_launched.total() == 5
    assert sum(world.metrics.payload_killed.values()) == 0


def test_vms_that_power_themselves_off_are_replaced_never_a_failure(tmp_path: Path) -> None:
    """STARTD_NOCLAIM_SHUTDOWN with no payload: each VM powers itself off (etc/worker item 5)
    and the factory buys another. That end is the contract's, no failure: the failure window
    ("the last 5 workers all failed") never stops the queue, and nothing is LOST."""
    clock = VirtualClock()
    cloud = CloudConfig(default_retirement_time=86400.0, poweroff_delay=10.0,
                        noclaim_shutdown=600.0)  # fmt: skip
    world = SimWorld(clock, SimConfig(seed=3, pool=PoolConfig(static_nodes=0), cloud=cloud))
    fcfg = replace(default_factory_config(), factory_id="off", raw={"baseLogDir": str(tmp_path)})
    factory = Factory(fcfg, queues(tmp_path), world, clock)
    traces: list[CycleTrace] = []
    run(world, factory, 3 * 3600, traces)
    q = factory.queues[Q]
    assert world.metrics.self_shutdowns >= 3 * TARGET  # each VM lives ~12 minutes
    assert all(not failure for failure, _ in q.backoff.endings)
    for tr in traces:
        assert not any(a.failure for a in tr.planned), tr.planned
        assert not any(w.state is WorkerState.LOST for w in (tr.batch.workers if tr.batch else ()))
    # every VM that powered itself off was replaced, and none ended any other way
    assert q.counters["submitted"] == TARGET + world.metrics.self_shutdowns
    live = [r for r in world.sim_cloud.instances() if r.state in ("pending", "running")]
    assert len(live) == TARGET
