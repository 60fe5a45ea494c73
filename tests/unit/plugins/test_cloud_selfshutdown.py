"""A VM that powers itself off (the worker contract, etc/worker/README.md item 5) has ended as
agreed: not a worker and no failure, terminated by the factory if the provider only stopped it;
an instance ended by someone else stays LOST, and so does a VM that powered off without ever
joining (a boot failure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pilotfactory.factory.contract import TAG_ENDED, TAG_FACTORY, TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.ports import Instance
from pilotfactory.factory.vmstate import Phase
from pilotfactory.plugins.batchstatus.cloud import EC2BatchStatus, instance_record
from pilotfactory.plugins.sweep import sweep_account
from tests.unit.plugins.test_cloud_plugins import NOW, WID, Q, setup, slot, status, submit

S = WorkerState


@pytest.mark.parametrize("state", ["terminated", "stopped", "stopping"])
@pytest.mark.parametrize("self_off", [True, False])
def test_a_poweroff_is_gone_an_end_by_someone_else_lost(state: str, self_off: bool) -> None:
    inst = Instance("i-1", state, NOW - 300, {TAG_WORKER: WID}, self_shutdown=self_off)
    rec = instance_record(inst, NOW)
    assert rec.phase is (Phase.GONE if self_off else Phase.ENDED_UNASKED)
    # the boot-failure guard turns a poweroff back into an end the queue answers for
    assert instance_record(inst, NOW, never_joined=True).phase is Phase.ENDED_UNASKED


@pytest.mark.parametrize("behaviour", ["terminate", "stop"])
def test_a_joined_vm_that_powers_itself_off_is_no_worker(behaviour: str) -> None:
    """STARTD_NOCLAIM_SHUTDOWN: joined, idle, then off. Not LOST (a failure: five of them stop
    the queue's submission), just gone."""
    port, cloud, env, clock = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    port.startds.append(slot("vm1", PilotFactoryWorker=WID))
    src = status(env)
    src.refresh()
    assert [w.state for w in src.info(Q).workers] == [S.IDLE]
    port.startds.clear()
    cloud.power_off("i-1", behaviour)
    clock.advance(60)
    src.refresh()
    assert src.info(Q).workers == ()


def test_a_vm_that_powers_off_without_ever_joining_is_lost() -> None:
    """The master powers off a VM whose startd never ran: a boot failure, so LOST (counted),
    with the cause; reaped once, then history."""
    _port, cloud, env, clock = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    src = status(env)
    src.refresh()
    assert [w.state for w in src.info(Q).workers] == [S.BOOTING]
    cloud.power_off("i-1")
    clock.advance(60)
    src.refresh()
    (w,) = src.info(Q).workers
    assert w.state is S.LOST
    assert w.hold_reason == "instance i-1 powered itself off (terminated) and never joined the pool"
    submit(env).reap([w])
    src.refresh()
    assert src.info(Q).workers == ()


def test_a_poweroff_first_seen_after_the_fact_is_no_failure() -> None:
    """A source that never watched the VM run (a daemon restarted meanwhile) cannot call it a
    boot failure: the provider's word stands."""
    _port, cloud, env, _ = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    cloud.power_off("i-1")
    src = status(env)
    src.refresh()
    assert src.info(Q).workers == ()


def test_reconcile_terminates_stopped_instances_that_are_no_worker() -> None:
    """Stopped after a poweroff (EC2 without the terminate behaviour), or stopped although the
    factory ended it: no one else terminates them, and they hold quota and volumes. One
    stopped by someone else is LOST, and the planner's to reap (and count); one still
    stopping waits a cycle."""
    _port, cloud, env, _ = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: "w1"})
    cloud.add("i-2", "stopped", **{TAG_WORKER: "w2"})  # stopped by someone else
    cloud.add("i-3", "running", **{TAG_WORKER: "w3"})
    cloud.add("i-4", "stopped", **{TAG_WORKER: "w4", TAG_ENDED: str(int(NOW - 5))})
    cloud.add("i-5", "running", **{TAG_WORKER: "w5", TAG_QUEUE: "REMOVED"})  # an orphan's
    for iid in ("i-1", "i-3", "i-5"):
        cloud.power_off(iid, "stop")
    cloud.instances["i-3"] = replace(cloud.instances["i-3"], state="stopping")
    cloud.instances["i-9"] = Instance("i-9", "stopped", NOW, {TAG_QUEUE: Q}, self_shutdown=True)
    src = status(env, orphan_grace=10_000)
    src.refresh()
    info = src.info(Q)
    assert [(w.instance_id, w.state) for w in info.workers] == [("i-2", S.LOST)]
    notes = src.reconcile({Q: src}, set(), dry_run=True)
    assert notes[0] == "dry run: would terminate 3 stopped: i-1, i-4, i-5"
    assert not [c for c in cloud.calls if c[0] in ("set_tags", "terminate")]
    notes = src.reconcile({Q: src}, set(), dry_run=False)
    assert notes[0] == "terminated 3 stopped: i-1, i-4, i-5"
    acted = [c for c in cloud.calls if c[0] in ("set_tags", "terminate")]
    ended = {TAG_ENDED: str(int(NOW))}
    assert acted == [
        ("set_tags", ["i-1", "i-4", "i-5"], ended),
        ("terminate", ["i-1", "i-4", "i-5"]),
    ]
    assert not any("orphan i-5" in n for n in notes)  # swept: not reported again
    assert cloud.instances["i-2"].state == "stopped"  # LOST: the planner reaps it
    assert cloud.instances["i-3"].state == "stopping"
    assert cloud.instances["i-9"].state == "stopped"  # not this factory's


def test_sweep_without_a_daemon_terminates_every_stopped_instance_of_the_factory() -> None:
    """``pilotfactory sweep``: no planner to reap a stopped LOST one, so every stopped
    instance of this factory goes, in the lease sweep's one call; others are untouched."""
    _port, cloud, _env, _ = setup()
    cloud.add("i-1", "stopped", **{TAG_WORKER: "w1"})
    cloud.add("i-2", "running", **{TAG_WORKER: "w2"})
    cloud.add("i-3", "stopping", **{TAG_WORKER: "w3"})
    cloud.add("i-4", "terminated", **{TAG_WORKER: "w4"})
    cloud.add("i-5", "running", **{TAG_WORKER: "w5"})
    cloud.power_off("i-5", "stop")
    cloud.instances["i-8"] = Instance("i-8", "stopped", NOW, {TAG_FACTORY: "f2"})
    dry = sweep_account(cloud, "acct", "f1", NOW, dry_run=True)
    assert (dry.stopped, dry.terminated) == (["i-1", "i-5"], [])
    done = sweep_account(cloud, "acct", "f1", NOW)
    assert (done.stopped, done.terminated, done.error) == (["i-1", "i-5"], ["i-1", "i-5"], None)
    assert cloud.instances["i-8"].state == "stopped"
    assert [c[1] for c in cloud.calls if c[0] == "terminate"] == [["i-1", "i-5"]]


def test_ec2_source_reads_the_same() -> None:
    _port, cloud, env, _ = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    cloud.power_off("i-1", "stop")
    src = status(env, EC2BatchStatus, region="us-east-1")
    src.refresh()
    assert src.info(Q).workers == ()
    assert src.reconcile({Q: src}, set(), dry_run=False) == ["terminated 1 stopped: i-1"]
