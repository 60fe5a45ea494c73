"""EC2 / OpenStack plugins on a small fake CloudPort and the fake condor port.

One call log is shared by both fakes, so "recorded before acting" is an order in that log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.factory.contract import (
    TAG_ENDED,
    TAG_FACTORY,
    TAG_FINGERPRINT,
    TAG_INTERRUPTED,
    TAG_LAUNCHED,
    TAG_QUEUE,
    TAG_RETIRE,
    TAG_RETIRE_MODE,
    TAG_UNRETIRED,
    TAG_WORKER,
)
from pilotfactory.factory.info import RetireMode, Worker, WorkerState
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import PluginError, QueueEnv, SubmitError
from pilotfactory.factory.ports import (
    CloudAuthError,
    CloudQuotaError,
    CondorUnreachable,
    Ec2Account,
    Instance,
    LaunchSpec,
)
from pilotfactory.plugins.batchstatus.cloud import (
    CloudBatchStatus,
    EC2BatchStatus,
    OpenStackBatchStatus,
)
from pilotfactory.plugins.batchsubmit.cloud import CloudSubmit, EC2Submit, OpenStackSubmit
from pilotfactory.plugins.cloudaccount import TAG_LAUNCHED_AS
from tests.unit.fakecondor import FakeCondor, FakeWorld, make_env

S = WorkerState
NOW = 1_700_000_000.0
Q = "ECM"
WID = "ECM-w1"


@dataclass
class FakeCloud:
    """CloudPort on a dict: launch makes pending instances, terminate makes them stopping."""

    calls: list[tuple[Any, ...]]
    instances: dict[str, Instance] = field(default_factory=dict)
    fail: dict[str, Exception] = field(default_factory=dict)
    launch_ok: int | None = None  # launches that succeed before fail["launch"] applies

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        launches = sum(1 for c in self.calls if c[0] == "launch")
        if name in self.fail and (name != "launch" or launches > (self.launch_ok or 0)):
            raise self.fail[name]

    def add(self, iid: str, state: str, **tags: str) -> None:
        base = {TAG_FACTORY: "f1", TAG_QUEUE: Q}
        self.instances[iid] = Instance(iid, state, NOW - 300, {**base, **tags})

    def launch(self, spec: LaunchSpec, count: int, tags: dict[str, str]) -> list[str]:
        self._call("launch", spec, count, dict(tags))
        ids = [f"i-{len(self.instances) + k}" for k in range(count)]
        for iid in ids:
            self.instances[iid] = Instance(iid, "pending", NOW, dict(tags))
        return ids

    def list(self, tags: dict[str, str]) -> list[Instance]:
        self._call("list", dict(tags))
        return [
            i for i in self.instances.values() if all(i.tags.get(k) == v for k, v in tags.items())
        ]

    def set_tags(self, ids: list[str], tags: dict[str, str]) -> None:
        self._call("set_tags", list(ids), dict(tags))
        for iid in set(ids) & set(self.instances):
            inst = self.instances[iid]
            self.instances[iid] = replace(inst, tags={**inst.tags, **tags})

    def terminate(self, ids: list[str]) -> None:
        self._call("terminate", list(ids))
        for iid in set(ids) & set(self.instances):
            self.instances[iid] = replace(self.instances[iid], state="stopping")

    def power_off(self, iid: str, behaviour: str = "terminate") -> None:
        """The VM powers itself off (no call): the provider ends or stops the instance by
        its shutdown behaviour and says why, as EC2's state reason does."""
        state = "terminated" if behaviour == "terminate" else "stopped"
        self.instances[iid] = replace(self.instances[iid], state=state, self_shutdown=True)


class CloudWorld(FakeWorld):
    def __init__(self, port: FakeCondor, cloud: FakeCloud) -> None:
        super().__init__(port)
        self.fake_cloud = cloud
        self.providers: list[str] = []

    def cloud(self, account: Any) -> FakeCloud:
        self.providers.append("ec2" if isinstance(account, Ec2Account) else "openstack")
        return self.fake_cloud


