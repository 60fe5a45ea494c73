"""HTCondor plugins against a dict-based fake port: state tables, descriptions, query counts."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.factory.info import RetireMode, Worker, WorkerState
from pilotfactory.factory.params import ParamValueError, defaults, merged
from pilotfactory.factory.plugin import PluginError, QueueEnv, SubmitError
from pilotfactory.factory.ports import CondorRejected, CondorTarget, CondorUnreachable
from pilotfactory.plugins.batchstatus.condor import (
    CondorBatchStatus,
    CondorEC2BatchStatus,
    pilot_worker,
    retire_record,
    vm_worker,
)
from pilotfactory.plugins.batchsubmit.condor_common import merge_attributes
from pilotfactory.plugins.batchsubmit.condorec2 import CondorEC2Submit
from pilotfactory.plugins.batchsubmit.condorlocal import CondorLocalSubmit
from pilotfactory.plugins.wmsstatus.condor import CondorWMSStatus
from tests.unit.fakecondor import FakeCondor, make_env

S = WorkerState
NOW = 1_700_000_000.0
Q = "BNL_CLOUD-ec2-spot"


def job(cid: int, status: int, queue: str = Q, **kw: Any) -> dict[str, Any]:
    ad = {
        "ClusterId": cid,
        "ProcId": 0,
        "JobStatus": status,
        "EnteredCurrentStatus": NOW - 100,
        "QDate": NOW - 1000,
        "JobUniverse": 9,
        "PilotFactoryId": "f1",
        "PilotFactoryQueue": queue,
        "APF_QUEUE": queue,
        "MATCH_APF_QUEUE": queue,
    }
    ad.update(kw)
    return ad


def slot(machine: str, iid: str | None, state: str = "Unclaimed", kind: str = "Static", **kw: Any):
    ad = {
        "Name": kw.pop("Name", f"slot1@{machine}"),
        "Machine": machine,
        "State": state,
        "Activity": "Busy" if state == "Claimed" else "Idle",
        "SlotType": kind,
        "Cpus": 1,
        "EnteredCurrentActivity": NOW - 50,
        "MaxJobRetirementTime": 0,
    }
    if iid:
        ad["EC2InstanceID"] = iid
    ad.update(kw)
    return ad


# ---------------------------------------------------------------------------- state tables

RUN = {"JobStartDate": NOW - 500, "EC2InstanceName": "i-1"}
RET = {"PilotFactoryRetireRequested": NOW - 30, "PilotFactoryRetireMode": "drain"}
UNRET_AT = "PilotFactoryUnretiredAt"
UNRET = {UNRET_AT: NOW - 30}
IDLE_SLOT = [slot("vm1", "i-1")]
BUSY_SLOTS = [
    slot("vm1", "i-1", "Unclaimed", "Partitionable", Cpus=2, MaxJobRetirementTime=3600),
    slot("vm1", "i-1", "Claimed", "Dynamic", Name="slot1_1@vm1", MaxJobRetirementTime=3600),
    slot("vm1", "i-1", "Claimed", "Dynamic", Name="slot1_2@vm1", MaxJobRetirementTime=3600),
]
MASTER = {"Name": "vm1", "Machine": "vm1", "EC2InstanceID": "i-1"}

VM_TABLE = [
    # id, job extras, slots, master, expected state, expected since
    ("idle-job", {"JobStatus": 1}, [], None, S.PENDING, NOW - 100),
    ("unexpanded", {"JobStatus": 0}, [], None, S.PENDING, NOW - 100),
    ("open-request", {"JobStatus": 2}, [], None, S.PENDING, NOW - 100),
    ("held", {"JobStatus": 5, "HoldReason": "quota"}, [], None, S.HELD, NOW - 100),
    ("removed", {"JobStatus": 3}, [], None, None, None),
    ("completed", {"JobStatus": 4}, [], None, None, None),
    ("booting", RUN, [], None, S.BOOTING, NOW - 500),
    ("booting-master-only", RUN, [], MASTER, S.BOOTING, NOW - 500),
    ("idle", RUN, IDLE_SLOT, None, S.IDLE, NOW - 50),
    ("busy", RUN, BUSY_SLOTS, MASTER, S.BUSY, NOW - 50),
    ("retiring", {**RUN, **RET}, BUSY_SLOTS, None, S.RETIRING, NOW - 30),
    ("retiring-idle", {**RUN, **RET}, IDLE_SLOT, None, S.RETIRING, NOW - 30),
    ("retired", {**RUN, **RET}, [], MASTER, S.RETIRED, NOW - 30),
    ("retired-no-master", {**RUN, **RET}, [], None, S.RETIRED, NOW - 30),
    ("unretired-gap", {**RUN, **UNRET}, [], MASTER, S.RETIRING, NOW - 30),
    ("unretired-back", {**RUN, **UNRET}, BUSY_SLOTS, None, S.BUSY, NOW - 50),
    ("unretired-long-ago", {**RUN, UNRET_AT: NOW - 999}, [], None, S.BOOTING, NOW - 500),
    ("retired-after-unretire", {**RUN, **RET, UNRET_AT: NOW - 60}, [], None, S.RETIRED, NOW - 30),
    ("unretire-after-retire", {**RUN, **RET, UNRET_AT: NOW - 10}, [], None, S.RETIRING, NOW - 10),
]  # fmt: skip


@pytest.mark.parametrize("extras,slots,master,state,since", [t[1:] for t in VM_TABLE],
                         ids=[t[0] for t in VM_TABLE])  # fmt: skip
def test_vm_state_table(extras, slots, master, state, since):
    ad = {**job(1, 2), **extras}
    w = vm_worker(ad, Q, NOW, slots, master, grace=120)
    if state is None:
        assert w is None
        return
    assert w is not None
    assert (w.state, w.since) == (state, since)


def test_vm_worker_details():
    ad = {**job(1, 2), **RUN}
    w = vm_worker(ad, Q, NOW, BUSY_SLOTS, MASTER, grace=120)
    assert w is not None
    assert (w.machine, w.instance_id, w.slots_busy, w.slots_total) == ("vm1", "i-1", 2, 4)
    assert w.retirement_time == 3600 and w.submitted_at == NOW - 1000
    static = [slot("vm2", "i-1", "Claimed"), slot("vm2", "i-1", Name="slot2@vm2")]
    w = vm_worker(ad, Q, NOW, static, None, grace=120)
    assert w is not None and (w.state, w.slots_busy, w.slots_total) == (S.BUSY, 1, 2)
    w = vm_worker(ad, Q, NOW, [], MASTER, grace=120)
    assert w is not None and w.machine == "vm1" and w.retirement_time is None
    held = vm_worker({**job(1, 5), "HoldReason": "bad key"}, Q, NOW, [], None, 120)
    assert held is not None and held.hold_reason == "bad key"


def test_keep_attribute_on_a_slot_marks_the_vm():
    ad = {**job(1, 2), **RUN}
    kept = [slot("vm1", "i-1", "Claimed", PilotFactoryKeep=True)]
    w = vm_worker(ad, Q, NOW, kept, MASTER, grace=120)
    assert w is not None and w.keep
    w = vm_worker(ad, Q, NOW, BUSY_SLOTS, MASTER, grace=120)
    assert w is not None and not w.keep


def test_whether_the_startd_shows_the_retire():
    ad = {**job(1, 2), **RUN, "PilotFactoryRetireRequested": NOW - 300}
    shown = [slot("vm1", "i-1", "Claimed", Activity="Retiring")]
    w = vm_worker(ad, Q, NOW, shown, MASTER, grace=120)
    assert w is not None and (w.state, w.retire_visible) == (S.RETIRING, True)
    w = vm_worker(ad, Q, NOW, [slot("vm1", "i-1", "Claimed", Draining=True)], MASTER, 120)
    assert w is not None and w.retire_visible
    w = vm_worker(ad, Q, NOW, BUSY_SLOTS, MASTER, grace=120)
    assert w is not None and (w.state, w.retire_visible) == (S.RETIRING, False)


def test_grid_job_the_gridmanager_cannot_act_on_says_why():
    """Key files the job owner cannot read: the job stays idle (no hold) with
    GridResourceUnavailableTime set; the pending worker carries that cause."""
    stuck = {
        **job(1, 1),
        "GridResource": "ec2 https://ec2.example/",
        "GridResourceUnavailableTime": 0,
    }
    w = vm_worker(stuck, Q, NOW, [], None, 120)
    assert w is not None and w.state is S.PENDING
    assert w.hold_reason is not None and "ec2 https://ec2.example/ unavailable" in w.hold_reason
    w = vm_worker(job(1, 1), Q, NOW, [], None, 120)
    assert w is not None and w.hold_reason is None


def test_unretire_grace_counts_from_last_time_the_startd_was_seen():
    # Un-retired an hour ago; the startd restarts after its last job: a short gap, not LOST.
    ad = {**job(1, 2), **RUN, "PilotFactoryUnretiredAt": NOW - 3600}
    w = vm_worker(ad, Q, NOW, [], MASTER, grace=120, last_joined=NOW - 60)
    assert w is not None and w.state == S.RETIRING
    w = vm_worker(ad, Q, NOW, [], MASTER, grace=120, last_joined=NOW - 600)
    assert w is not None and w.state == S.BOOTING


PILOT_TABLE = [(0, S.PENDING), (1, S.PENDING), (2, S.BUSY), (6, S.BUSY), (5, S.HELD),
               (3, None), (4, None)]  # fmt: skip


@pytest.mark.parametrize("status,state", PILOT_TABLE)
def test_pilot_state_table(status, state):
    w = pilot_worker(job(7, status, "BNL_CLOUD", JobUniverse=5, HoldReason="x"), "BNL_CLOUD", NOW)
    assert (w.state if w else None) == state
    if w is not None:
        assert w.since == NOW - 100 and w.id == "7.0"
        assert w.hold_reason == ("x" if status == 5 else None)


# ---------------------------------------------------------------------------- batch status


def batch(cls: type[CondorBatchStatus], port: FakeCondor, **params: Any):
    env, clock = make_env(port)
    return cls(merged(cls.PARAMS, params), env), clock


def test_batch_status_one_query_groups_by_queue():
    port = FakeCondor(
        jobs=[
            job(1, 1, "A", JobUniverse=5),
            job(2, 2, "A", JobUniverse=5, RemoteHost="slot1@wn"),
            {**job(3, 5, "B", JobUniverse=5, HoldReason="no proxy"), "PilotFactoryQueue": None},
            job(4, 4, "A", JobUniverse=5),
            job(5, 1, "C", JobUniverse=5, PilotFactoryId="other"),
        ]
    )
    plugin, _ = batch(CondorBatchStatus, port)
    plugin.refresh()
    assert port.count("query_jobs") == 1 and port.count("query_history") == 0
    assert port.named("query_jobs")[0][1] == {"PilotFactoryId": "f1"}
    a, b = plugin.info("A"), plugin.info("B")
    assert a is not None and b is not None
    assert [(w.id, w.state) for w in a.workers] == [("1.0", S.PENDING), ("2.0", S.BUSY)]
    assert a.history is None
    assert b.workers[0].state == S.HELD and b.workers[0].hold_reason == "no proxy"
    empty = plugin.info("C")
    assert empty is not None and empty.workers == () and empty.time == NOW
    assert len(port.calls) == 1  # info() never queries


def test_batch_status_history_is_one_bounded_query():
    port = FakeCondor(
        jobs=[job(1, 2, "A", JobStartDate=NOW - 100), job(2, 2, "A", JobStartDate=NOW - 9999)],
        history=[
            job(8, 4, "A", JobStartDate=NOW - 300, CompletionDate=NOW - 295),
            job(9, 3, "A", JobStartDate=NOW - 300, CompletionDate=0),
            job(10, 4, "B", JobStartDate=NOW - 300, CompletionDate=NOW - 1),
        ],
    )
    plugin, _ = batch(CondorBatchStatus, port, history_limit=50)
    plugin.want_history("A", 3600)
    plugin.want_history("B", 60)
    plugin.refresh()
    (call,) = port.named("query_history")
    assert call[1] == {"PilotFactoryId": "f1"} and call[3] == NOW - 3600 and call[4] == 50
    a, b = plugin.info("A"), plugin.info("B")
    assert a is not None and b is not None
    recs = {r.id: r for r in a.history or ()}
    assert set(recs) == {"1.0", "8.0", "9.0"}
    assert recs["1.0"].ended is None and recs["8.0"].walltime(NOW) == 5
    assert recs["9.0"].ended == NOW - 100  # removed: EnteredCurrentStatus
    assert b.history == ()  # started before B's window


def test_batch_status_maxage_and_errors():
    port = FakeCondor(jobs=[job(1, 1, "A")])
    plugin, clock = batch(CondorBatchStatus, port, maxage=300)
    assert plugin.info("A") is None  # never refreshed
    plugin.refresh()
    clock.advance(300)
    assert plugin.info("A") is not None
    clock.advance(1)
    assert plugin.info("A") is None
    port.fail["query_jobs"] = CondorUnreachable("schedd down")
    with pytest.raises(CondorUnreachable):
        plugin.refresh()
    assert plugin.info("A") is None


def test_batch_status_source_key_per_schedd():
    key = CondorBatchStatus.source_key
    assert key({"scheddhost": "s1"}) == key({"scheddhost": "s1", "maxage": 5})
    assert key({"scheddhost": "s1"}) != key({"scheddhost": "s2"})
    assert key({}) == ("Condor", CondorTarget(None, None))
    assert CondorEC2BatchStatus.source_key({}) != key({})


def test_recheck_is_one_constrained_query():
    port = FakeCondor(jobs=[job(1, 2, "A", JobUniverse=5), job(2, 1, "A", JobUniverse=5)])
    plugin, _ = batch(CondorBatchStatus, port)
    ws = [Worker("1.0", "A", S.BUSY, 0), Worker("2.0", "A", S.PENDING, 0)]
    ws.append(Worker("3.0", "A", S.PENDING, 0))
    port.jobs[1]["JobStatus"] = 2
    out = plugin.recheck(ws)
    (call,) = port.calls
    assert call[1] == {"PilotFactoryId": "f1"}
    assert call[3] == "member(ClusterId, {1, 2, 3}) && (ProcId == 0)"
    assert {k: w.state for k, w in out.items()} == {"1.0": S.BUSY, "2.0": S.BUSY}
    assert plugin.recheck([]) == {} and len(port.calls) == 1


def ec2_pool() -> FakeCondor:
    return copy.deepcopy(
        FakeCondor(
            jobs=[
                job(1, 2, **RUN),
                job(2, 2, JobStartDate=NOW - 10, EC2InstanceName="i-2"),
                job(3, 1),
                job(4, 2, "other", JobStartDate=NOW - 10, EC2InstanceName="i-4", **RET),
                job(5, 2, "pilots", JobUniverse=5),
                job(6, 2, JobStartDate=NOW - 10),
            ],
            startds=[
                *BUSY_SLOTS,
                slot("vm9", "i-9"),
                slot("vm6", None, PilotFactoryWorker="6.0"),
                slot("wn1", None),
                slot("emu", "i-1", PilotFactoryWorker=True, Name="slot9@emu"),
            ],
            masters=[MASTER, {"Name": "vm2", "Machine": "vm2", "EC2InstanceID": "i-2"}],
        )
    )


def test_ec2_status_joins_startds_one_query_each():
    port = ec2_pool()
    plugin, _ = batch(CondorEC2BatchStatus, port)
    plugin.refresh()
    assert [c[0] for c in port.calls] == ["query_jobs", "query_startds", "query_masters"]
    assert port.named("query_startds")[0][3] == (
        "EC2InstanceID =!= undefined || PilotFactoryWorker =!= undefined"
    )
    info = plugin.info(Q)
    assert info is not None
    got = {w.id: (w.state, w.machine) for w in info.workers}
    assert got == {
        "1.0": (S.BUSY, "vm1"),
        "2.0": (S.BOOTING, "vm2"),
        "3.0": (S.PENDING, None),
        "6.0": (S.IDLE, "vm6"),
    }
    assert info.unmatched_startds == ("vm9",)
    other, pilots = plugin.info("other"), plugin.info("pilots")
    assert other is not None and other.workers[0].state == S.RETIRED
    assert pilots is not None and pilots.workers[0].state == S.BUSY
    assert other.unmatched_startds == pilots.unmatched_startds == ("vm9",)
    nobody = plugin.info("nobody")
    assert nobody is not None and nobody.unmatched_startds == ("vm9",)


def test_ec2_idle_since_counts_from_first_idle_cycle():
    # A pslot's EnteredCurrentActivity stays at boot time when its dslots end.
    pslot = slot("vm1", "i-1", kind="Partitionable", Cpus=4, EnteredCurrentActivity=NOW - 5000)
    dslot = slot("vm1", "i-1", "Claimed", "Dynamic", Name="slot1_1@vm1")
    port = FakeCondor(jobs=[job(1, 2, **RUN)], startds=[pslot, dslot])
    plugin, clock = batch(CondorEC2BatchStatus, port)

    def seen() -> tuple[WorkerState, float]:
        plugin.refresh()
        info = plugin.info(Q)
        assert info is not None
        return info.workers[0].state, info.workers[0].since

    assert seen()[0] == S.BUSY
    port.startds.remove(dslot)
    clock.advance(60)
    assert seen() == (S.IDLE, NOW + 60)
    clock.advance(60)
    assert seen() == (S.IDLE, NOW + 60)
    port.startds.append(dslot)
    clock.advance(60)
    assert seen()[0] == S.BUSY
    port.startds.remove(dslot)
    clock.advance(60)
    assert seen() == (S.IDLE, NOW + 240)


def test_ec2_join_attribute_is_configurable():
    port = ec2_pool()
    for s in port.startds:
        if "EC2InstanceID" in s:
            s["InstanceId"] = s.pop("EC2InstanceID")
    plugin, _ = batch(CondorEC2BatchStatus, port, join_attribute="InstanceId")
    plugin.refresh()
    info = plugin.info(Q)
    assert info is not None
    assert {w.id: w.state for w in info.workers}["1.0"] == S.BUSY
    assert "InstanceId" in port.named("query_startds")[0][2]


def test_ec2_recheck_one_job_and_one_startd_query():
    port = ec2_pool()
    plugin, _ = batch(CondorEC2BatchStatus, port)
    ws = [Worker("1.0", Q, S.IDLE, 0, "i-1", "vm1"), Worker("2.0", Q, S.BOOTING, 0, "i-2", "vm2")]
    ws.append(Worker("3.0", Q, S.PENDING, 0))
    out = plugin.recheck(ws)
    assert [c[0] for c in port.calls] == ["query_jobs", "query_startds"]
    constraint = port.named("query_startds")[0][3]
    assert constraint == (
        '(identicalMember(EC2InstanceID, {"i-1", "i-2"})) || '
        '(identicalMember(PilotFactoryWorker, {"1.0", "2.0"}))'
    )
    assert out["1.0"].state == S.BUSY
    assert (out["2.0"].state, out["2.0"].machine) == (S.BOOTING, "vm2")  # machine kept
    assert out["3.0"].state == S.PENDING
    port.calls.clear()
    plugin.recheck([Worker("3.0", Q, S.PENDING, 0)])
    assert [c[0] for c in port.calls] == ["query_jobs"]  # nothing could be joined


# ---------------------------------------------------------------------------- WMS status


def test_wms_counts_payload_by_label():
    port = FakeCondor(
        jobs=[
            job(1, 1, "BNL_CLOUD", JobUniverse=5),
            job(2, 1, "BNL_CLOUD", JobUniverse=5),
            job(3, 2, "BNL_CLOUD", JobUniverse=5),
            job(4, 5, "BNL_CLOUD", JobUniverse=5),
            job(5, 4, "X", JobUniverse=5, PilotFactoryId="other"),
            job(6, 1, Q),  # our VM job: supply, not payload
            job(7, 0, "X", JobUniverse=9, PilotFactoryId=None),  # grid job of someone else
            {"ClusterId": 8, "ProcId": 0, "JobStatus": 1},  # unlabelled
        ]
    )
    env, clock = make_env(port)
    plugin = CondorWMSStatus(defaults(CondorWMSStatus.PARAMS), env)
    assert plugin.info("BNL_CLOUD", {}) is None
    plugin.refresh()
    (call,) = port.calls
    assert call[0] == "query_jobs" and set(call[2]) >= {"MATCH_APF_QUEUE", "JobStatus"}
    b = plugin.info("BNL_CLOUD", {})
    assert b is not None and (b.ready, b.running, b.done, b.failed) == (2, 1, 0, 1)
    x = plugin.info("X", {})
    assert x is not None and (x.ready, x.done) == (1, 1)
    anyq = plugin.info("ANY", {})
    assert anyq is not None and (anyq.ready, anyq.running, anyq.done, anyq.failed) == (3, 1, 1, 1)
    none = plugin.info(Q, {})
    assert none is not None and (none.ready, none.running) == (0, 0)
    clock.advance(601)
    assert plugin.info("X", {}) is None
    assert plugin.info("X", {"maxage": 700}) is not None


def pj(cid: int, status: int, **kw: Any) -> dict[str, Any]:
    """A payload job labelled L (not one of this factory's)."""
    return job(cid, status, "L", JobUniverse=5, PilotFactoryId=None, **kw)


SLOT = '[ Cpus = 4; Memory = 8192; OpSys = "LINUX"; EC2InstanceID = "i-template" ]'


def test_wms_counts_only_jobs_the_queues_vms_can_run():
    """An idle job whose Requirements are false on the queue's slot_ad never buys a VM: it is
    notready. Undefined is not false. Each kind of job is evaluated once."""
    fits = "TARGET.Cpus >= RequestCpus && TARGET.EC2InstanceID =!= undefined"
    port = FakeCondor(
        jobs=[
            pj(1, 1, Requirements=fits, RequestCpus=2),
            pj(2, 1, Requirements=fits, RequestCpus=2),
            pj(3, 1, Requirements=fits, RequestCpus=16),  # too big for the VM
            pj(4, 1, Requirements='TARGET.OpSys == "WINDOWS"'),  # never on these VMs
            pj(5, 1, Requirements="TARGET.GPUs >= 1"),  # undefined: may match
            pj(6, 1, Requirements=False),
            pj(7, 2, Requirements=fits, RequestCpus=16),  # running: not demand anyway
            pj(8, 1),  # no requirements at all
        ]
    )
    env, _ = make_env(port)
    plugin = CondorWMSStatus(defaults(CondorWMSStatus.PARAMS), env)
    params = {"slot_ad": SLOT}
    plugin.refresh()
    first = plugin.info_for("Q", "L", params)  # the first ask: matched from the next refresh
    assert first is not None and (first.ready, first.notready) == (7, 0)
    assert "Requirements" not in port.calls[-1][2]
    plugin.refresh()
    assert "Requirements" in port.calls[-1][2]
    info = plugin.info_for("Q", "L", params)
    assert info is not None and (info.ready, info.notready, info.running) == (4, 3, 1)
    plain = plugin.info_for("P", "L", {})  # another queue on the label without a template
    assert plain is not None and plain.ready == 7
    assert len(plugin._verdicts) == 6  # one per distinct kind of idle job


@pytest.mark.parametrize("text", ["[ Cpus = ]", "", "[]", "Cpus ="])
def test_slot_ad_that_is_no_classad_is_a_config_error(text):
    with pytest.raises(ParamValueError, match="ClassAd"):
        CondorWMSStatus.SLOT_AD.parse(text or " ")


def test_wms_alias_and_shared_source():
    assert CondorWMSStatus.ALIASES == ("CondorLocal",)
    key = CondorWMSStatus.source_key
    assert key({"collectorhost": "c", "maxage": 1}) == key({"collectorhost": "c"})
    port = FakeCondor()
    port.fail["query_jobs"] = CondorUnreachable("down")
    env, _ = make_env(port)
    with pytest.raises(CondorUnreachable):
        CondorWMSStatus(defaults(CondorWMSStatus.PARAMS), env).refresh()


# ---------------------------------------------------------------------------- submit


def local(tmp_path: Path, port: FakeCondor, generic: dict[str, str] | None = None, **params: Any):
    env, _ = make_env(port, settings={"baseLogDir": str(tmp_path / "logs")})
    queue = QueueEnv("BNL_CLOUD", "BNL_CLOUD", generic or {})
    return CondorLocalSubmit(merged(CondorLocalSubmit.PARAMS, params), env, queue)


def test_local_description_labels_env_and_logs(tmp_path):
    port = FakeCondor()
    p = local(tmp_path, port, {"executable": "/generic.sh", "executable.arguments": "-g"},
              executable="/usr/libexec/wrapper.sh", environ="A=1 B=2")  # fmt: skip
    assert p.submit(3) == ["101.0", "101.1", "101.2"]
    (_, desc, count), = port.named("submit")  # fmt: skip
    logdir = tmp_path / "logs" / "2023-11-14" / "BNL_CLOUD"
    assert logdir.is_dir() and count == 3
    assert desc == {
        "universe": "vanilla",
        "executable": "/usr/libexec/wrapper.sh",
        "arguments": "-g",
        "should_transfer_files": "IF_NEEDED",
        "+TransferOutput": '""',
        "output": f"{logdir}/$(Cluster).$(Process).out",
        "error": f"{logdir}/$(Cluster).$(Process).err",
        "log": f"{logdir}/BNL_CLOUD.log",
        "initialdir": str(logdir),
        "environment": '"APFFID=f1 APFCID=$(Cluster).$(Process) FACTORYQUEUE=BNL_CLOUD A=1 B=2"',
        "+MATCH_APF_QUEUE": '"BNL_CLOUD"',
        "+APF_QUEUE": '"BNL_CLOUD"',
        "+FACTORY_JOBID": '"f1#$(Cluster).$(Process)"',
        "+PilotFactoryId": '"f1"',
        "+PilotFactoryQueue": '"BNL_CLOUD"',
    }
    assert p.submit(0) == [] and port.count("submit") == 1


def test_condor_attributes_merge(caplog):
    base = {"universe": "vanilla", "+PilotFactoryId": '"f1"', "+Foo": "1"}
    extra = {"Universe": "grid", "request_memory": "2000", "MY.Foo": "2", "+pilotfactoryid": '"x"'}
    with caplog.at_level(logging.WARNING):
        out = merge_attributes(base, extra, "Q1")
    assert out == {"Universe": "grid", "+PilotFactoryId": '"f1"', "MY.Foo": "2",
                   "request_memory": "2000"}  # fmt: skip
    assert "[Q1]" in caplog.text and "+pilotfactoryid" in caplog.text


def test_local_proxy_resolution(tmp_path):
    port = FakeCondor()
    exe = {"executable": "/w.sh"}
    p = local(tmp_path, port, proxy="atlas-production", proxy_dir=str(tmp_path), **exe)
    with pytest.raises(SubmitError, match=r"BNL_CLOUD.*x509up_atlas-production"):
        p.submit(1)
    (tmp_path / "x509up_atlas-production").write_text("x")
    (tmp_path / "x509up_atlas-production").chmod(0o644)
    with pytest.raises(SubmitError, match=r"accessible by group or others \(mode 0644\)"):
        p.submit(1)  # a proxy holds a private key
    (tmp_path / "x509up_atlas-production").chmod(0o600)
    p.submit(1)
    assert port.named("submit")[0][1]["x509userproxy"] == str(tmp_path / "x509up_atlas-production")
    path = tmp_path / "my.pem"
    path.write_text("x")
    path.chmod(0o600)
    p = local(tmp_path, port, proxy=str(path), **exe)
    assert p.description()["x509userproxy"] == str(path)
    assert "x509userproxy" not in local(tmp_path, port, **exe).description()


def test_local_errors_and_removal(tmp_path):
    port = FakeCondor()
    with pytest.raises(SubmitError, match="no executable"):
        local(tmp_path, port).submit(1)
    p = local(tmp_path, port, executable="/w.sh", condor_attributes={"+X": "1"})
    port.fail["submit"] = CondorRejected("bad description")
    with pytest.raises(SubmitError, match=r"BNL_CLOUD.*bad description"):
        p.submit(2)
    ws = [Worker("1.0", "BNL_CLOUD", S.BUSY, 0), Worker("2.0", "elsewhere", S.BUSY, 0)]
    p.cancel(ws)
    p.retire(ws, RetireMode.PEACEFUL)
    p.reap(ws[:1])
    p.unretire(ws)
    assert [c[:2] for c in port.named("remove")] == [("remove", ["1.0"])] * 3
    assert port.count("edit") == 0


def ec2(tmp_path: Path, port: FakeCondor, **params: Any) -> CondorEC2Submit:
    env, _ = make_env(port, settings={"baseLogDir": str(tmp_path / "logs")})
    for name in ("access.key", "secret.key"):
        key = tmp_path / name
        key.write_text("k")
        key.chmod(0o600)
    base = {
        "gridresource": "https://ec2.amazonaws.com/",
        "ami_id": "ami-7a21bd13",
        "instance_type": "m1.xlarge",
        "access_key_id": str(tmp_path / "access.key"),
        "secret_access_key": str(tmp_path / "secret.key"),
    }
    return CondorEC2Submit(merged(CondorEC2Submit.PARAMS, {**base, **params}), env,
                           QueueEnv(Q, "BNL_CLOUD"))  # fmt: skip


@pytest.mark.parametrize("spelling", ["spot_price", "ec2_spot_price"])
def test_ec2_description(tmp_path, spelling):
    (param,) = [p for p in CondorEC2Submit.PARAMS if spelling in (p.name, *p.aliases)]
    assert param.name == "spot_price" and param.parse("0.156") == 0.156
    port = FakeCondor()
    ud = tmp_path / "ud"
    ud.write_text("#!/bin/sh\necho {queue} [{worker_id}]\n{condor_config}\n")
    plugin = ec2(tmp_path, port, spot_price=0.156, security_groups=["a", "b"],
                 user_data_file=str(ud), condor_attributes={"ec2_keypair": "k"})  # fmt: skip
    plugin.submit(2)
    desc = port.named("submit")[0][1]
    assert {k: desc[k] for k in ("universe", "grid_resource", "executable", "ec2_spot_price")} == {
        "universe": "grid",
        "grid_resource": "ec2 https://ec2.amazonaws.com/",
        "executable": Q,
        "ec2_spot_price": "0.156",
    }
    assert desc["ec2_security_groups"] == "a, b"
    # the template rendered once for the batch, into an owner-only file beside the logs
    rendered = Path(desc["ec2_user_data_file"])
    assert rendered.parent == Path(desc["initialdir"]) and rendered.stat().st_mode & 0o777 == 0o600
    text = rendered.read_text()
    assert text.startswith(f"#!/bin/sh\necho {Q} []\n") and f'PilotFactoryQueue = "{Q}"' in text
    assert "PilotFactoryWorker" not in text, "no worker id is known: the VM claims none"
    assert desc["ec2_ami_id"] == "ami-7a21bd13" and desc["ec2_keypair"] == "k"
    assert desc["ec2_access_key_id"] == str(tmp_path / "access.key")
    assert desc["ec2_tag_pilotfactory_factory"] == "f1" and desc["+PilotFactoryQueue"] == f'"{Q}"'
    assert "ec2_spot_price" not in ec2(tmp_path, port).description()


def test_ec2_credentials_checked(tmp_path):
    port = FakeCondor()
    plugin = ec2(tmp_path, port)
    os.chmod(tmp_path / "secret.key", 0o644)
    with pytest.raises(SubmitError, match=r"BNL_CLOUD-ec2-spot.*secret.key.*readable"):
        plugin.submit(1)
    plugin = ec2(tmp_path, port, access_key_id=str(tmp_path / "missing"))
    with pytest.raises(SubmitError, match="missing"):
        plugin.submit(1)
    with pytest.raises(SubmitError, match="user_data_file"):
        ec2(tmp_path, port, user_data="a\nb").submit(1)
    assert port.count("submit") == 0


def vm(i: int, rt: float | None = 3600, mode: RetireMode | None = None, machine: str | None = "vm"):
    m = f"{machine}{i}" if machine else None
    return Worker(f"{i}.0", Q, S.BUSY, 0, f"i-{i}", m, retirement_time=rt, retire_mode=mode)


def test_ec2_retire_sends_the_planned_mode(tmp_path):
    """The planner chose drain or peaceful per worker; the plugin sends exactly that (the
    fallback from drain is the planner's: test_planner.py::test_drain_falls_back_...)."""
    port = FakeCondor()
    plugin = ec2(tmp_path, port)
    plugin.retire([vm(1), vm(2, rt=0), vm(4, machine=None)], RetireMode.DRAIN)
    assert port.named("remove")[0][1] == ["4.0"]
    assert [c[1] for c in port.named("drain")] == ["vm1", "vm2"]
    edits = [c[1:] for c in port.named("edit")]
    assert edits == [(["1.0", "2.0"], "PilotFactoryRetireRequested", str(int(NOW)))]  # drain
    port.calls.clear()
    plugin.retire([vm(5)], RetireMode.KILL)
    assert [c[0] for c in port.calls] == ["edit", "remove"]
    assert port.named("edit")[0][1:] == (["5.0"], "PilotFactoryRetireMode", f'"kill {int(NOW)}"')
    port.calls.clear()
    plugin.retire([vm(6), vm(7, rt=None)], RetireMode.PEACEFUL)
    assert port.named("retire_peaceful") == [("retire_peaceful", "vm6"), ("retire_peaceful", "vm7")]


def test_ec2_retire_failure_still_recorded_and_raised(tmp_path):
    port = FakeCondor()
    port.fail["drain"] = CondorUnreachable("startd gone")
    plugin = ec2(tmp_path, port)
    with pytest.raises(PluginError, match="startd gone"):
        plugin.retire([vm(1), vm(2)], RetireMode.DRAIN)
    assert port.count("drain") == 2 and port.count("edit") == 1


def test_ec2_unretire(tmp_path):
    port = FakeCondor()
    port.fail["unretire"] = CondorUnreachable("no master")
    plugin = ec2(tmp_path, port)
    with pytest.raises(PluginError, match="no master"):
        plugin.unretire(
            [vm(1, mode=RetireMode.DRAIN), vm(2, mode=RetireMode.PEACEFUL), vm(3, mode=None)]
        )
    assert port.named("cancel_drain") == [("cancel_drain", "vm1")]
    assert port.named("unretire") == [("unretire", "vm2")]
    assert [c[1:] for c in port.named("edit")] == [
        (["1.0"], "PilotFactoryUnretiredAt", str(int(NOW))),
    ]  # one edit; the failed un-retire of 2.0 is not recorded


def test_ec2_one_cycles_retires_are_one_edit_per_mode(tmp_path):
    """Drain for some VMs and peaceful for others in one cycle: one request-time edit for the
    drained ones (no mode recorded means drain), one mode-and-time edit for the peaceful ones,
    one removal; a cycle in one mode is one edit."""
    port = FakeCondor()
    plugin = ec2(tmp_path, port)
    plugin.retire_groups(
        [([vm(1), vm(2, machine=None)], RetireMode.DRAIN), ([vm(3), vm(4)], RetireMode.PEACEFUL)]
    )
    assert [c[1:] for c in port.named("edit")] == [
        (["1.0"], "PilotFactoryRetireRequested", str(int(NOW))),
        (["3.0", "4.0"], "PilotFactoryRetireMode", f'"peaceful {int(NOW)}"'),
    ]
    assert [c[1] for c in port.named("remove")] == [["2.0"]]
    assert [c[1] for c in port.named("drain")] == ["vm1"]
    assert [c[1] for c in port.named("retire_peaceful")] == ["vm3", "vm4"]


@pytest.mark.parametrize(
    "record, want",
    [
        ({"PilotFactoryRetireMode": f"peaceful {int(NOW) - 30}"}, (NOW - 30, None, "peaceful")),
        # a drain after an un-retired peaceful retire: the older mode record is not read
        (
            {
                "PilotFactoryRetireMode": f"peaceful {int(NOW) - 300}",
                "PilotFactoryUnretiredAt": NOW - 200,
                "PilotFactoryRetireRequested": NOW - 30,
            },
            (NOW - 30, NOW - 200, None),
        ),
        # and the other way round
        (
            {
                "PilotFactoryRetireRequested": NOW - 300,
                "PilotFactoryUnretiredAt": NOW - 200,
                "PilotFactoryRetireMode": f"kill {int(NOW) - 30}",
            },
            (NOW - 30, NOW - 200, "kill"),
        ),
        # the record before modes carried their time: a bare mode goes with the request
        (
            {"PilotFactoryRetireRequested": NOW - 30, "PilotFactoryRetireMode": "peaceful"},
            (NOW - 30, None, "peaceful"),
        ),
        # outside text in the mode attribute is not a retire
        ({"PilotFactoryRetireMode": "soon 12"}, (None, None, None)),
        ({"PilotFactoryRetireMode": "peaceful later"}, (None, None, None)),
    ],
)
def test_the_retire_record_reads_back(record, want):
    assert retire_record({**job(1, 2, **RUN), **record}) == want


def test_an_unretire_then_a_drain_reads_back_as_a_drain_retire():
    """The un-retire leaves the old mode record: the later drain (a time alone) wins."""
    ad = {
        **job(1, 2, **RUN),
        "PilotFactoryRetireMode": f"peaceful {int(NOW) - 300}",
        "PilotFactoryUnretiredAt": NOW - 200,
        "PilotFactoryRetireRequested": NOW - 30,
    }
    w = vm_worker(ad, Q, NOW, copy.deepcopy(BUSY_SLOTS), MASTER, grace=120)
    assert w is not None and w.state is S.RETIRING and w.retire_mode is RetireMode.DRAIN


def test_a_retire_recorded_without_a_mode_reads_back_as_drain():
    ad = {**job(1, 2, **RUN), "PilotFactoryRetireRequested": NOW - 30}
    w = vm_worker(ad, Q, NOW, copy.deepcopy(BUSY_SLOTS), MASTER, grace=120)
    assert w is not None and w.state is S.RETIRING and w.retire_mode is RetireMode.DRAIN
    plain = vm_worker(job(1, 2, **RUN), Q, NOW, copy.deepcopy(BUSY_SLOTS), MASTER, grace=120)
    assert plain is not None and plain.retire_mode is None


def test_ec2_cancel_and_reap_remove(tmp_path):
    port = FakeCondor()
    plugin = ec2(tmp_path, port)
    plugin.cancel([vm(1, machine=None)])
    plugin.reap([vm(2)])
    assert [c[1] for c in port.named("remove")] == [["1.0"], ["2.0"]]


def test_retire_roundtrip_through_the_job_ad(tmp_path):
    """What the submit plugin records is what the status plugin reads back."""
    port = FakeCondor(jobs=[job(1, 2, **RUN)], startds=copy.deepcopy(BUSY_SLOTS), masters=[MASTER])
    status, clock = batch(CondorEC2BatchStatus, port)
    submit = ec2(tmp_path, port)
    submit.env = status.env

    def state() -> Worker:
        status.refresh()
        info = status.info(Q)
        assert info is not None
        return info.workers[0]

    w = state()
    assert w.state == S.BUSY
    submit.retire([w], RetireMode.DRAIN)
    w = state()
    assert (w.state, w.retire_mode, w.retire_requested_at) == (S.RETIRING, "drain", NOW)
    clock.advance(10)
    submit.unretire([w])
    w = state()
    assert (w.state, w.retire_requested_at, w.unretired_at) == (S.BUSY, None, NOW + 10)
    submit.retire([w], RetireMode.PEACEFUL)  # same second as... later: retire wins again
    clock.advance(60)
    port.startds.clear()  # the startd exits after its last job
    w = state()
    assert w.state == S.RETIRED
    submit.unretire([w])
    w = state()  # condor_on: the master restarts the startd; gap within the grace
    assert w.state == S.RETIRING
    clock.advance(121)
    assert state().state == S.BOOTING  # never came back: the planner times it out as LOST


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (1, S.PENDING),
        (2, S.BUSY),
        (5, S.HELD),
        (7, S.UNKNOWN),
        (99, S.UNKNOWN),
        (3, None),
        (4, None),
    ],
)
def test_a_pilot_in_a_status_the_factory_does_not_know_stays_on_the_books(status, state):
    """A suspended pilot (JobStatus 7), or one in a status HTCondor adds later, is UNKNOWN:
    still supply, never dropped; removed and completed jobs are no workers."""
    w = pilot_worker({**job(1, status), "JobUniverse": 5}, Q, NOW)
    assert (w.state if w else None) is state


