"""Issue 19's bar: a factory scales an EC2 queue to 1,000 VMs and back to 0 on a moto server
(real boto3 calls over HTTP), killed twice along the way, and leaves 0 instances and 0 workers
with two instances.

A kill -9 is a ``Killed`` (a BaseException: nothing in the factory catches it) raised from a
botocore hook after moto has answered, so the instance exists (or is terminated) and the
factory never learns it; the Factory object and its ports are then discarded and a new one is
built from the same config, as a restarted daemon would be. The pool side is the fake condor
port: every running instance's startd joins (a slot ad and a master ad naming its worker), and
a startd told to retire peacefully leaves (its slot ad goes, its master stays until the VM is
terminated). Figures (calls by operation, wall time) are printed; ``-s`` shows them.
``PF_SCALE_LAUNCH_VIA=fleet`` launches each VM through EC2 Fleet instead of RunInstances.
"""

from __future__ import annotations

import os
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from pilotfactory.backends.cloud.ec2 import Ec2Cloud
from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import TAG_FACTORY, TAG_WORKER
from pilotfactory.factory.factory import Factory
from pilotfactory.plugins.cloudaccount import account_of
from tests.integration.test_cloud_ec2 import key_files
from tests.unit.fakecondor import FakeCondor, FakeWorld, make_env

VMS = int(os.environ.get("PF_SCALE_VMS", "1000"))
VIA = os.environ.get("PF_SCALE_LAUNCH_VIA", "run_instances")  # or fleet: one EC2 Fleet a VM
LAUNCH_OP = {"run_instances": "RunInstances", "fleet": "CreateFleet"}[VIA]
LABEL = "SCALE"


class Killed(BaseException):
    """kill -9: no handler in the factory runs."""


class MotoWorld(FakeWorld):
    """The fake pool, real EC2 ports on moto; every port it made is kept, for the figures."""

    def __init__(self, port: FakeCondor, kill: dict[str, int]) -> None:
        super().__init__(port)
        self.ports: list[Ec2Cloud] = []
        self.kill = kill

    def cloud(self, account: Any) -> Ec2Cloud:
        cloud = RealWorld().cloud(account)
        assert isinstance(cloud, Ec2Cloud)
        cloud.client.meta.events.register("after-call.ec2", self._after_call)
        self.ports.append(cloud)
        return cloud

    def _after_call(self, model: Any = None, **_: Any) -> None:
        """Count down the kill set on an operation; at zero, die after moto answered."""
        op = getattr(model, "name", "")
        if op in self.kill:
            self.kill[op] -= 1
            if self.kill[op] == 0:
                del self.kill[op]
                raise Killed(op)


QUEUES = """
[DEFAULT]
apfqueue.sleep = 0
boot_timeout = 3600
retire_mode = peaceful
retire_confirm_cycles = 1
max_retire_per_cycle = 100%%
scale_down_delay = 0
sched.idleshutdown.idle_time = 0
# Retiring every VM at once takes every slot ad away in one cycle, which the circuit
# breaker's pool-wide gauge reads as a collector losing ads (3 frozen cycles); not tested here.
shrink_freeze_ratio = 0

[VMS]
wmsqueue = {label}
wmsstatusplugin = Condor
schedplugin = JobsPerVM, IdleShutdown
batchstatusplugin = EC2
batchsubmitplugin = EC2
batchsubmit.ec2.image = {image}
batchsubmit.ec2.flavor = t3.micro
batchsubmit.ec2.launch_via = {via}
{account}
"""


def account_keys(settings: dict[str, Any]) -> str:
    lines = []
    for kind in ("batchsubmit", "batchstatus"):
        lines.extend(f"{kind}.ec2.{k} = {v}" for k, v in settings.items())
    return "\n".join(lines)


class Pool:
    """The startd side: running instances join; a peaceful retire makes the startd leave."""

    def __init__(self, port: FakeCondor) -> None:
        self.port = port
        self.seen_retires = 0

    def sync(self, live: dict[str, str]) -> None:
        """``live``: worker id -> instance state of every instance not terminated."""
        retired = {c[1] for c in self.port.named("retire_peaceful")}
        slots, masters = [], []
        for wid, state in live.items():
            if state != "running":
                continue
            machine = f"vm-{wid}"
            masters.append({"Name": machine, "Machine": machine, "PilotFactoryWorker": wid})
            if machine not in retired:
                slots.append(
                    {
                        "Name": f"slot1@{machine}",
                        "Machine": machine,
                        "State": "Unclaimed",
                        "Activity": "Idle",
                        "SlotType": "Static",
                        "Cpus": 1,
                        "EnteredCurrentActivity": 0,
                        "MaxJobRetirementTime": 0,
                        "PilotFactoryWorker": wid,
                    }
                )
        self.port.startds = slots
        self.port.masters = masters


