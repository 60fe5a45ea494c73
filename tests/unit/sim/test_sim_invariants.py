"""Random operation sequences never break the pool's bookkeeping (indexes agree with ads)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.ports import CondorRejected, LaunchSpec
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.pool import RUNNING, PoolConfig
from pilotfactory.sim.world import SimConfig, SimWorld

VM = {
    "universe": "grid",
    "grid_resource": "ec2 http://ec2.us-east-1.sim/",
    "executable": "vmq",
    "ec2_access_key_id": "a",
    "ec2_secret_access_key": "s",
    "ec2_ami_id": "ami",
    "ec2_instance_type": "m1.medium",
    "+PilotFactoryId": '"f1"',
}
PILOT = {"executable": "pilot", "+PilotFactoryId": '"f1"', "+MATCH_APF_QUEUE": '"S"'}

ops = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "payload",
                "pilot",
                "vm",
                "launch",
                "remove",
                "retire",
                "unretire",
                "drain",
                "cancel",
                "terminate",
                "wait",
            ]
        ),
        st.integers(min_value=0, max_value=50),
    ),
    max_size=40,
)


def check(w: SimWorld) -> None:
    pool = w.pool
    census: Counter[tuple[str, int]] = Counter()
    for status, jobs in pool._by_status.items():
        for jid, job in jobs.items():
            assert job.status == status and pool._jobs[jid] is job
            census[(job.kind, status)] += 1
    assert sum(len(j) for j in pool._by_status.values()) == len(pool._jobs)
    assert +census == +pool._census
    placed: set[str] = set()
    for rec in pool._startds.values():
        assert len(rec.slots) <= rec.cpus
        if not rec.alive:
            assert not rec.slots and rec.free_key == 0
        for job in rec.slots.values():
            assert job.status == RUNNING and job.startd is rec and job.id not in placed
            placed.add(job.id)
    for free, bucket in pool._free.items():
        for rec in bucket.values():
            assert rec.accepting and rec.cpus - len(rec.slots) == free == rec.free_key
    for job in pool._by_status[RUNNING].values():
        assert job.kind == "vm" or job.id in placed


@settings(max_examples=60, deadline=None)
@given(ops, st.integers(min_value=0, max_value=3))
def test_random_operations_keep_the_books(sequence: list[tuple[str, int]], seed: int) -> None:
    cfg = SimConfig(
        seed=seed,
        pool=PoolConfig(static_nodes=2, static_cpus=2, static_retirement_time=30),
        cloud=CloudConfig(boot_delay=20, boot_jitter=5, spot_pending_probability=0.5),
    )
    w = SimWorld(VirtualClock(), cfg)
    w.sim_panda.add_jobs("S", 10, 40)
    for op, k in sequence:
        machines = list(w.pool._startds)
        jobs = list(w.pool._jobs)
        try:
            if op == "payload":
                w.pool.add_payload_jobs("L", [10.0 + k] * (k % 4 + 1))
            elif op == "pilot":
                w.pool.submit(PILOT, k % 3 + 1)
            elif op == "vm":
                w.pool.submit(VM if k % 2 else {**VM, "ec2_spot_price": "0.1"}, 1)
            elif op == "launch":
                w.sim_cloud.launch(LaunchSpec("ami", "m1.medium"), 1, {})
            elif op == "remove" and jobs:
                w.pool.remove([jobs[k % len(jobs)]], "test")
            elif op in ("retire", "unretire", "drain", "cancel") and machines:
                m = machines[k % len(machines)]
                if op == "retire":
                    w.pool.retire_peaceful(m)
                elif op == "unretire":
                    w.pool.unretire(m)
                elif op == "drain":
                    w.pool.drain(m, "test")
                else:
                    w.pool.cancel_drain(m)
            elif op == "terminate":
                live = [i.id for i in w.sim_cloud.list({}) if i.state in ("pending", "running")]
                if live:
                    w.sim_cloud.terminate([live[k % len(live)]])
            else:
                w.advance(k)
        except CondorRejected:
            pass  # drain/cancel of a stopped startd: allowed to refuse
        check(w)
    w.advance(3600)
    check(w)