def test_a_suspended_vm_job_stays_on_the_books():
    w = vm_worker(job(1, 7, **RUN), Q, NOW, [], None, grace=120)
    assert w is not None and w.state is S.UNKNOWN
    assert vm_worker(job(1, 3, **RUN), Q, NOW, [], None, grace=120) is None


def test_suspended_pilots_count_as_running_supply():
    port = FakeCondor(jobs=[{**job(k, 7), "JobUniverse": 5} for k in range(3)])
    src, _ = batch(CondorBatchStatus, port)
    src.refresh()
    info = src.info(Q)
    assert info is not None and info.count(S.UNKNOWN) == 3
    assert info.running == 3 and info.supply == 3 and info.pending == 0


def test_a_queue_never_counts_its_own_pilots_as_its_waiting_work():
    """Queue A's pilots carry the label A. A's wmsqueue being A, it would see its own idle
    pilots as demand and feed on itself; the VM queue V that reads label A (the two-queue
    pool) must still see them, as must any queue of another factory."""
    pilots = [{**job(k, 1, queue="A"), "JobUniverse": 5, "MATCH_APF_QUEUE": "A"} for k in range(3)]
    payload = [{"ClusterId": 90 + k, "ProcId": 0, "JobStatus": 1, "MATCH_APF_QUEUE": "A"}
               for k in range(2)]  # fmt: skip
    port = FakeCondor(jobs=pilots + payload)
    env, _ = make_env(port)
    wms = CondorWMSStatus(merged(CondorWMSStatus.PARAMS, {}), env)
    wms.refresh()
    own = wms.info_for("A", "A", {})
    other = wms.info_for("V", "A", {})
    assert own is not None and own.ready == 2  # the payload only
    assert other is not None and other.ready == 5  # A's pilots are V's demand
    any_label = wms.info_for("A", "ANY", {})
    assert any_label is not None and any_label.ready == 2
    assert wms.info("A", {}).ready == 5  # the plain view is unchanged


