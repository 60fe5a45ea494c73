"""The worker VM contract, factory side (issue 18), on the fake cloud and condor ports: tags
at launch, lease renewal (batched), lease ads, vacate on a spot notice, the fingerprint, and the
daemon's own lease sweep through ``reconcile``."""

from __future__ import annotations

from pathlib import Path

from pilotfactory.factory.contract import (
    TAG_DEADLINE,
    TAG_ENDED,
    TAG_FACTORY,
    TAG_FINGERPRINT,
    TAG_INTERRUPTED,
    TAG_LEASE,
    TAG_LEASE_GRACE,
    TAG_QUEUE,
    TAG_WORKER,
)
from pilotfactory.factory.info import Worker, WorkerState
from pilotfactory.factory.plugin import SubmitError
from pilotfactory.factory.ports import (
    CloudInvalidRequest,
    CloudUnavailable,
    CondorRejected,
    Instance,
)
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit
from pilotfactory.plugins.batchsubmit.vmlife import launch_times
from tests.unit.plugins.test_cloud_plugins import NOW, WID, Q, setup, slot, status, submit

S = WorkerState


def test_launch_tags_carry_lease_deadline_and_fingerprint() -> None:
    port, _cloud, env, _ = setup()
    plugin = submit(env, lease=3600, lease_grace=300, max_lifetime=86400)
    (wid,) = plugin.submit(1)
    (launch,) = [c for c in port.calls if c[0] == "launch"]
    tags = launch[3]
    times = launch_times(plugin.params, wid, NOW)
    assert tags[TAG_LEASE] == str(int(NOW + 3600)) == str(times.lease_until)
    assert tags[TAG_LEASE_GRACE] == "300"
    # the stagger takes at most 10% off, per worker id
    assert NOW + 0.9 * 86400 <= int(tags[TAG_DEADLINE]) <= NOW + 86400
    assert tags[TAG_DEADLINE] == str(times.deadline)
    assert tags[TAG_FINGERPRINT] == plugin.fingerprint()


def test_fingerprint_follows_image_flavors_template_not_lease(tmp_path: Path) -> None:
    _port, _cloud, env, _ = setup()
    tpl = tmp_path / "vm.sh"
    tpl.write_text("#!/bin/sh\n{condor_config}\n")
    base = submit(env, user_data_file=str(tpl)).fingerprint()
    assert base is not None and len(base) == 16
    assert submit(env, user_data_file=str(tpl), lease=600).fingerprint() == base
    assert submit(env, user_data_file=str(tpl), image="img2").fingerprint() != base
    assert submit(env, user_data_file=str(tpl), flavor="m1.xlarge").fingerprint() != base
    plugin = submit(env, user_data_file=str(tpl))
    assert plugin.fingerprint() == base
    tpl.write_text("#!/bin/sh\n# a changed template\n{condor_config}\n")
    assert plugin.fingerprint() != base  # read again: its size changed
    tpl.unlink()
    assert plugin.fingerprint() is None  # nothing judged drifted while it is gone


def vm(wid: str, state: WorkerState, lease: float | None, machine: str = "vm1") -> Worker:
    return Worker(wid, Q, state, NOW - 100, f"i-{wid}", machine, lease_until=lease)


