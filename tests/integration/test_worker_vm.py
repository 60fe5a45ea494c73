"""The shipped worker templates (etc/worker) on real daemons: VMs the EC2 plugin launches on a
moto server, booted by ``vmemu.Emulator`` from nothing but their rendered user data.

Each template boots and runs a payload (and the time from the instance running to the first
payload running is printed); an unclaimed VM powers itself off; a VM whose image has no pool
credential joins with the token minted for it, and not without; the spot notice reaches the
startd ad; no rendered secret outlives the lease; with no factory renewing it, a VM is gone by
its lease + grace even with a job running.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.clock import WallClock
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import Env, QueueEnv
from pilotfactory.factory.ports import CondorTarget
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit
from pilotfactory.plugins.batchsubmit.vmlife import find_tokens, token_claims
from tests.conftest import wait_for
from tests.integration.conftest import CondorPool
from tests.integration.vmemu import Emulator

pytestmark = [pytest.mark.condor, pytest.mark.elastic]

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = ("worker.sh", "worker.cloud-config")
IDENTITY = "condor@pool.test"  # the sandbox's ALLOW_DAEMON


@dataclass
class World:
    pool: CondorPool
    url: str
    client: Any
    image: str
    bare_image: str  # no pool credential
    emu: Emulator
    keys: dict[str, str]
    signing_key: Path
    workdir: Path
    port: Any


@pytest.fixture(scope="module")
def world(condor_pool: CondorPool, moto_url: str) -> Iterator[World]:
    jobdir = Path(condor_pool.env["PILOTFACTORY_SANDBOX_JOBDIR"])
    root = Path(condor_pool.env["PILOTFACTORY_SANDBOX_ROOT"])
    work = jobdir / f"wvm-{uuid.uuid4().hex[:8]}"
    work.mkdir(mode=0o700)
    keys = {}
    for name, text in (("access_key_id", "AKIDWORKER"), ("secret_access_key", "worker-secret")):
        path = work / name
        path.write_text(text + "\n")
        path.chmod(0o600)
        keys[name] = str(path)
    # The pool's signing key, where the factory keeps it (a private file); the tool that signs
    # with it runs in the chroot, where the job directory has the same path.
    key = work / "signing" / "POOL"
    key.parent.mkdir(mode=0o700)
    shutil.copyfile(root / "etc/condor/passwords.d/POOL", key)
    key.chmod(0o600)
    bindir = work / "bin"
    bindir.mkdir()
    wrapper = bindir / "condor_token_create"
    wrapper.write_text(
        "#!/bin/sh\nexec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "
        '_CONDOR_SEC_PASSWORD_DIRECTORY="$_CONDOR_SEC_PASSWORD_DIRECTORY" '
        f'chroot {root} condor_token_create "$@"\n'
    )
    wrapper.chmod(0o755)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{bindir}:{old_path}"
    client = boto3.client(
        "ec2",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDWORKER",
        aws_secret_access_key="worker-secret",
    )
    images = [i["ImageId"] for i in client.describe_images(Owners=["amazon"])["Images"]]
    emu = Emulator(client, root, jobdir / f"vms-{uuid.uuid4().hex[:8]}")
    emu.bare_images.add(images[1])
    emu.start()
    port = RealWorld("bindings").condor(CondorTarget())
    try:
        yield World(condor_pool, moto_url, client, images[0], images[1], emu, keys, key, work, port)
    finally:
        emu.stop()
        os.environ["PATH"] = old_path


@dataclass
class Launched:
    worker: str
    instance: str
    label: str
    user_data: str
    launched_at: float


def template(world: World, name: str, **replace: str) -> Path:
    text = (REPO / "etc" / "worker" / name).read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = world.workdir / f"{uuid.uuid4().hex[:6]}-{name}"
    path.write_text(text)
    return path


def launch(world: World, tpl: Path | None, image: str | None = None, **params: Any) -> Launched:
    """One worker through the EC2 plugin (the factory's own rendering and token minting)."""
    label = f"WVM_{uuid.uuid4().hex[:6]}"
    env = Env(f"pf-wvm-{uuid.uuid4().hex[:6]}", RealWorld("bindings"), WallClock())
    settings = {
        "endpoint_url": world.url,
        "region": "us-east-1",
        "retries": 0,
        "timeout": 10.0,
        **world.keys,
        "image": image or world.image,
        "flavor": "t3.micro",
        **({"user_data_file": str(tpl)} if tpl else {}),
        **params,
    }
    sub = EC2Submit(merged(EC2Submit.PARAMS, settings), env, QueueEnv(label, label))
    t0 = time.time()
    [wid] = sub.submit(1)
    found = world.client.describe_instances(
        Filters=[{"Name": "tag:pilotfactory:worker", "Values": [wid]}]
    )
    [inst] = [i for r in found["Reservations"] for i in r["Instances"]]
    iid = inst["InstanceId"]
    raw = world.client.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    text = base64.b64decode(raw["UserData"]["Value"]).decode()
    return Launched(wid, iid, label, text, t0)


def payload(world: World, vm: Launched, seconds: int, **attrs: str) -> str:
    res = world.port.submit(
        {
            "executable": "/bin/sleep",
            "arguments": str(seconds),
            "requirements": f'TARGET.PilotFactoryWorker == "{vm.worker}"',
            "+MATCH_APF_QUEUE": f'"{vm.label}"',
            "request_cpus": "1",
            "request_memory": "64",
            "initialdir": str(world.pool.job_dir()),
            **{f"+{k}": v for k, v in attrs.items()},
        },
        1,
    )
    return res.job_ids[0]


def job(world: World, jid: str) -> dict[str, Any]:
    cluster, proc = (int(x) for x in jid.split("."))
    ads = world.port.query_jobs(
        {"ClusterId": cluster, "ProcId": proc}, ["JobStatus", "JobCurrentStartDate"]
    )
    return ads[0] if ads else {}


def slot(world: World, vm: Launched, *attrs: str) -> dict[str, Any]:
    ads = world.port.query_startds(
        {"PilotFactoryWorker": vm.worker}, ["Name", "EC2InstanceID", *attrs]
    )
    return ads[0] if ads else {}


def state(world: World, vm: Launched) -> str:
    found = world.client.describe_instances(InstanceIds=[vm.instance])
    return str(found["Reservations"][0]["Instances"][0]["State"]["Name"])


def end(world: World, vm: Launched, *jobs: str) -> None:
    if jobs:
        world.port.remove(list(jobs), "test cleanup")
    if state(world, vm) != "terminated":
        world.client.terminate_instances(InstanceIds=[vm.instance])
    wait_for(
        "the VM killed", lambda: vm.instance not in {v.instance_id for v in world.emu.running()}
    )


# ---------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_boots_and_runs_a_payload(world: World, name: str) -> None:
    """The VM advertises its worker id, instance id and the contract's attributes, keeps job
    users off the metadata address, and runs its queue's payload; the time from the instance
    running to the payload running is printed."""
    vm = launch(world, template(world, name), lease=600, lease_grace=60, max_lifetime=7200)
    jid = payload(world, vm, 3)
    try:
        started = wait_for("payload running", lambda: job(world, jid).get("JobStatus") == 2,
                           timeout=120, interval=0.2)  # fmt: skip
        running = time.time()
        assert started
        emu_vm = world.emu.vm(vm.instance)
        assert emu_vm is not None
        print(
            f"\n[{name}] instance running -> first payload running: "
            f"{running - vm.launched_at:.1f}s (launch call -> payload running), "
            f"{running - emu_vm.seen_at:.1f}s (emulator saw it running -> payload running)"
        )
        ad = slot(world, vm, "PilotFactoryLeaseUntil", "PilotFactoryDeadline", "PilotFactoryQueue")
        assert ad["EC2InstanceID"] == vm.instance and ad["PilotFactoryQueue"] == vm.label
        assert ad["PilotFactoryLeaseUntil"] > time.time() + 500
        assert ad["PilotFactoryDeadline"] > time.time() + 6000
        rules = (emu_vm.root / "iptables.log").read_text()
        assert "--uid-owner 0 -j ACCEPT" in rules and "--uid-owner condor -j ACCEPT" in rules
        assert rules.strip().splitlines()[-1].endswith("-j REJECT"), rules
        assert world.emu.metadata.requests, "the VM read its metadata"
        wait_for("payload done", lambda: not job(world, jid), timeout=60)
    finally:
        end(world, vm, jid)
    assert not world.emu.errors, world.emu.errors


def test_unclaimed_vm_powers_itself_off(world: World) -> None:
    """STARTD_NOCLAIM_SHUTDOWN (short here) ends the startd, the master follows and powers the
    VM off: the instance ends up terminated, by the VM itself."""
    tpl = template(
        world, "worker.sh", **{"STARTD_NOCLAIM_SHUTDOWN = 1200": "STARTD_NOCLAIM_SHUTDOWN = 15"}
    )
    vm = launch(world, tpl)
    try:
        wait_for("the startd", lambda: slot(world, vm), timeout=60)
        t0 = time.time()
        wait_for("terminated", lambda: state(world, vm) == "terminated", timeout=180, interval=1)
        print(f"\nunclaimed VM terminated {time.time() - t0:.0f}s after its startd joined")
        emu_vm = world.emu.vm(vm.instance)
        assert emu_vm is not None
        assert (emu_vm.root / "powered-off").exists(), emu_vm.events
    finally:
        end(world, vm)


def test_bare_image_joins_with_the_minted_token_only(world: World) -> None:
    """An image without any pool credential: the scoped, expiring token minted for the worker
    lets its startd and master join; without a token they never do."""
    tpl = template(world, "worker.sh")
    vm = launch(
        world,
        tpl,
        image=world.bare_image,
        token_signing_key=str(world.signing_key),
        token_identity=IDENTITY,
        lease=600,
        lease_grace=60,
    )
    [token] = find_tokens(vm.user_data)
    claims = token_claims(token)
    assert claims is not None and claims["sub"] == IDENTITY
    assert set(claims["scope"].split()) == {
        "condor:/ADVERTISE_STARTD",
        "condor:/ADVERTISE_MASTER",
        "condor:/READ",
    }
    try:
        wait_for("the bare VM's startd", lambda: slot(world, vm), timeout=90)
        wait_for("its master", lambda: world.port.query_masters(
            {"PilotFactoryWorker": vm.worker}, ["Name"]), timeout=60)  # fmt: skip
    finally:
        end(world, vm)
    bare = launch(world, tpl, image=world.bare_image)
    assert not find_tokens(bare.user_data)
    try:
        wait_for("the tokenless VM booted", lambda: world.emu.vm(bare.instance) and
                 world.emu.vm(bare.instance).proc is not None, timeout=30)  # fmt: skip
        time.sleep(30)  # several update intervals: an ad would be there by now
        assert not slot(world, bare), "a VM without a credential joined"
        emu_vm = world.emu.vm(bare.instance)
        assert emu_vm is not None and emu_vm.proc is not None and emu_vm.proc.poll() is None
    finally:
        end(world, bare)


def test_spot_notice_reaches_the_startd_ad(world: World) -> None:
    vm = launch(world, template(world, "worker.cloud-config"))
    try:
        wait_for("the startd", lambda: slot(world, vm), timeout=60)
        world.emu.interrupt(vm.instance, after=90)
        t0 = time.time()
        ad = wait_for(
            "the notice in the slot ad",
            lambda: slot(
                world, vm, "PilotFactoryInterruption", "PilotFactoryInterruptionAction"
            ).get("PilotFactoryInterruptionAction"),
            timeout=60,
        )
        ad = slot(world, vm, "PilotFactoryInterruption", "PilotFactoryInterruptionAction", "Start")
        print(f"\nspot notice in the startd ad {time.time() - t0:.1f}s after it appeared")
        assert ad["PilotFactoryInterruptionAction"] == "terminate"
        assert abs(int(ad["PilotFactoryInterruption"]) - (t0 + 90)) <= 2
        jid = payload(world, vm, 2)
        time.sleep(10)
        assert job(world, jid).get("JobStatus") == 1, "START refuses work after a notice"
        world.port.remove([jid], "test cleanup")
    finally:
        end(world, vm)


@pytest.mark.parametrize("name", TEMPLATES)
def test_no_rendered_secret_outlives_the_lease(world: World, name: str) -> None:
    lease, grace = 600, 120
    vm = launch(
        world,
        template(world, name),
        token_signing_key=str(world.signing_key),
        token_identity=IDENTITY,
        lease=lease,
        lease_grace=grace,
    )
    end(world, vm)
    tokens = find_tokens(vm.user_data)
    assert len(tokens) == 1
    for token in tokens:
        claims = token_claims(token)
        assert claims is not None
        assert claims["exp"] <= vm.launched_at + lease + grace + 5, claims
    key = world.signing_key.read_bytes()
    assert base64.b64encode(key).decode() not in vm.user_data
    assert "BEGIN" not in vm.user_data and "SEC_PASSWORD" not in vm.user_data


def test_lease_without_a_factory(world: World) -> None:
    """No factory advertises the lease: past it the VM retires (its job keeps running), and
    by lease + grace it is gone."""
    lease, grace = 45, 30
    vm = launch(world, template(world, "worker.sh"), lease=lease, lease_grace=grace)
    jid = payload(world, vm, 600)
    try:
        wait_for("payload running", lambda: job(world, jid).get("JobStatus") == 2, timeout=90)
        until = vm.launched_at + lease
        wait_for("lease passed", lambda: time.time() > until + 10, timeout=lease + 20)
        assert state(world, vm) == "running" and job(world, jid).get("JobStatus") == 2
        wait_for("terminated", lambda: state(world, vm) == "terminated",
                 timeout=grace + 30, interval=1)  # fmt: skip
        gone = time.time()
        print(f"\nVM gone {gone - (until + grace):+.1f}s from lease + grace")
        assert gone <= until + grace + 8
        emu_vm = world.emu.vm(vm.instance)
        assert emu_vm is not None
        log = (emu_vm.root / "etc/condor/pilotfactory/lease.log").read_text()
        assert "retiring the startd peacefully" in log and "powering off" in log, log
    finally:
        end(world, vm, jid)


def advertise_lease(world: World, name: str, until: int | None) -> None:
    """The factory's lease ad (contract: ``PilotFactoryLease``), as the factory side writes it;
    ``until`` None invalidates it. Sent with the sandbox's daemon token."""
    root = world.pool.env["PILOTFACTORY_SANDBOX_ROOT"]
    ad = world.workdir / f"lease-{uuid.uuid4().hex[:6]}.ad"
    fid, queue = name.split("/", 1)
    if until is None:
        cmd = "INVALIDATE_ADS_GENERIC"
        ad.write_text(f'MyType = "Query"\nTargetType = "PilotFactoryLease"\n'
                      f'Requirements = Name == "{name}"\n')  # fmt: skip
    else:
        cmd = "UPDATE_AD_GENERIC"
        ad.write_text(
            f'MyType = "PilotFactoryLease"\nName = "{name}"\nPilotFactoryId = "{fid}"\n'
            f'PilotFactoryQueue = "{queue}"\nPilotFactoryLeaseUntil = {until}\n'
            "ClassAdLifetime = 600\n"
        )
    ad.chmod(0o644)
    proc = subprocess.run(
        ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
         "_CONDOR_SEC_TOKEN_DIRECTORY=/etc/condor/tokens-admin",
         "_CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS=IDTOKENS",
         "chroot", root, "condor_advertise", cmd, str(ad)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lease_ad_extends_the_lease(world: World) -> None:
    """The VM's lease is the later of its launch value and the factory's lease ad: renewed by
    the ad, it outlives its launch lease; when the ad stops moving, it is gone by the ad's
    lease + grace."""
    lease, grace, extra = 30, 20, 40
    vm = launch(world, template(world, "worker.sh"), lease=lease, lease_grace=grace)
    fid = vm.user_data.split("pfvm\" lease '", 1)[1].split("'", 1)[0]
    renewed = int(vm.launched_at) + lease + extra
    advertise_lease(world, fid, renewed)
    try:
        wait_for("the startd", lambda: slot(world, vm), timeout=60)
        wait_for("launch lease + grace passed",
                 lambda: time.time() > vm.launched_at + lease + grace + 5,
                 timeout=lease + grace + 20)  # fmt: skip
        assert state(world, vm) == "running", "the ad's lease kept it"
        wait_for("terminated", lambda: state(world, vm) == "terminated",
                 timeout=extra + grace + 30, interval=1)  # fmt: skip
        gone = time.time()
        print(f"\nVM gone {gone - renewed:+.1f}s from the renewed lease ({grace}s grace)")
        assert renewed <= gone <= renewed + grace + 8
    finally:
        advertise_lease(world, fid, None)
        end(world, vm)


def test_start_refuses_what_cannot_end_before_the_deadline(world: World) -> None:
    """PilotFactoryDeadline on real daemons: a job whose stated runtime ends after it stays
    idle; one that fits runs."""
    vm = launch(world, template(world, "worker.sh"), max_lifetime=600, lifetime_stagger=0)
    long_job = payload(world, vm, 5, PilotFactoryExpectedRuntime="3600")
    short_job = payload(world, vm, 5, MaxWallTimeMins="2")
    try:
        ad = wait_for("the startd", lambda: slot(world, vm, "PilotFactoryDeadline"), timeout=60)
        assert abs(ad["PilotFactoryDeadline"] - (vm.launched_at + 600)) <= 2
        wait_for("the short job ran", lambda: not job(world, short_job), timeout=90)
        time.sleep(12)  # several negotiation cycles with the slot free
        assert job(world, long_job).get("JobStatus") == 1, "the long job never started"
    finally:
        end(world, vm, long_job)