def test_another_factorys_startds_are_not_our_unmatched_ones():
    """Two factories feed one collector: a startd that says it is the other factory's is not
    reported as an orphan of ours; an unlabelled one (a VM we may have lost) still is."""
    startds = [
        slot("theirs", "i-t", PilotFactoryId="other-factory"),
        slot("ours", "i-o", PilotFactoryId="f1"),
        slot("unlabelled", "i-u"),
    ]
    port = FakeCondor(jobs=[], startds=startds, masters=[])
    plugin, _ = batch(CondorEC2BatchStatus, port)
    plugin.refresh()
    info = plugin.info(Q)
    assert info is not None and info.unmatched_startds == ("ours", "unlabelled")


def test_the_breaker_gauge_counts_steady_slots_of_workers_not_being_retired():
    """Payload ending on a partitionable slot removes dynamic slots, and the factory's own
    drains remove retiring VMs: neither may look like a collector losing ads."""
    startds = [
        slot("vm1", "i-1", kind="Partitionable", Cpus=2),
        slot("vm1", "i-1", "Claimed", kind="Dynamic", Name="slot1_1@vm1"),
        slot("vm1", "i-1", "Claimed", kind="Dynamic", Name="slot1_2@vm1"),
        slot("vm2", "i-2", kind="Partitionable", Cpus=4),
    ]
    jobs = [
        job(1, 2, **RUN),
        job(2, 2, JobStartDate=NOW - 500, EC2InstanceName="i-2",
            PilotFactoryRetireRequested=NOW - 30),
    ]  # fmt: skip
    port = FakeCondor(jobs=jobs, startds=startds, masters=[])
    plugin, _ = batch(CondorEC2BatchStatus, port)
    plugin.refresh()
    info = plugin.info(Q)
    assert info is not None and info.pool_startds == 1  # vm1's pslot; vm2 is being retired