def census(factory_id: str) -> tuple[dict[str, str], list[str]]:
    """(worker -> state of instances not terminated, every worker tag ever launched), read from
    moto's model in this process (the threaded server shares it): the test's own look must
    not cost a DescribeInstances of 1,000 instances per cycle."""
    live: dict[str, str] = {}
    every: list[str] = []
    backend = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    for inst in backend.all_instances():
        tags = backend.tags.get(inst.id, {})
        if tags.get(TAG_FACTORY) != factory_id:
            continue
        wid = tags[TAG_WORKER]
        every.append(wid)
        if inst.state not in ("terminated", "shutting-down"):
            live[wid] = inst.state
    return live, every


def test_scale_to_1000_and_back_to_0_killed_twice(
    moto_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {
        "endpoint_url": moto_url,
        "region": "us-east-1",
        "retries": 0,
        "timeout": 30,
        "api_rate": 1000,
        "api_burst": 100,
        **key_files(tmp_path),
    }
    factory_id = f"scale-{uuid.uuid4().hex[:6]}"
    port = FakeCondor()
    kill: dict[str, int] = {}
    world = MotoWorld(port, kill)
    probe = world.cloud(account_of("ec2", settings))
    image = probe.client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    conf = tmp_path / "queues.conf"
    text = QUEUES.format(label=LABEL, image=image, via=VIA, account=account_keys(settings))
    conf.write_text(textwrap.dedent(text))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    _env, clock = make_env(port, time.time())  # moto stamps launches with the real clock
    fcfg = replace(default_factory_config(), factory_id=factory_id, raw={})
    pool = Pool(port)

    def new_factory() -> Factory:
        return Factory(fcfg, res.queues, world, clock)

    factory = new_factory()
    kills = 0
    cycles = 0
    start = time.monotonic()

    def cycle() -> dict[str, str]:
        nonlocal factory, kills, cycles
        cycles += 1
        try:
            t0 = time.monotonic()
            traces = factory.cycle()
            if os.environ.get("PF_SCALE_DEBUG"):  # one line per cycle
                for t in traces:
                    print(f"{time.monotonic() - t0:.1f}s n={t.n} {t.results} {t.notes[:2]}")
        except Killed:
            kills += 1
            factory = new_factory()  # the old one, its plugins and ports are gone
        live = census(factory_id)[0]
        pool.sync(live)
        clock.advance(60)
        return live

    # up: 1,000 idle jobs; killed after the 400th launch was answered
    port.jobs = [
        {"ClusterId": 1, "ProcId": k, "JobStatus": 1, "MATCH_APF_QUEUE": LABEL} for k in range(VMS)
    ]
    kill[LAUNCH_OP] = max(1, VMS * 2 // 5)
    up_cycles = 0
    live: dict[str, str] = {}
    while len(live) < VMS or len(port.startds) < VMS:
        live = cycle()
        up_cycles += 1
        assert up_cycles <= 6, len(live)
    up_time = time.monotonic() - start
    live, every = census(factory_id)
    assert len(live) == VMS and len(every) == len(set(every)) == VMS

    # down: no more work; killed after the first terminate batch was answered
    port.jobs = []
    kill["TerminateInstances"] = 1
    down_cycles = 0
    while live:
        live = cycle()
        down_cycles += 1
        assert down_cycles <= 12, len(live)
    wall = time.monotonic() - start

    live, every = census(factory_id)
    dupes = [w for w, n in Counter(every).items() if n > 1]
    assert kills == 2 and not kill
    assert live == {} and dupes == [] and len(every) == VMS
    calls: Counter[str] = Counter()
    for p in world.ports:
        if p is not probe:
            calls.update(p.calls)
    with capsys.disabled():
        print(
            f"\n[cloud scale, {VIA}] {VMS} VMs up in {up_cycles} cycles ({up_time:.1f}s), "
            f"down to 0 in {down_cycles} cycles; wall {wall:.1f}s; killed {kills}x; "
            f"instances left 0, duplicates 0; calls {sum(calls.values())}: "
            + ", ".join(f"{op} {n}" for op, n in sorted(calls.items()))
        )