def test_renewal_is_one_write_for_every_wanted_worker_once_one_is_due() -> None:
    port, _cloud, env, _ = setup()
    plugin = submit(env, cls=EC2Submit, lease=3600)
    fresh = [vm("a", S.BUSY, NOW + 3000), vm("b", S.IDLE, NOW + 2000)]
    assert plugin.maintain(fresh, NOW) == []  # more than half left on each: nothing written
    ws = [
        vm("a", S.BUSY, NOW + 3000),
        vm("b", S.IDLE, NOW + 1000),  # less than half left: due
        vm("c", S.BOOTING, None),
        vm("d", S.RETIRING, NOW + 100),  # its last job may run on: renewed
        vm("e", S.RETIRED, NOW + 100),
        vm("f", S.INTERRUPTED, NOW + 100),
    ]
    (line,) = plugin.maintain(ws, NOW)
    writes = [(c[0], sorted(c[1]), c[2]) for c in port.calls if c[0] == "set_tags"]
    want = ["i-a", "i-b", "i-c", "i-d"]  # not the retired, interrupted ones: they run out
    assert writes == [("set_tags", want, {TAG_LEASE: str(int(NOW + 3600))})]
    assert line == f"renewed the lease of 4 to {int(NOW + 3600)}"
    assert submit(env, cls=EC2Submit).maintain(ws, NOW) == []  # no lease: never written
    # OpenStack (one call per server): only the due ones, so the calls spread over cycles
    port.calls.clear()
    assert submit(env, lease=3600).maintain(ws, NOW) == [
        f"renewed the lease of 3 to {int(NOW + 3600)}"
    ]
    assert [sorted(c[1]) for c in port.calls] == [["i-b", "i-c", "i-d"]]


def test_lease_ad() -> None:
    _port, _cloud, env, _ = setup()
    assert submit(env).lease_ad(NOW) is None
    target, ad = submit(env, lease=1800, collectorhost="cm").lease_ad(NOW)
    assert target.collector == "cm"
    assert ad == {
        "MyType": "PilotFactoryLease",
        "Name": f"f1/{Q}",
        "PilotFactoryId": "f1",
        "PilotFactoryQueue": Q,
        "PilotFactoryLeaseUntil": int(NOW + 1800),
        "ClassAdLifetime": 1800,
    }


def test_vacate_records_then_vacates_each_machine() -> None:
    port, _cloud, env, _ = setup()
    plugin = submit(env)
    ws = [vm("a", S.INTERRUPTED, None, "vm1"), vm("b", S.INTERRUPTED, None, "vm2")]
    plugin.vacate(ws)
    assert [c[0] for c in port.calls] == ["set_tags", "vacate", "vacate"]
    assert port.calls[0][1:] == (["i-a", "i-b"], {TAG_INTERRUPTED: str(int(NOW))})
    assert [c[1] for c in port.calls[1:]] == ["vm1", "vm2"]
    port.fail["vacate"] = CondorRejected("no such startd")
    try:
        plugin.vacate(ws)
    except SubmitError as exc:
        assert "no such startd" in str(exc)
    else:
        raise AssertionError("a failed vacate must be raised")
    assert [c[0] for c in port.calls].count("vacate") == 4  # every VM tried


def test_status_reads_the_contract_back() -> None:
    port, cloud, env, _ = setup()
    cloud.add(
        "i-1",
        "running",
        **{TAG_WORKER: WID, TAG_LEASE: str(int(NOW + 60)), TAG_DEADLINE: str(int(NOW + 99))},
        **{TAG_FINGERPRINT: "ab" * 8},
    )
    port.startds.append(slot("vm1", "Claimed", PilotFactoryWorker=WID))
    src = status(env)
    src.refresh()
    (w,) = src.info(Q).workers
    assert (w.lease_until, w.deadline, w.fingerprint) == (NOW + 60, NOW + 99, "ab" * 8)
    assert w.state is S.BUSY and w.interruption is None