def test_the_gauge_says_which_ads_left_it_on_purpose():
    """A VM counted last cycle whose retire is recorded since, and whose master still
    advertises: its ads are ``pool_left``, so the breaker does not read the factory's own retire
    as a collector losing ads. Without its master it is no such VM (a collector that lost ads)."""
    startds = [
        slot("vm1", "i-1", kind="Partitionable", Cpus=2),
        slot("vm2", "i-2", kind="Partitionable", Cpus=4),
        slot("vm3", "i-3", kind="Partitionable", Cpus=4),
    ]
    masters = [{"Name": m, "Machine": m, "EC2InstanceID": i} for m, i in (("vm2", "i-2"),)]
    jobs = [
        job(1, 2, **RUN),
        job(2, 2, JobStartDate=NOW - 500, EC2InstanceName="i-2"),
        job(3, 2, JobStartDate=NOW - 500, EC2InstanceName="i-3"),
    ]
    port = FakeCondor(jobs=jobs, startds=startds, masters=masters)
    plugin, _ = batch(CondorEC2BatchStatus, port)
    plugin.refresh()
    first = plugin.info(Q)
    assert first is not None and (first.pool_startds, first.pool_left) == (3, 0)
    for i in (1, 2):
        port.jobs[i] = {**port.jobs[i], "PilotFactoryRetireRequested": NOW - 5}
    port.startds = [startds[0]]  # their startds left at once (peaceful on idle VMs)
    plugin.refresh()
    second = plugin.info(Q)
    # vm2 kept its master (retired on purpose); vm3 has none left (lost, not a retire)
    assert second is not None and (second.pool_startds, second.pool_left) == (1, 1)
    plugin.refresh()
    third = plugin.info(Q)
    assert third is not None and third.pool_left == 0  # said once