def setup(**startds: Any) -> tuple[FakeCondor, FakeCloud, Any, Any]:
    port = FakeCondor()
    cloud = FakeCloud(port.calls)
    env, clock = make_env(port, NOW)
    env = replace(env, world=CloudWorld(port, cloud))
    return port, cloud, env, clock


def slot(machine: str, state: str = "Unclaimed", rt: int = 86400, **kw: Any) -> dict[str, Any]:
    ad = {"Name": f"slot1@{machine}", "Machine": machine, "State": state, "SlotType": "Static"}
    ad.update(Cpus=1, EnteredCurrentActivity=NOW - 50, MaxJobRetirementTime=rt, **kw)
    return ad


def status(env: Any, cls: type[CloudBatchStatus] = OpenStackBatchStatus, **kw: Any) -> Any:
    return cls(merged(cls.PARAMS, kw), env)


def submit(env: Any, cls: type[CloudSubmit] = OpenStackSubmit, **kw: Any) -> Any:
    params = merged(cls.PARAMS, {"image": "img", "flavor": "m1.large", **kw})
    return cls(params, env, QueueEnv(Q, Q))


# ---------------------------------------------------------------------------- status

RET = {TAG_RETIRE: str(int(NOW - 30)), TAG_RETIRE_MODE: "drain"}
UNRET = {TAG_RETIRE: "", TAG_RETIRE_MODE: "drain", TAG_UNRETIRED: str(int(NOW - 600))}
# instance state, its tags, startd slots (on vm1) -> state, since
STATE_TABLE = [
    ("pending", {}, [], S.PENDING, NOW - 300),
    ("running", {}, [], S.BOOTING, NOW - 300),
    ("running", {}, [slot("vm1", PilotFactoryWorker=WID)], S.IDLE, NOW),  # first seen idle
    ("running", {}, [slot("vm1", "Claimed", PilotFactoryWorker=WID)], S.BUSY, NOW - 50),
    ("running", {}, [slot("vm1", EC2InstanceID="i-1")], S.IDLE, NOW),  # fallback join
    ("running", RET, [slot("vm1", "Claimed", PilotFactoryWorker=WID)], S.RETIRING, NOW - 30),
    ("running", RET, [], S.RETIRED, NOW - 30),
    # un-retired: the startd restarting is not RETIRED for unretire_grace, then it vanished
    ("running", {**RET, TAG_UNRETIRED: str(int(NOW - 10))}, [], S.RETIRING, NOW - 10),
    ("running", {**UNRET, TAG_UNRETIRED: str(int(NOW - 10))}, [], S.RETIRING, NOW - 10),
    ("running", UNRET, [], S.BOOTING, NOW - 300),
    ("running", UNRET, [slot("vm1", "Claimed", PilotFactoryWorker=WID)], S.BUSY, NOW - 50),
    ("error", {}, [], S.HELD, NOW - 300),
    # ended by the factory (its mark, or a retire it recorded): history, not a worker
    ("stopping", {TAG_ENDED: str(int(NOW))}, [slot("vm1", PilotFactoryWorker=WID)], None, None),
    ("terminated", {TAG_ENDED: str(int(NOW))}, [], None, None),
    ("terminated", RET, [], None, None),
    # ended without the factory asking: its capacity is lost, and the books say so
    ("terminated", {}, [], S.LOST, NOW - 300),
    ("stopped", {}, [], S.LOST, NOW - 300),
    ("terminated", UNRET, [], S.LOST, NOW - 300),
    # a spot notice on the slots: interrupted (no supply), whatever else it shows
    (
        "running",
        {},
        [slot("vm1", "Claimed", PilotFactoryWorker=WID, PilotFactoryInterruption=int(NOW + 90))],
        S.INTERRUPTED,
        NOW - 300,
    ),
    (
        "running",
        RET,
        [slot("vm1", PilotFactoryWorker=WID, PilotFactoryInterruption=int(NOW))],
        S.INTERRUPTED,
        NOW - 300,
    ),
    # the notice recorded when it was vacated: still interrupted once the startd is gone ...
    ("running", {TAG_INTERRUPTED: str(int(NOW - 20))}, [], S.INTERRUPTED, NOW - 300),
    # ... and its end by the provider is no failure (not LOST)
    ("terminated", {TAG_INTERRUPTED: str(int(NOW - 20))}, [], None, None),
    ("stopped", {TAG_INTERRUPTED: str(int(NOW - 20))}, [], None, None),
    # a notice attribute that is no time is outside text, not a notice
    (
        "running",
        {},
        [slot("vm1", PilotFactoryWorker=WID, PilotFactoryInterruption="soon")],
        S.IDLE,
        NOW,
    ),
]