def test_daemon_sweep_terminates_what_is_past_lease_and_grace_only() -> None:
    _port, cloud, env, clock = setup()
    lease = {TAG_LEASE: str(int(NOW - 700)), TAG_LEASE_GRACE: "600"}
    cloud.add("i-1", "running", **{TAG_WORKER: "w1"}, **lease)  # 100 s past lease + grace
    cloud.add("i-2", "running", **{TAG_WORKER: "w2", TAG_LEASE: str(int(NOW - 700))},
              **{TAG_LEASE_GRACE: "900"})  # fmt: skip
    cloud.add("i-3", "running", **{TAG_WORKER: "w3", TAG_QUEUE: "REMOVED"}, **lease)
    cloud.add("i-4", "running", **{TAG_WORKER: "w4"})  # no lease: never due
    cloud.add("i-5", "terminated", **{TAG_WORKER: "w5", TAG_ENDED: "1"}, **lease)
    cloud.instances["i-9"] = Instance("i-9", "running", NOW - 9000, {TAG_QUEUE: Q, **lease})
    src = status(env, orphan_grace=10_000)
    src.refresh()
    src.info(Q)
    notes = src.reconcile({Q: src}, set(), dry_run=True)
    assert notes[0].startswith("dry run: would terminate 2 past their lease: i-1 (queue ECM)")
    assert not [c for c in cloud.calls if c[0] == "terminate"]
    notes = src.reconcile({Q: src}, set(), dry_run=False)
    assert notes[0].startswith("terminated 2 past their lease: i-1")
    acted = [c for c in cloud.calls if c[0] in ("set_tags", "terminate")]
    assert acted == [
        ("set_tags", ["i-1", "i-3"], {TAG_ENDED: str(int(NOW))}),
        ("terminate", ["i-1", "i-3"]),
    ]
    # the orphan i-3 was swept: not reported again as an orphan this cycle
    assert not any("orphan i-3" in n for n in notes)
    assert cloud.instances["i-9"].state == "running" and cloud.instances["i-2"].state == "running"
    clock.advance(201)  # i-2's own grace has passed now
    src.refresh()
    notes = src.reconcile({Q: src}, set(), dry_run=False)
    assert notes[0].startswith("terminated 1 past their lease: i-2")
    assert cloud.instances["i-4"].state == "running"


def test_ec2_plugin_has_the_contract_too() -> None:
    _port, _cloud, env, _ = setup()
    plugin = submit(env, cls=EC2Submit, lease=60)
    tags = plugin.tags("w", NOW)
    assert tags[TAG_LEASE] == str(int(NOW + 60)) and tags[TAG_FACTORY] == "f1"


def test_one_refused_id_does_not_stop_the_other_renewals() -> None:
    """EC2 refuses a whole CreateTags for one unknown id: the renewal falls back to one call
    per worker, so the other leases do not run out (and get swept)."""
    port, cloud, env, _ = setup()
    real = cloud.set_tags

    def set_tags(ids: list[str], tags: dict[str, str]) -> None:
        if "i-gone" in ids:
            cloud.calls.append(("set_tags", list(ids), dict(tags)))
            raise CloudInvalidRequest("InvalidInstanceID.NotFound: i-gone")
        real(ids, tags)

    cloud.set_tags = set_tags  # type: ignore[method-assign]
    plugin = submit(env, cls=EC2Submit, lease=3600)
    ws = [vm("a", S.BUSY, None), vm("gone", S.IDLE, None), vm("b", S.IDLE, None)]
    (line,) = plugin.maintain(ws, NOW)
    assert line == f"renewed the lease of 2 to {int(NOW + 3600)} one by one; refused for i-gone"
    ids = [c[1] for c in port.calls if c[0] == "set_tags"]
    assert sorted(ids[0]) == ["i-a", "i-b", "i-gone"] and sorted(ids[1:]) == [
        ["i-a"],
        ["i-b"],
        ["i-gone"],
    ]

    def down(ids: list[str], tags: dict[str, str]) -> None:
        cloud.calls.append(("set_tags", list(ids), dict(tags)))
        raise CloudUnavailable("HTTP 503")

    cloud.set_tags = down  # type: ignore[method-assign]
    before = len(port.calls)
    try:  # the provider down: no call per VM, the failure is the cycle's result line
        plugin.maintain(ws, NOW)
    except SubmitError:
        pass
    else:
        raise AssertionError("a renewal that failed must be raised")
    assert len(port.calls) == before + 1
