"""The worker contract's self-shutdown in the simulated world (etc/worker/README.md, item 5):
a VM whose startd has exited powers itself off ``poweroff_delay`` later and is billed no more;
a quick drain (spot notice) or a ``condor_on`` in time keeps it up.

Timeline of every case: launched at T0, running at +100, its startd joins at +105 (4 cores).
"""

from __future__ import annotations

import pytest

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.contract import TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.ports import LaunchSpec
from pilotfactory.sim.cloud import CloudConfig, SimInstance
from pilotfactory.sim.world import SimConfig, SimWorld

T0 = 1_700_000_000.0
JOIN = 105.0


def world(**cloud_kw: object) -> tuple[SimWorld, SimInstance]:
    cloud = CloudConfig(boot_delay=100, boot_jitter=0, **cloud_kw)  # type: ignore[arg-type]
    w = SimWorld(VirtualClock(T0), SimConfig(cloud=cloud))
    [iid] = w.sim_cloud.launch(LaunchSpec("img", "m1.large"), 1, {TAG_QUEUE: "q", TAG_WORKER: "w"})
    w.advance(JOIN)
    [rec] = [r for r in w.sim_cloud.instances() if r.instance_id == iid]
    assert w.pool.machines() == [rec.machine]
    return w, rec


def billed(w: SimWorld) -> float:
    return sum(w.metrics.vm_hours(w.loop.now).values()) * 3600.0


def test_a_peaceful_off_powers_the_vm_off_after_the_delay() -> None:
    w, vm = world(poweroff_delay=10.0)
    w.advance(100.0)  # +205: the master is past its first minute
    w.pool.retire_peaceful(vm.machine)
    assert w.pool.machines() == []
    w.advance(9.0)
    assert vm.state == "running"
    w.advance(1.0)
    assert vm.state == "stopping" and w.metrics.self_shutdowns == 1
    w.advance(3600.0)
    assert billed(w) == pytest.approx(215.0)  # launch -> power-off, nothing after
    assert vm.state == "terminated"
    # the listing says why, as EC2's state reason does (the factory: no failure)
    [inst] = w.sim_cloud.list({})
    assert (inst.state, inst.self_shutdown) == ("terminated", True)


def test_a_terminate_is_no_self_shutdown() -> None:
    w, vm = world(poweroff_delay=10.0)
    w.sim_cloud.terminate([str(vm.instance_id)])
    w.advance(60.0)
    [inst] = w.sim_cloud.list({})
    assert (inst.state, inst.self_shutdown) == ("terminated", False)


def test_without_the_contract_the_vm_stays_up_with_its_master() -> None:
    w, vm = world()  # poweroff_delay None: an image that ignores etc/worker
    w.advance(100.0)
    w.pool.retire_peaceful(vm.machine)
    w.advance(600.0)
    assert vm.state == "running" and w.metrics.self_shutdowns == 0
    assert [m["Machine"] for m in w.pool.query_masters({}, ["Machine"])] == [vm.machine]


def test_the_master_does_not_shut_down_in_its_first_minute() -> None:
    # MASTER.DAEMON_SHUTDOWN = (STARTD_StartTime =?= 0) && (time() - DaemonStartTime > 60)
    w, vm = world(poweroff_delay=10.0)
    w.advance(5.0)  # +110: the master joined at +105
    w.pool.retire_peaceful(vm.machine)
    w.advance(50.0)  # +160: past the delay, not past the first minute
    assert vm.state == "running"
    w.advance(4.0)  # +164
    assert vm.state == "running"
    w.advance(1.0)  # +165: the first minute ended
    assert vm.state == "stopping"
    assert billed(w) == pytest.approx(JOIN + 60.0)


def test_a_drain_powers_off_after_its_last_job_and_evicts_nothing() -> None:
    w, vm = world(poweroff_delay=10.0, default_retirement_time=86400.0)
    [jid] = w.pool.add_payload_jobs("q", [600.0])
    w.advance(5.0)  # matched at +110, ends at +710
    w.pool.drain(vm.machine, "retire")
    w.advance(590.0)  # +700
    assert w.pool.machines() == [vm.machine] and vm.state == "running"
    w.advance(15.0)  # +715: the job ended at +710, the startd exited, the VM is off at +720
    assert vm.state == "running"
    w.advance(5.0)
    assert vm.state == "stopping"
    assert w.pool.job(jid)["JobStatus"] == 4 and sum(w.metrics.payload_killed.values()) == 0
    assert billed(w) == pytest.approx(720.0)


def test_a_quick_drain_leaves_the_startd_drained_and_the_vm_up() -> None:
    # condor_drain -quick (the spot notice's vacate) has no -exit-on-completion
    w, vm = world(poweroff_delay=10.0)
    w.pool.add_payload_jobs("q", [600.0])
    w.advance(100.0)
    w.pool.vacate(vm.machine, "spot notice")
    w.advance(300.0)
    assert w.pool.machines() == [vm.machine] and vm.state == "running"


def test_condor_on_before_the_power_off_keeps_the_vm() -> None:
    w, vm = world(poweroff_delay=10.0)
    w.advance(100.0)
    w.pool.retire_peaceful(vm.machine)
    w.advance(2.0)
    w.pool.unretire(vm.machine)  # the master starts the startd again
    w.advance(60.0)
    assert vm.state == "running" and w.pool.machines() == [vm.machine]
    assert w.metrics.self_shutdowns == 0


def test_noclaim_shutdown_ends_an_unclaimed_vm_and_a_job_restarts_the_count() -> None:
    w, vm = world(poweroff_delay=10.0, noclaim_shutdown=300.0)
    w.advance(200.0)  # +305
    [jid] = w.pool.add_payload_jobs("q", [100.0])
    w.advance(5.0)  # matched at +310 (unclaimed 205 s), done at +410
    w.advance(500.0)  # +810: unclaimed since +410, for 400 s > 300
    assert w.pool.job(jid)["JobStatus"] == 4
    assert vm.state == "terminated" and w.metrics.self_shutdowns == 1
    assert billed(w) == pytest.approx(410.0 + 300.0 + 10.0)


def test_noclaim_shutdown_without_the_power_off_leaves_a_vm_without_condor() -> None:
    w, vm = world(noclaim_shutdown=300.0)
    w.advance(400.0)
    assert vm.state == "running" and w.pool.machines() == []
    assert w.pool.query_masters({}, ["Machine"]) == []


# ------------------------------------------------------------------ the terminate's latency


@pytest.mark.parametrize(("latency", "evicted"), [(2.0, 1), (0.0, 0)])
def test_a_job_matched_before_the_terminate_lands_is_evicted(latency: float, evicted: int) -> None:
    # The caller read the VM idle and terminates at +204; a job queued then is matched by the
    # negotiator at +205, and the terminate landing at +206 kills it. Without latency the VM
    # is gone before the negotiator runs.
    w, vm = world(api_latency=latency)
    w.advance(99.0)  # +204
    [jid] = w.pool.add_payload_jobs("q", [600.0])
    w.sim_cloud.terminate([str(vm.instance_id)])
    assert (vm.state == "running") is (latency > 0)
    w.advance(5.0)  # +209
    assert vm.state in ("stopping", "terminated")
    assert sum(w.metrics.payload_killed.values()) == evicted
    assert w.pool.job(jid)["JobStatus"] == 1  # idle again (or never started)
    assert w.pool.job(jid).get("NumJobStarts", 0) == evicted