@pytest.mark.parametrize(("state", "tags", "slots", "expected", "since"), STATE_TABLE)
def test_state_table(state, tags, slots, expected, since):
    port, cloud, env, _ = setup()
    cloud.add("i-1", state, **{TAG_WORKER: WID, **tags})
    port.startds.extend(slots)
    plugin = status(env)
    plugin.refresh()
    info = plugin.info(Q)
    if expected is None:
        assert info.workers == ()
        return
    (w,) = info.workers
    assert (w.id, w.instance_id, w.state) == (WID, "i-1", expected)
    if since is not None:
        assert w.since == since
    if slots and expected is not S.PENDING:
        assert w.machine == "vm1" and w.retirement_time == 86400
    if TAG_RETIRE_MODE in tags:
        assert w.retire_mode == "drain"
    assert (w.interruption is not None) is (expected is S.INTERRUPTED)
    assert w.vacated is (TAG_INTERRUPTED in tags)


def test_held_carries_the_fault_and_untagged_worker_is_its_instance():
    _port, cloud, env, _ = setup()
    cloud.instances["i-9"] = Instance(
        "i-9", "error", NOW, {TAG_FACTORY: "f1", TAG_QUEUE: Q}, fault="No valid host"
    )
    plugin = status(env)
    plugin.refresh()
    (w,) = plugin.info(Q).workers
    assert (w.id, w.state, w.hold_reason) == ("i-9", S.HELD, "No valid host")


def test_pending_age_counts_from_the_factorys_launch_mark():
    """A provider stamp older than the launch call (moto: 2015-01-01) does not make a fresh
    request look stuck; a fulfilled request's instance counts from its own launch."""
    _port, cloud, env, _ = setup()
    mark = {TAG_FACTORY: "f1", TAG_QUEUE: Q, TAG_LAUNCHED: str(int(NOW - 60))}
    cloud.instances["sir-1"] = Instance("sir-1", "pending", 1420070400.0, dict(mark))
    cloud.instances["i-2"] = Instance("i-2", "running", NOW - 20, dict(mark))
    plugin = status(env)
    plugin.refresh()
    since = {w.instance_id: w.since for w in plugin.info(Q).workers}
    assert since == {"sir-1": NOW - 60, "i-2": NOW - 20}


def test_open_spot_request_carries_the_providers_reason():
    _port, cloud, env, _ = setup()
    why = "capacity-not-available: no m5 in us-east-1a"
    cloud.instances["sir-1"] = Instance(
        "sir-1", "pending", NOW, {TAG_FACTORY: "f1", TAG_QUEUE: Q}, fault=why
    )
    plugin = status(env)
    plugin.refresh()
    (w,) = plugin.info(Q).workers
    assert (w.state, w.hold_reason) == (S.PENDING, why)


def test_one_list_one_startd_one_master_query_and_pool_gauge():
    port, cloud, env, _ = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    port.startds.extend([slot("vm1", PilotFactoryWorker=WID), slot("wn1", EC2InstanceID="x")])
    port.masters.append({"Name": "vm1", "Machine": "vm1", "PilotFactoryWorker": WID})
    plugin = status(env)
    plugin.refresh()
    assert [c[0] for c in port.calls] == ["list", "query_startds", "query_masters"]
    assert port.calls[0][1] == {TAG_FACTORY: "f1"}
    info = plugin.info(Q)
    assert info.pool_startds == 2 and info.workers[0].master_seen is True
    assert info.unmatched_startds == ()  # wn1 carries no worker id: not ours to judge


