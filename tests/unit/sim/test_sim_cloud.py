"""Simulated cloud and EC2 grid jobs: boot, join, pin, terminate, spot, holds, failures."""

from __future__ import annotations

import pytest

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.contract import TAG_FACTORY, TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.ports import CloudError, CloudPort, CloudQuotaError, LaunchSpec
from pilotfactory.plugins.cloudaccount import account_of
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.pool import PoolConfig
from pilotfactory.sim.world import SimConfig, SimWorld

T0 = 1_700_000_000.0
VM_PROJ = [
    "ClusterId",
    "ProcId",
    "JobStatus",
    "EC2InstanceName",
    "HoldReason",
    "JobUniverse",
    "GridResource",
    "EC2SpotRequestID",
]


def world(pool: PoolConfig | None = None, **cloud_kw: object) -> SimWorld:
    cloud = CloudConfig(boot_delay=120, boot_jitter=0, **cloud_kw)  # type: ignore[arg-type]
    return SimWorld(VirtualClock(T0), SimConfig(pool=pool or PoolConfig(), cloud=cloud))


def vm_desc(**extra: str) -> dict[str, str]:
    desc = {
        "universe": "grid",
        "grid_resource": "ec2 http://ec2.us-east-1.sim:5000/",
        "executable": "vmq",
        "ec2_access_key_id": "/etc/pf/ak",
        "ec2_secret_access_key": "/etc/pf/sk",
        "ec2_ami_id": "ami-good",
        "ec2_instance_type": "m1.large",
        "ec2_tag_names": "pilotfactory_factory, pilotfactory_queue",
        "ec2_tag_pilotfactory_factory": "f1",
        "ec2_tag_pilotfactory_queue": "vmq",
        "+MATCH_APF_QUEUE": '"vmq"',
        "+APF_QUEUE": '"vmq"',
        "+FACTORY_JOBID": '"f1#$(Cluster).$(Process)"',
        "+PilotFactoryId": '"f1"',
        "+PilotFactoryQueue": '"vmq"',
    }
    desc.update(extra)
    return desc


def vm_jobs(w: SimWorld) -> list[dict[str, object]]:
    return w.pool.query_jobs({"PilotFactoryId": "f1"}, VM_PROJ)


def test_cloud_satisfies_the_port() -> None:
    w = world()
    assert isinstance(w.cloud(account_of("ec2", {})), CloudPort)
    assert w.cloud(account_of("openstack", {})) is w.cloud(account_of("ec2", {}))


def test_a_vm_boots_joins_with_its_instance_id_and_runs_pinned_and_unpinned_jobs() -> None:
    w = world()
    w.pool.submit(vm_desc(), 1)
    (job,) = vm_jobs(w)
    assert job["JobStatus"] == 1 and job["JobUniverse"] == 9 and "EC2InstanceName" not in job
    w.advance(10)  # the gridmanager launched the instance
    (job,) = vm_jobs(w)
    iid = job["EC2InstanceName"]
    assert job["JobStatus"] == 2 and isinstance(iid, str) and iid.startswith("i-")
    (inst,) = w.sim_cloud.list({"pilotfactory_queue": "vmq"})
    assert inst.id == iid and inst.state == "pending"
    w.advance(120)
    assert w.sim_cloud.list({})[0].state == "running"
    assert w.pool.query_startds({}, ["Name"]) == []  # booted, startd not joined yet
    w.advance(5)
    ads = w.pool.query_startds({"EC2InstanceID": iid}, ["Name", "Machine", "Cpus", "SlotType"])
    assert ads == [
        {
            "Name": "slot1@vm1.pool.test",
            "Machine": "vm1.pool.test",
            "Cpus": 4,
            "SlotType": "Partitionable",
        }
    ]
    masters = w.pool.query_masters({}, ["Machine", "EC2InstanceID"])
    assert masters == [{"Machine": "vm1.pool.test", "EC2InstanceID": iid}]
    pinned = {
        "executable": "p.sh",
        "requirements": f'EC2InstanceID =?= "{iid}"',
        "+SimDuration": "100",
    }
    other = {"executable": "p.sh", "requirements": 'EC2InstanceID =?= "i-elsewhere"'}
    w.pool.submit(pinned, 1)
    w.pool.submit(other, 1)
    w.pool.add_payload_jobs("vmq", [100])
    w.advance(5)
    running = w.pool.query_jobs({"JobStatus": 2, "JobUniverse": 5}, ["ClusterId", "RemoteHost"])
    assert sorted(a["ClusterId"] for a in running) == [2, 4]
    assert all(str(a["RemoteHost"]).endswith("@vm1.pool.test") for a in running)


