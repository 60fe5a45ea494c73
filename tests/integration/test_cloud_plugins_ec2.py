"""EC2Submit and EC2BatchStatus on the real Ec2Cloud port against a moto server on loopback;
the startd side is the fake condor port (no HTCondor pool needed)."""

from __future__ import annotations

import base64
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.info import RetireMode, WorkerState
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import QueueEnv
from pilotfactory.plugins.batchstatus.cloud import EC2BatchStatus
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit
from pilotfactory.plugins.cloudaccount import account_of
from tests.integration.test_cloud_ec2 import key_files, power_off
from tests.unit.fakecondor import FakeCondor, FakeWorld, make_env


class MotoWorld(FakeWorld):
    def cloud(self, account: Any) -> Any:
        return RealWorld().cloud(account)


def ec2_queue(moto_url: str, tmp_path: Path) -> tuple[FakeCondor, Any, EC2Submit, EC2BatchStatus]:
    """Queue q1's EC2 submit and status plugins on moto, a fresh factory id, a fake pool."""
    settings = {"endpoint_url": moto_url, "retries": 0, "timeout": 10.0, **key_files(tmp_path)}
    port = FakeCondor()
    env, _ = make_env(port)
    env = replace(env, factory_id=f"pf-{uuid.uuid4().hex[:8]}", world=MotoWorld(port))
    client = env.world.cloud(account_of("ec2", settings)).client
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    params = {**settings, "image": image, "flavor": "t3.micro"}
    sub = EC2Submit(merged(EC2Submit.PARAMS, params), env, QueueEnv("q1", "q1"))
    status = EC2BatchStatus(merged(EC2BatchStatus.PARAMS, settings), env)
    return port, client, sub, status


def test_ec2_queue_on_moto(moto_url: str, tmp_path: Path) -> None:
    port, client, sub, status = ec2_queue(moto_url, tmp_path)

    ids = sub.submit(2)
    status.refresh()
    workers = {w.id: w for w in status.info("q1").workers}
    assert set(workers) == set(ids) and {w.state for w in workers.values()} == {WorkerState.BOOTING}
    w0 = workers[ids[0]]
    raw = client.describe_instance_attribute(InstanceId=w0.instance_id, Attribute="userData")
    assert f'PilotFactoryWorker = "{w0.id}"' in base64.b64decode(raw["UserData"]["Value"]).decode()

    slot = {"Name": "slot1@vm0", "Machine": "vm0", "State": "Unclaimed", "SlotType": "Static"}
    port.startds.append({**slot, "MaxJobRetirementTime": 86400, "PilotFactoryWorker": w0.id})
    status.refresh()
    w0 = next(w for w in status.info("q1").workers if w.id == ids[0])
    sub.retire([w0], RetireMode.DRAIN)
    status.refresh()
    w0 = next(w for w in status.info("q1").workers if w.id == ids[0])
    assert (w0.state, w0.retire_mode) == (WorkerState.RETIRING, "drain")
    assert port.named("drain") == [("drain", "vm0", "pilotfactory")]

    sub.reap(status.info("q1").workers)
    status.refresh()
    assert status.info("q1").workers == ()


def test_vms_that_powered_themselves_off_are_no_failure_and_none_stays_stopped(
    moto_url: str, tmp_path: Path
) -> None:
    """Three joined VMs end: one powers itself off and terminates, one powers itself off but
    only stops (an instance launched without the terminate behaviour), one is stopped by
    someone else. The first two are no workers (no failure); the stopped one is terminated by
    the daemon's reconcile; the third is LOST, the planner's to reap and count."""
    port, client, sub, status = ec2_queue(moto_url, tmp_path)
    ids = sub.submit(3)
    status.refresh()
    iid = {w.id: w.instance_id or "" for w in status.info("q1").workers}
    for n, wid in enumerate(ids):
        slot = {"Name": f"slot1@vm{n}", "Machine": f"vm{n}", "State": "Unclaimed"}
        port.startds.append({**slot, "SlotType": "Static", "PilotFactoryWorker": wid})
    status.refresh()
    assert {w.state for w in status.info("q1").workers} == {WorkerState.IDLE}
    port.startds.clear()
    power_off(iid[ids[0]], "terminate")
    power_off(iid[ids[1]], "stop")
    client.stop_instances(InstanceIds=[iid[ids[2]]])
    status.refresh()
    (lost,) = status.info("q1").workers
    assert (lost.id, lost.state) == (ids[2], WorkerState.LOST)
    assert status.reconcile({"q1": status}, set(), dry_run=False) == [
        f"terminated 1 stopped: {iid[ids[1]]}"
    ]
    found = client.describe_instances(InstanceIds=[iid[w] for w in ids])["Reservations"]
    states = {i["InstanceId"]: i["State"]["Name"] for r in found for i in r["Instances"]}
    assert [states[iid[w]] for w in ids] == ["terminated", "terminated", "stopped"]
    status.refresh()
    assert [w.id for w in status.info("q1").workers] == [ids[2]]
    sub.reap([lost])
    status.refresh()
    assert status.info("q1").workers == ()