def test_source_key_per_account_and_collector():
    key = OpenStackBatchStatus.source_key
    p = merged(OpenStackBatchStatus.PARAMS, {"auth_url": "https://k/v3", "project_name": "a"})
    assert key(p) == key(dict(p))
    assert key(p) != key({**p, "project_name": "b"})
    assert key(p) != key({**p, "collectorhost": "cm2"})
    assert key(p) != EC2BatchStatus.source_key(merged(EC2BatchStatus.PARAMS, {}))


def test_orphans_reported_never_workers():
    port, cloud, env, _ = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    cloud.add("i-2", "running", **{TAG_WORKER: "old-1", TAG_QUEUE: "REMOVED"})
    port.startds.extend(
        [
            slot("vm1", PilotFactoryWorker=WID),
            slot("vm7", PilotFactoryWorker="ghost"),  # ours by its word, no instance
            slot("vm8", PilotFactoryWorker="theirs", PilotFactoryId="other-factory"),
        ]
    )
    plugin = status(env)
    plugin.refresh()
    assert plugin.info("OTHER").workers == ()
    info = plugin.info(Q)
    assert [w.id for w in info.workers] == [WID]
    assert info.unmatched_startds == ("vm7", "instance i-2 (queue REMOVED)")


def test_recheck_rereads_instances_and_their_startds():
    port, cloud, env, _ = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    cloud.add("i-2", "pending", **{TAG_WORKER: "w2"})
    port.startds.append(slot("vm1", "Claimed", PilotFactoryWorker=WID))
    plugin = status(env)
    ws = [Worker(WID, Q, S.IDLE, 0, "i-1", "vm1"), Worker("w2", Q, S.PENDING, 0, "i-2")]
    out = plugin.recheck(ws)
    assert [c[0] for c in port.calls] == ["list", "query_startds"]
    assert port.calls[0][1] == {TAG_FACTORY: "f1", TAG_QUEUE: Q}
    assert f'PilotFactoryWorker =?= "{WID}"' in port.calls[1][3]
    assert (out[WID].state, out["w2"].state) == (S.BUSY, S.PENDING)


# ---------------------------------------------------------------------------- submit


def test_submit_one_launch_per_worker_with_its_own_tags_and_user_data():
    port, _cloud, env, _ = setup()
    plugin = submit(env, key_name="my_key", security_groups=["default"], collectorhost="cm")
    ids = plugin.submit(2)
    launches = [c for c in port.calls if c[0] == "launch"]
    assert len(launches) == 2 and len(set(ids)) == 2
    for wid, (_, spec, count, tags) in zip(ids, launches, strict=True):
        tags = dict(tags)
        assert re.fullmatch(r"[0-9a-f]{16}", tags.pop(TAG_FINGERPRINT))  # no lease: no lease tag
        assert count == 1 and tags == {
            TAG_FACTORY: "f1",
            TAG_QUEUE: Q,
            TAG_WORKER: wid,
            TAG_LAUNCHED: str(int(NOW)),
            TAG_LAUNCHED_AS: "m1.large",
        }
        assert (spec.flavor, spec.key_name, spec.security_groups) == (
            "m1.large",
            "my_key",
            ("default",),
        )
        assert spec.user_data.startswith("#!/bin/sh\n")
        assert f'PilotFactoryWorker = "{wid}"' in spec.user_data
        assert "COLLECTOR_HOST = cm" in spec.user_data and "STARTD_ATTRS" in spec.user_data
        # the VM takes only the jobs of the label it was bought for
        assert f'&& (TARGET.MATCH_APF_QUEUE =?= "{Q}")' in spec.user_data
    assert wid.startswith("ECM-") and plugin.submit(1)[0] not in ids
    assert env.world.providers == ["openstack"]  # one client, cached