def test_the_gauge_leaves_out_vms_whose_job_says_no_instance_runs_any_more():
    """The worker contract powers a retired VM off, master and all, before the next cycle; its
    grid job completes (or an instance ends and its job goes back to idle). The request side
    says the VM is gone, so its ads left the gauge with it, not through a collector losing
    them. A held job may still have its instance: its vanished ads stay suspicious."""
    startds = [slot(f"vm{i}", f"i-{i}", kind="Partitionable", Cpus=4) for i in (1, 2, 3, 4)]
    jobs = [job(i, 2, JobStartDate=NOW - 500, EC2InstanceName=f"i-{i}") for i in (1, 2, 3, 4)]
    port = FakeCondor(jobs=jobs, startds=startds, masters=[])
    plugin, _ = batch(CondorEC2BatchStatus, port)
    plugin.refresh()
    first = plugin.info(Q)
    assert first is not None and (first.pool_startds, first.pool_left) == (4, 0)
    port.jobs[0] = {**port.jobs[0], "JobStatus": 4, "PilotFactoryRetireRequested": NOW - 5}
    port.jobs[1] = {**port.jobs[1], "JobStatus": 1}
    port.jobs[2] = {**port.jobs[2], "JobStatus": 5}
    port.startds = [startds[3]]
    plugin.refresh()
    second = plugin.info(Q)
    # vm1 (completed) and vm2 (idle again) left with their VMs; vm3 (held) did not say so
    assert second is not None and (second.pool_startds, second.pool_left) == (1, 2)


