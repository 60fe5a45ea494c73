"""Orphan reaping (issue 19 item 3): instances tagged with this factory whose queue no longer
exists or no longer reads their account are found on the first refresh, terminated after the
grace when they cannot be anyone's work, shown (not acted on) in a dry run; an instance without
the factory's tag is never touched."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import TAG_ENDED, TAG_FACTORY, TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.ports import Instance
from pilotfactory.plugins.batchstatus.cloud import EC2BatchStatus, OpenStackBatchStatus
from tests.unit.plugins.test_cloud_plugins import NOW, WID, Q, setup, slot, status


def instances(cloud, env):  # type: ignore[no-untyped-def]
    cloud.add("i-1", "running", **{TAG_WORKER: WID})  # ours, queue configured
    cloud.add("i-2", "running", **{TAG_WORKER: "gone-1", TAG_QUEUE: "REMOVED"})  # never joined
    cloud.add("i-3", "running", **{TAG_WORKER: "gone-2", TAG_QUEUE: "REMOVED"})  # joined
    cloud.add("i-4", "pending", **{TAG_WORKER: "gone-3", TAG_QUEUE: "REMOVED"})
    cloud.add("i-5", "running", **{TAG_WORKER: "x", TAG_QUEUE: "BROKEN"})  # config broken
    cloud.add("i-6", "error", **{TAG_WORKER: "gone-4", TAG_QUEUE: "REMOVED"})
    cloud.instances["i-9"] = Instance("i-9", "running", NOW - 9000, {TAG_QUEUE: "REMOVED"})


def test_orphans_found_at_once_terminated_after_the_grace() -> None:
    port, cloud, env, clock = setup()
    instances(cloud, env)
    port.startds.append(slot("vm3", PilotFactoryWorker="gone-2"))
    src = status(env, orphan_grace=600, orphan_boot_timeout=120)
    src.refresh()
    src.info(Q)
    notes = src.reconcile({Q: src}, {"BROKEN"}, dry_run=False)
    # i-2 booted 300 s ago (> 120 s): due after the grace; i-6 held; i-3 joined, i-4 pending
    text = "\n".join(notes)
    assert "orphan i-2 (queue REMOVED, booting): terminated in 600s" in text
    assert "orphan i-6 (queue REMOVED, held): terminated in 600s" in text
    assert "orphan i-3 (queue REMOVED, idle): reported" in text
    assert "orphan i-4 (queue REMOVED, pending): reported" in text
    assert "i-1" not in text and "i-5" not in text and "i-9" not in text
    assert not [c for c in cloud.calls if c[0] == "terminate"]
    clock.advance(600)
    src.refresh()
    notes = src.reconcile({Q: src}, {"BROKEN"}, dry_run=True)
    assert any(n.startswith("dry run: would terminate 2 orphan(s): i-2, i-6") for n in notes)
    assert not [c for c in cloud.calls if c[0] == "terminate"]
    notes = src.reconcile({Q: src}, {"BROKEN"}, dry_run=False)
    assert "terminated 2 orphan(s): i-2, i-6" in notes
    acted = [c for c in cloud.calls if c[0] in ("set_tags", "terminate")]
    assert acted == [
        ("set_tags", ["i-2", "i-6"], {TAG_ENDED: str(int(NOW + 600))}),
        ("terminate", ["i-2", "i-6"]),
    ]
    for iid in ("i-1", "i-3", "i-4", "i-5", "i-9"):
        assert cloud.instances[iid].state != "stopping"


def test_a_queue_that_moved_to_another_account_no_longer_claims_its_instances() -> None:
    _port, cloud, env, _clock = setup()
    cloud.add("i-1", "running", **{TAG_WORKER: WID})
    src = status(env, orphan_grace=0, orphan_boot_timeout=60)
    other = status(env, auth_url="https://elsewhere:5000")
    src.refresh()
    assert "terminated 1 orphan(s): i-1" in src.reconcile({Q: other}, set(), False)
    # another kind of source on the same name does not claim it either; the same account does
    cloud.add("i-2", "running", **{TAG_WORKER: "w2"})
    src.refresh()
    assert src.reconcile({Q: EC2BatchStatus({}, env)}, set(), False)
    cloud.add("i-3", "running", **{TAG_WORKER: "w3"})
    src.refresh()
    same = status(env)
    assert isinstance(same, OpenStackBatchStatus)
    assert src.reconcile({"A": same, Q: same}, set(), False) == []


QUEUES = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = OpenStack
batchsubmitplugin = OpenStack
schedplugin = JobsPerVM
apfqueue.sleep = 60
batchsubmit.openstack.image = img
batchsubmit.openstack.flavor = m1.large
batchstatus.openstack.orphan_grace = 60
batchstatus.openstack.orphan_boot_timeout = 60

[{q}]
wmsqueue = {q}
"""


def test_factory_reconciles_each_cycle_and_the_status_shows_it(tmp_path: Path) -> None:
    _port, cloud, env, clock = setup()
    cloud.add("i-2", "running", **{TAG_WORKER: "gone-1", TAG_QUEUE: "REMOVED"})
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(QUEUES.format(q=Q)))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    fcfg = replace(default_factory_config(), factory_id="f1", raw={})
    factory = Factory(fcfg, res.queues, env.world, clock)
    factory.cycle()
    assert factory.status()["orphans"]["OpenStack"] == [
        "orphan i-2 (queue REMOVED, booting): terminated in 60s"
    ]
    clock.advance(60)
    factory.cycle()  # found in cycle 1, terminated in cycle 2 (grace 60 s)
    assert cloud.instances["i-2"].state == "stopping"
    assert factory.status()["orphans"]["OpenStack"] == ["terminated 1 orphan(s): i-2"]
    assert all(i.tags.get(TAG_FACTORY) == "f1" for i in cloud.instances.values())
