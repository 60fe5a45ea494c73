"""``pilotfactory sweep`` on a moto EC2 server (issue 18): with no factory running, every
instance of this factory whose lease plus grace has passed is terminated, on the accounts the
queues name, queues no longer configured included; the others, another factory's and untagged
instances are untouched. The exit code says what happened."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pilotfactory import cli
from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.contract import (
    TAG_FACTORY,
    TAG_LEASE,
    TAG_LEASE_GRACE,
    TAG_QUEUE,
    TAG_WORKER,
)
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import QueueEnv
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit
from pilotfactory.plugins.cloudaccount import account_of
from tests.integration.test_cloud_ec2 import key_files
from tests.unit.fakecondor import FakeCondor, FakeWorld, make_env


class MotoWorld(FakeWorld):
    def cloud(self, account: Any) -> Any:
        return RealWorld().cloud(account)


def states(client: Any, ids: list[str]) -> dict[str, str]:
    out = {}
    for r in client.describe_instances(InstanceIds=ids)["Reservations"]:
        for i in r["Instances"]:
            out[i["InstanceId"]] = i["State"]["Name"]
    return out


def configs(tmp_path: Path, fid: str, settings: dict[str, Any]) -> tuple[str, str]:
    fconf = tmp_path / "factory.conf"
    fconf.write_text(f"[Factory]\nfactoryId = {fid}\nbaseLogDir = {tmp_path}/logs\n")
    lines = [
        "[q1]",
        "wmsstatusplugin = Condor",
        "wmsqueue = q1",
        "batchstatusplugin = EC2",
        "batchsubmitplugin = EC2",
        "schedplugin = MinVMs",
        "batchsubmit.ec2.image = ami-x",
        "batchsubmit.ec2.flavor = t3.micro",
        "batchsubmit.ec2.lease = 600",
        "batchsubmit.ec2.lease_grace = 1200",
    ]
    for key, value in settings.items():
        lines.append(f"batchsubmit.ec2.{key} = {value}")
        lines.append(f"batchstatus.ec2.{key} = {value}")
    qconf = tmp_path / "queues.conf"
    qconf.write_text("\n".join(lines) + "\n")
    return str(fconf), str(qconf)


def launch(client: Any, image: str, tags: dict[str, str]) -> str:
    """One instance launched behind the factory's back, tagged ``tags``."""
    pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
    spec = [{"ResourceType": "instance", "Tags": pairs}]
    out = client.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro", TagSpecifications=spec
    )
    return str(out["Instances"][0]["InstanceId"])


def test_sweep_with_the_factory_stopped(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fid = f"pf-{uuid.uuid4().hex[:8]}"
    settings = {"endpoint_url": moto_url, "retries": 0, "timeout": 10.0, **key_files(tmp_path)}
    client = RealWorld().cloud(account_of("ec2", settings)).client
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    run = partial(launch, client, image)
    now = time.time()

    # the factory ran an hour ago: its q1 workers carry a lease that ended ~3000 s ago
    port = FakeCondor()
    env, _ = make_env(port, now - 3600)
    env = replace(env, factory_id=fid, world=MotoWorld(port))
    params = {**settings, "image": image, "flavor": "t3.micro", "lease": 600, "lease_grace": 60}
    sub = EC2Submit(merged(EC2Submit.PARAMS, params), env, QueueEnv("q1", "q1"))
    sub.submit(2)
    launched = {i.tags[TAG_WORKER]: i.id for i in sub.cloud.list({TAG_FACTORY: fid})}
    assert len(launched) == 2

    past = str(int(now - 1000))
    removed = run({TAG_FACTORY: fid, TAG_QUEUE: "REMOVED", TAG_LEASE: past})  # --grace 600: due
    fresh = run({TAG_FACTORY: fid, TAG_QUEUE: "q1", TAG_LEASE: str(int(now + 600))})
    # q1's configured grace (1200 s) wins over the tagged 60 s: not due yet
    graced = run({TAG_FACTORY: fid, TAG_QUEUE: "q1", TAG_LEASE: past, TAG_LEASE_GRACE: "60"})
    no_lease = run({TAG_FACTORY: fid, TAG_QUEUE: "q1"})
    other = run({TAG_FACTORY: "someone-else", TAG_QUEUE: "q1", TAG_LEASE: past})
    untagged = run({"Name": "not ours"})
    spared = [fresh, graced, no_lease, other, untagged]

    fconf, qconf = configs(tmp_path, fid, settings)
    # a dry run names what is due and touches nothing
    assert cli.main(["sweep", "-c", fconf, "-q", qconf, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "3 past lease + grace" in text and text.count("would terminate") == 3
    assert set(states(client, [*launched.values(), removed]).values()) == {"running"}

    assert cli.main(["sweep", "-c", fconf, "-q", qconf, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (account,) = report["accounts"]
    due = sorted([*launched.values(), removed])
    assert sorted(account["terminated"]) == due and account["error"] is None
    assert {d["instance"]: d["grace"] for d in account["due"]}[removed] == 600.0
    got = states(client, due + spared)
    assert {got[i] for i in due} <= {"shutting-down", "terminated"}
    assert {got[i] for i in spared} == {"running"}

    # nothing left to do: exit 0, and the spared ones are still untouched
    assert cli.main(["sweep", "-c", fconf, "-q", qconf]) == 0
    assert "0 past lease + grace" in capsys.readouterr().out
    # an account that cannot be reached is a failure (exit 1); a bad flag is usage (exit 2)
    (tmp_path / "bad").mkdir()
    fconf2, qconf2 = configs(
        tmp_path / "bad", fid, {**settings, "endpoint_url": "http://127.0.0.1:9"}
    )
    assert cli.main(["sweep", "-c", fconf2, "-q", qconf2]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert cli.main(["sweep", "-c", fconf, "-q", qconf, "--grace", "-5"]) == 2
    assert {states(client, spared)[i] for i in spared} == {"running"}


def test_sweep_terminates_the_factorys_stopped_instances(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stopped instance does no work and holds its volumes: the sweep terminates this
    factory's stopped ones (lease or not), never another factory's nor a running one."""
    fid = f"pf-{uuid.uuid4().hex[:8]}"
    settings = {"endpoint_url": moto_url, "retries": 0, "timeout": 10.0, **key_files(tmp_path)}
    client = RealWorld().cloud(account_of("ec2", settings)).client
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    run = partial(launch, client, image)

    stopped = run({TAG_FACTORY: fid, TAG_QUEUE: "q1"})
    removed = run({TAG_FACTORY: fid, TAG_QUEUE: "REMOVED"})
    running = run({TAG_FACTORY: fid, TAG_QUEUE: "q1"})
    other = run({TAG_FACTORY: "someone-else", TAG_QUEUE: "q1"})
    client.stop_instances(InstanceIds=[stopped, removed, other])
    fconf, qconf = configs(tmp_path, fid, settings)
    assert cli.main(["sweep", "-c", fconf, "-q", qconf, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "0 past lease + grace, 2 stopped" in text
    assert f"would terminate {stopped} (stopped)" in text
    assert states(client, [stopped, removed])[stopped] == "stopped"
    assert cli.main(["sweep", "-c", fconf, "-q", qconf, "--json"]) == 0
    (account,) = json.loads(capsys.readouterr().out)["accounts"]
    assert sorted(account["terminated"]) == sorted(account["stopped"]) == sorted([stopped, removed])
    got = states(client, [stopped, removed, running, other])
    assert [got[i] for i in (stopped, removed, running, other)] == [
        "terminated", "terminated", "running", "stopped"
    ]  # fmt: skip