def test_requirements_split_into_top_level_terms():
    from pilotfactory.plugins.wmsstatus.condor import conjuncts

    text = '(A && B) && C == "x && y" && f([1, 2] && 3) && (D)'
    assert conjuncts(text) == ["(A && B)", 'C == "x && y"', "f([1, 2] && 3)", "(D)"]


def test_a_false_term_is_no_match_though_others_error():
    """condor_submit's requirements: a versionGE term is an error against a template without
    CondorVersion; a false Cpus term still makes the job unmatchable."""
    from pilotfactory.plugins.wmsstatus.condor import parse_slot_ad, unmatchable

    req = (
        '(TARGET.EC2InstanceID isnt undefined) && (TARGET.Arch == "X86_64") && '
        '(versionGE(split(TARGET.CondorVersion)[1], "9.8.0")) && (TARGET.Cpus >= RequestCpus)'
    )
    slot = parse_slot_ad('[ Cpus = 1; Arch = "X86_64"; EC2InstanceID = "i-x" ]')
    assert unmatchable((req, 4, 64, None, None), slot)
    assert not unmatchable((req, 1, 64, None, None), slot)


# ---------------------------------------------------------------------------- the VM contract


def test_ec2_jobs_carry_the_fingerprint_and_read_it_back(tmp_path):
    """CondorEC2 (issue 18): the fingerprint rides as a submit attribute, comes back from the
    job ad; an interruption recorded in the job ad and a notice on the slots read as
    INTERRUPTED, and a vacate records before it acts."""
    port = FakeCondor()
    plugin = ec2(tmp_path, port)
    fp = plugin.fingerprint()
    assert fp is not None and fp != ec2(tmp_path, FakeCondor(), ami_id="ami-2").fingerprint()
    plugin.submit(1)
    desc = port.named("submit")[0][1]
    assert desc["+PilotFactoryFingerprint"] == f'"{fp}"'

    pool = FakeCondor(
        jobs=[
            job(1, 2, JobStartDate=NOW - 10, EC2InstanceName="i-1", PilotFactoryFingerprint=fp),
            job(2, 2, JobStartDate=NOW - 10, EC2InstanceName="i-2", PilotFactoryInterruptedAt=NOW),
            job(3, 2, JobStartDate=NOW - 10, EC2InstanceName="i-3"),
        ],
        startds=[
            slot("vm1", "i-1", "Claimed"),
            slot("vm3", "i-3", "Claimed", PilotFactoryInterruption=int(NOW + 100)),
        ],
    )
    status, _ = batch(CondorEC2BatchStatus, pool)
    status.refresh()
    got = {w.id: w for w in status.info(Q).workers}
    assert (got["1.0"].state, got["1.0"].fingerprint) == (S.BUSY, fp)
    assert (got["2.0"].state, got["2.0"].vacated) == (S.INTERRUPTED, True)
    assert (got["3.0"].state, got["3.0"].interruption) == (S.INTERRUPTED, NOW + 100)
    plugin.vacate([got["3.0"]])
    assert [c[0] for c in port.calls[-2:]] == ["edit", "vacate"]
    assert port.calls[-2][1:3] == (["3.0"], "PilotFactoryInterruptedAt")
    assert port.calls[-1][1] == "vm3"


def test_ec2_fingerprint_follows_the_user_data_file(tmp_path):
    ud = tmp_path / "ud.sh"
    ud.write_text("#!/bin/sh\necho one\n")
    plugin = ec2(tmp_path, FakeCondor(), user_data_file=str(ud))
    first = plugin.fingerprint()
    assert first == plugin.fingerprint()
    ud.write_text("#!/bin/sh\necho two, longer\n")
    assert plugin.fingerprint() not in (None, first)
    ud.unlink()
    assert plugin.fingerprint() is None
