"""The ECM / elastiq example queue, unchanged, against the simulated pool and cloud.

The factory launches the VMs itself (SimCloud as the CloudPort); their startds join the pool
advertising PilotFactoryWorker. What ECM users were promised is checked tick by tick.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.trace import CycleTrace
from pilotfactory.sim.runner import simulate
from pilotfactory.sim.workload import Burst, Workload
from pilotfactory.sim.world import SimWorld

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "etc" / "examples" / "ecm-elastiq-queues.conf"
MAX_VMS, MIN_VMS, IDLE_TIME = 3, 1, 2400
JOINED = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.RETIRING)


def ecm_queue(tmp_path: Path, variant: str) -> list:
    """The example file, with the chosen variant enabled and the other one off."""
    text = EXAMPLE.read_text().replace("enabled = False", "enabled = True")
    conf = tmp_path / "queues.conf"
    conf.write_text(text)
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return [q for q in res.queues if q.name == variant]


@pytest.mark.parametrize("variant", ["ECM-openstack", "ECM-ec2"])
def test_ecm_example_grows_to_max_keeps_min_and_shrinks_back(tmp_path: Path, variant: str) -> None:
    queues = ecm_queue(tmp_path, variant)
    fcfg = replace(
        default_factory_config(), factory_id="ecm", raw={"baseLogDir": str(tmp_path / "logs")}
    )
    burst = Workload((Burst(0.0, 40, label="ECM", duration=(1200.0, 2400.0), spread=600.0),))
    seen = {"joined": False, "max": 0}
    problems: list[str] = []
    retired: list[tuple[float, str, float]] = []
    final: list[tuple[SimWorld, Factory]] = []

    def observe(world: SimWorld, factory: Factory, traces: list[CycleTrace]) -> None:
        now = world.clock.now()
        live = world.sim_cloud.census().by_queue.get(variant, 0)
        seen["max"] = max(seen["max"], live)
        info = factory.queues[variant].batch_source.info(variant)
        assert info is not None
        staying = info.count(WorkerState.IDLE, WorkerState.BUSY)
        if live > MAX_VMS:
            problems.append(f"{now}: {live} VMs > MAX_VMS")
        if seen["joined"] and (live < MIN_VMS or staying < MIN_VMS):
            problems.append(f"{now}: {live} VMs, {staying} staying < MIN_VMS")
        seen["joined"] = seen["joined"] or any(w.state in JOINED for w in info.workers)
        for t in traces:
            problems.extend(f"{now}: {r}" for r in t.results if "failed" in r)
            problems.extend(f"{now}: {n}" for n in t.notes if "match no worker" in n)
            for a in t.planned:
                if a.kind.value == "retire":
                    retired.extend((t.time - w.since, w.state.value, t.time) for w in a.workers)
        final[:] = [(world, factory)]

    summary = simulate(fcfg, queues, 5.0, 7, burst, verbose=False, observe=observe)
    assert problems == []
    q, w = summary["queues"][variant], summary["world"]
    assert seen["max"] == MAX_VMS == q["peak_workers"]
    assert w["payload_completed"] == 40 and w["payload_killed"] == 0
    # Shrank back to MIN_VMS, retiring only VMs idle for IDLE_TIME.
    assert q["final_workers"] == MIN_VMS
    assert len(retired) == MAX_VMS - MIN_VMS
    assert all(state == "idle" and idle >= IDLE_TIME for idle, state, _ in retired), retired
    # No leaks: every instance the queue launched is alive and known, or terminated.
    world, factory = final[0]
    info = factory.queues[variant].batch_source.info(variant)
    assert info is not None
    known = {wk.id for wk in info.workers}
    mine = [r for r in world.sim_cloud.instances() if r.tags.get(TAG_QUEUE) == variant]
    alive = [r for r in mine if r.state in ("pending", "running")]
    assert all(r.tags[TAG_WORKER] in known for r in alive)
    assert len(alive) == MIN_VMS
    assert w["instances_launched"] == q["submitted"] == MAX_VMS
    assert w["instances_terminated"] == w["instances_launched"] - len(alive)


def test_ecm_vm_that_never_joins_is_replaced_after_deploy_time(tmp_path: Path) -> None:
    """ESTIMATED_VM_DEPLOY_TIME=600: a VM whose startd never joins is terminated and replaced,
    never kept (a leak) and never counted as a worker once gone."""
    queues = ecm_queue(tmp_path, "ECM-openstack")
    fcfg = replace(default_factory_config(), factory_id="ecm", raw={"baseLogDir": str(tmp_path)})
    ages: list[float] = []

    def observe(world: SimWorld, factory: Factory, traces: list[CycleTrace]) -> None:
        world.sim_cloud.config.broken_images = ("ECM-worker-image",)
        now = world.clock.now()
        ages.extend(
            now - r.launched_at for r in world.sim_cloud.instances() if r.state == "running"
        )

    summary = simulate(fcfg, queues, 2.0, 7, Workload(()), verbose=False, observe=observe)
    q, w = summary["queues"]["ECM-openstack"], summary["world"]
    assert q["reaped"] >= 2 and w["instances_launched"] == q["submitted"] >= 3
    assert max(ages) <= 600 + 2 * 60  # boot_timeout plus the cycle that reaps it
    assert w["instances_launched"] - w["instances_terminated"] <= 1  # MIN_VMS, never more