def test_user_data_templates(tmp_path: Path):
    _port, cloud, env, _ = setup()
    tpl = tmp_path / "ud"
    tpl.write_text(
        "#cloud-config\nwrite_files:\n- content: |\n    {condor_config}\n  path: /x ${HOME}\n"
    )
    (wid,) = submit(env, user_data_file=str(tpl)).submit(1)
    ud = cloud.calls[-1][1].user_data
    assert f'    PilotFactoryWorker = "{wid}"\n    PilotFactoryId = "f1"' in ud  # YAML indent
    assert "${HOME}" in ud and "PILOTFACTORY_EOF" not in ud
    yaml = pytest.importorskip("yaml")
    content = yaml.safe_load(ud)["write_files"][0]["content"]
    assert content.splitlines()[0] == f'PilotFactoryWorker = "{wid}"' and "STARTD_ATTRS" in content
    tpl.write_text("#!/bin/bash\necho hi {queue}\n")
    submit(env, user_data_file=str(tpl)).submit(1)
    ud = cloud.calls[-1][1].user_data
    assert ud.startswith("#!/bin/bash\necho hi ECM\n") and "99-pilotfactory.conf" in ud
    tpl.write_text("#cloud-config\n{}\n")
    with pytest.raises(SubmitError, match=r"no \{worker_id\} or \{condor_config\} placeholder"):
        submit(env, user_data_file=str(tpl)).submit(1)
    with pytest.raises(SubmitError, match="user_data_file"):
        submit(env, user_data_file=str(tmp_path / "missing")).submit(1)
    with pytest.raises(SubmitError, match=r"batchsubmit\.openstack\.image is not set"):
        submit(env, image=None).submit(1)


def test_ec2_params_alias_and_spot():
    _port, cloud, env, _ = setup()
    params = merged(EC2Submit.PARAMS, {"image": "ami-1", "flavor": "t3.micro", "spot_price": 0.1})
    EC2Submit(params, env, QueueEnv(Q, Q)).submit(1)
    assert cloud.calls[-1][1].spot_price == 0.1 and env.world.providers == ["ec2"]
    assert "instance_type" in next(p for p in EC2Submit.PARAMS if p.name == "flavor").aliases
    assert all(p.name != "spot_price" for p in OpenStackSubmit.PARAMS)


@pytest.mark.parametrize(
    "error", [CloudQuotaError("InstanceLimitExceeded: 3 of 3"), CloudAuthError("HTTP 401")]
)
def test_cloud_errors_become_submit_errors_with_the_provider_text(error):
    _port, cloud, env, _ = setup()
    cloud.fail["launch"] = error
    with pytest.raises(SubmitError, match=str(error)):
        submit(env).submit(2)
    cloud.calls.clear()
    cloud.launch_ok = 1  # quota hit after one launch: still an error (back off), VM 1 tagged
    with pytest.raises(SubmitError):
        submit(env).submit(3)
    assert [i.tags[TAG_QUEUE] for i in cloud.instances.values()] == [Q]


def vm(
    i: int, rt: float | None = 86400, mode: RetireMode | None = None, machine: str | None = "vm"
):
    m = f"{machine}{i}" if machine else None
    return Worker(f"w{i}", Q, S.BUSY, 0, f"i-{i}", m, retirement_time=rt, retire_mode=mode)


def test_retire_records_before_acting():
    port, _cloud, env, _ = setup()
    plugin = submit(env)
    plugin.retire([vm(1), vm(4, machine=None)], RetireMode.DRAIN)
    stamp = str(int(NOW))
    assert [c for c in port.calls if c[0] != "query_startds"] == [
        ("set_tags", ["i-1"], {TAG_RETIRE: stamp, TAG_RETIRE_MODE: "drain"}),
        ("set_tags", ["i-4"], {TAG_ENDED: stamp}),
        ("terminate", ["i-4"]),
        ("drain", "vm1", "pilotfactory"),
    ]
    port.calls.clear()
    plugin.retire([vm(2, rt=0), vm(3, rt=None)], RetireMode.PEACEFUL)
    assert [c for c in port.calls if c[0] != "query_startds"] == [
        ("set_tags", ["i-2", "i-3"], {TAG_RETIRE: stamp, TAG_RETIRE_MODE: "peaceful"}),
        ("retire_peaceful", "vm2"),
        ("retire_peaceful", "vm3"),
    ]
    port.calls.clear()
    plugin.retire([vm(5)], RetireMode.KILL)
    assert [c[0] for c in port.calls] == ["set_tags", "set_tags", "terminate"]