def test_terminate_evicts_running_jobs_and_the_ads_vanish_at_once() -> None:
    w = world()
    (iid,) = w.sim_cloud.launch(
        LaunchSpec("ami-good", "m1.large"), 1, {TAG_FACTORY: "f1", TAG_QUEUE: "q", TAG_WORKER: "w1"}
    )
    w.advance(130)
    assert w.pool.query_startds({}, ["PilotFactoryWorker"])[0]["PilotFactoryWorker"] == "w1"
    (jid,) = w.pool.add_payload_jobs("q", [1000])
    w.advance(5)
    assert (w.pool.job(jid) or {})["JobStatus"] == 2
    w.sim_cloud.terminate([iid])
    assert w.pool.query_startds({}, ["Name"]) == [] and w.pool.query_masters({}, ["Name"]) == []
    assert (w.pool.job(jid) or {})["JobStatus"] == 1
    assert w.metrics.payload_killed["q"] == 1
    assert w.sim_cloud.list({})[0].state == "stopping"
    w.advance(10)
    assert w.sim_cloud.list({})[0].state == "terminated"
    assert w.metrics.instances_terminated["q"] == 1
    hours = w.metrics.vm_hours(w.loop.now)["q"]
    assert hours == pytest.approx(135 / 3600)
    with pytest.raises(CloudError):
        w.sim_cloud.terminate(["i-unknown"])


def test_removing_a_vm_job_terminates_its_instance_after_a_short_delay() -> None:
    w = world()
    w.pool.submit(vm_desc(), 1)
    w.advance(140)
    assert len(w.pool.machines()) == 1
    assert w.pool.remove(["1.0"], "retire (kill)") == 1
    (job,) = vm_jobs(w)
    assert job["JobStatus"] == 3  # the gridmanager still holds it
    w.advance(5)
    assert vm_jobs(w) == []
    assert w.pool.machines() == [] and w.pool.query_masters({}, ["Name"]) == []
    hist = w.pool.query_history({"PilotFactoryId": "f1"}, ["JobStatus"], since=0, limit=5)
    assert hist == [{"JobStatus": 3}]


def test_removing_an_idle_vm_job_before_the_gridmanager_acts() -> None:
    w = world()
    w.pool.submit(vm_desc(), 1)
    assert w.pool.remove(["1.0"], "not needed") == 1
    w.advance(60)
    assert vm_jobs(w) == [] and w.sim_cloud.list({}) == []


def test_broken_image_boots_but_never_joins() -> None:
    w = world(broken_images={"ami-broken"})
    w.pool.submit(vm_desc(ec2_ami_id="ami-broken"), 1)
    w.advance(600)
    assert w.sim_cloud.list({})[0].state == "running"
    assert vm_jobs(w)[0]["JobStatus"] == 2
    assert w.pool.query_startds({}, ["Name"]) == [] and w.pool.query_masters({}, ["Name"]) == []


def test_spot_requests_may_stay_open_then_get_fulfilled() -> None:
    w = world(spot_pending_probability=1.0, spot_pending_time=300)
    w.pool.submit(vm_desc(ec2_spot_price="0.05"), 1)
    w.advance(20)
    (job,) = vm_jobs(w)
    assert job["JobStatus"] == 1 and str(job["EC2SpotRequestID"]).startswith("sir-")
    (req,) = w.sim_cloud.list({})
    assert req.id == req.spot_request_id and req.state == "pending"
    w.advance(300)
    (job,) = vm_jobs(w)
    assert job["JobStatus"] == 2 and str(job["EC2InstanceName"]).startswith("i-")
    (inst,) = w.sim_cloud.list({})
    assert inst.id.startswith("i-") and inst.spot_request_id == job["EC2SpotRequestID"]


def test_removing_a_vm_job_with_an_open_spot_request_cancels_it() -> None:
    w = world(spot_pending_probability=1.0, spot_pending_time=None)
    w.pool.submit(vm_desc(ec2_spot_price="0.05"), 1)
    w.advance(20)
    w.pool.remove(["1.0"], "cancel")
    assert vm_jobs(w) == [] and w.sim_cloud.list({}) == []
    w.advance(3600)
    assert w.metrics.instances_launched["vmq"] == 0