def test_retire_failure_still_recorded_and_raised():
    port, _cloud, env, _ = setup()
    port.fail["drain"] = CondorUnreachable("startd gone")
    with pytest.raises(PluginError, match="startd gone"):
        submit(env).retire([vm(1), vm(2)], RetireMode.DRAIN)
    assert [c[0] for c in port.calls] == ["set_tags", "drain", "drain"]


def test_unretire_acts_then_records():
    port, _cloud, env, _ = setup()
    port.fail["unretire"] = CondorUnreachable("no master")
    with pytest.raises(PluginError, match="no master"):
        submit(env).unretire(
            [vm(1, mode=RetireMode.DRAIN), vm(2, mode=RetireMode.PEACEFUL), vm(3, mode=None)]
        )
    stamp = str(int(NOW))
    assert port.calls == [
        ("cancel_drain", "vm1"),
        ("unretire", "vm2"),
        ("set_tags", ["i-1"], {TAG_UNRETIRED: stamp, TAG_RETIRE: ""}),
    ]  # the failed un-retire of w2 is not recorded


def test_cancel_reap_terminate_and_refuse_other_queues():
    port, _cloud, env, _ = setup()
    plugin = submit(env)
    plugin.cancel([Worker("w1", Q, S.PENDING, 0, "sir-1")])
    plugin.reap([vm(2), replace(vm(3), queue="OTHER")])
    ended = {TAG_ENDED: str(int(NOW))}
    assert port.calls == [
        ("set_tags", ["sir-1"], ended),
        ("terminate", ["sir-1"]),
        ("set_tags", ["i-2"], ended),
        ("terminate", ["i-2"]),
    ]


def test_an_instance_ended_behind_the_factorys_back_is_lost_once():
    """Terminated without the factory's mark: LOST, with the cause; reaping it marks it, and
    the next cycle it is history."""
    _port, cloud, env, _ = setup()
    cloud.instances["i-7"] = Instance(
        "i-7", "terminated", NOW - 50, {TAG_FACTORY: "f1", TAG_QUEUE: Q, TAG_WORKER: WID}
    )
    stat = status(env)
    stat.refresh()
    (w,) = stat.info(Q).workers
    assert w.state is S.LOST and "never asked" in (w.hold_reason or "")
    submit(env).reap([w])
    stat.refresh()
    assert stat.info(Q).workers == ()


def test_roundtrip_through_the_tags():
    """What the submit plugin records is what the status plugin reads back."""
    port, cloud, env, clock = setup()
    sub, stat = submit(env), status(env)

    def state() -> Worker:
        stat.refresh()
        (w,) = stat.info(Q).workers
        return w

    (wid,) = sub.submit(1)
    assert state().state == S.PENDING
    (iid,) = cloud.instances
    cloud.instances[iid] = replace(cloud.instances[iid], state="running")
    assert state().state == S.BOOTING
    port.startds.append(slot("vm1", PilotFactoryWorker=wid))
    w = state()
    assert (w.id, w.state, w.machine) == (wid, S.IDLE, "vm1")
    sub.retire([w], RetireMode.DRAIN)
    w = state()
    assert (w.state, w.retire_mode, w.retire_requested_at) == (S.RETIRING, "drain", NOW)
    clock.advance(60)
    sub.unretire([w])
    w = state()
    assert (w.state, w.retire_requested_at, w.unretired_at) == (S.IDLE, None, NOW + 60)
    clock.advance(60)
    sub.retire([w], RetireMode.PEACEFUL)
    port.startds.clear()  # the startd exits
    w = state()
    assert w.state == S.RETIRED
    sub.reap([w])
    stat.refresh()
    assert stat.info(Q).workers == ()  # stopping: no longer a worker