def test_direct_spot_launch_returns_request_ids() -> None:
    w = world()
    ids = w.sim_cloud.launch(LaunchSpec("ami-good", "m1.small", spot_price=0.1), 2, {"k": "v"})
    assert all(i.startswith("sir-") for i in ids)
    listed = w.sim_cloud.list({"k": "v"})
    assert {i.spot_request_id for i in listed} == set(ids)
    assert all(i.id.startswith("i-") for i in listed)
    w.sim_cloud.terminate(ids[:1])
    assert sorted(i.state for i in w.sim_cloud.list({})) == ["pending", "stopping"]


def test_held_injection_and_launch_failures_hold_vm_jobs() -> None:
    w = world(pool=PoolConfig(held_fraction=1.0, held_reason="Create_Instance_Failed: nope"))
    w.pool.submit(vm_desc(), 2)
    w.advance(10)
    assert [j["JobStatus"] for j in vm_jobs(w)] == [5, 5]
    assert vm_jobs(w)[0]["HoldReason"] == "Create_Instance_Failed: nope"
    w2 = world()
    w2.sim_cloud.launch_error = CloudError("AuthFailure: credentials expired")
    w2.pool.submit(vm_desc(), 1)
    w2.advance(10)
    (job,) = vm_jobs(w2)
    assert job["JobStatus"] == 5 and "AuthFailure" in str(job["HoldReason"])
    assert w2.pool.remove(["1.0"], "reap held") == 1
    assert vm_jobs(w2) == []


def test_launch_error_and_quota_raise_from_the_port() -> None:
    w = world(quota=3)
    spec = LaunchSpec("ami-good", "m1.small")
    w.sim_cloud.launch(spec, 2, {})
    with pytest.raises(CloudQuotaError):
        w.sim_cloud.launch(spec, 2, {})
    w.sim_cloud.launch(spec, 1, {})
    w.sim_cloud.launch_error = CloudError("simulated")
    with pytest.raises(CloudError):
        w.sim_cloud.launch(spec, 1, {})
    assert w.metrics.failures["cloud_launch"] == 2
    assert len(w.sim_cloud.list({})) == 3


def test_tag_filtering_and_set_tags() -> None:
    w = world()
    spec = LaunchSpec("ami-good", "m1.small")
    a = w.sim_cloud.launch(spec, 2, {TAG_FACTORY: "f1", TAG_QUEUE: "a"})
    w.sim_cloud.launch(spec, 1, {TAG_FACTORY: "f2", TAG_QUEUE: "a"})
    assert len(w.sim_cloud.list({TAG_FACTORY: "f1"})) == 2
    assert len(w.sim_cloud.list({TAG_QUEUE: "a"})) == 3
    w.sim_cloud.set_tags(a[:1], {"pilotfactory:retire_requested_at": "17"})
    tagged = w.sim_cloud.list({"pilotfactory:retire_requested_at": "17"})
    assert [i.id for i in tagged] == a[:1]
    with pytest.raises(CloudError):
        w.sim_cloud.set_tags(["i-nope"], {"a": "b"})


def test_vm_retirement_time_per_image_and_cpus_per_flavour() -> None:
    w = world(image_retirement_time={"ami-long": 86400})
    w.sim_cloud.launch(LaunchSpec("ami-long", "m1.xlarge"), 1, {})
    w.sim_cloud.launch(LaunchSpec("ami-good", "odd.flavour"), 1, {})
    w.advance(130)
    ads = w.pool.query_startds({}, ["Cpus", "MaxJobRetirementTime"])
    assert sorted((a["Cpus"], a["MaxJobRetirementTime"]) for a in ads) == [(4, 0), (8, 86400)]


def test_unretire_on_a_terminated_vm_is_rejected() -> None:
    from pilotfactory.factory.ports import CondorRejected

    w = world()
    (iid,) = w.sim_cloud.launch(LaunchSpec("ami-good", "m1.small"), 1, {})
    w.advance(130)
    (machine,) = w.pool.machines()
    w.sim_cloud.terminate([iid])
    with pytest.raises(CondorRejected):
        w.pool.unretire(machine)


def test_an_instance_terminated_outside_condor_completes_its_vm_job() -> None:
    w = world()
    w.pool.submit(vm_desc(), 1)
    w.advance(140)
    (job,) = vm_jobs(w)
    w.sim_cloud.terminate([str(job["EC2InstanceName"])])  # e.g. a spot interruption
    assert vm_jobs(w) == []
    hist = w.pool.query_history({"PilotFactoryId": "f1"}, ["JobStatus"], since=0, limit=5)
    assert hist == [{"JobStatus": 4}]
