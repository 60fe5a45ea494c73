"""One queue's cycle through its public face: wired from queues.conf on a fake condor port,
driven by ``cycle()``, judged by the trace it returns and by what reached the port."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.factory.config import (
    PluginSpec,
    QueueConfig,
    default_factory_config,
    load_queues,
)
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.planner import ActionKind
from pilotfactory.factory.plugin import (
    BatchStatusPlugin,
    SchedContext,
    SchedPlugin,
    WMSStatusPlugin,
)
from pilotfactory.factory.ports import CondorRejected, CondorUnreachable
from pilotfactory.factory.queue import Queue
from pilotfactory.factory.trace import CycleTrace
from tests.unit.fakecondor import FakeCondor, make_env

T0 = 1_700_000_000.0

PILOTS = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/true
apfqueue.sleep = 60
schedplugin = Ready

[A]
wmsqueue = LABEL_A
"""

# n = 0 - (running + pending): every worker is a candidate to take away. Appended to PILOTS:
# more keys of its [A] (a file may set a section's key once, so [A] is not written again).
SHRINK = """
schedplugin = KeepNRunning
sched.keepnrunning.keep_running = 0
retire_confirm_cycles = 1
"""

VMS = """
[V]
wmsstatusplugin = Condor
batchstatusplugin = CondorEC2
batchsubmitplugin = CondorEC2
wmsqueue = LABEL_V
schedplugin = Null
apfqueue.sleep = 60
batchsubmit.condorec2.gridresource = https://ec2.example.test/
batchsubmit.condorec2.ami_id = ami-1
batchsubmit.condorec2.instance_type = m1.small
batchsubmit.condorec2.access_key_id = /nonexistent/access.key
batchsubmit.condorec2.secret_access_key = /nonexistent/secret.key
"""


def payload(label: str, n: int) -> list[dict[str, Any]]:
    return [
        {"ClusterId": 1, "ProcId": k, "JobStatus": 1, "MATCH_APF_QUEUE": label} for k in range(n)
    ]


def pilot(cluster: int, proc: int, status: int, queue: str = "A", **ad: Any) -> dict[str, Any]:
    return {
        "ClusterId": cluster,
        "ProcId": proc,
        "JobStatus": status,
        "PilotFactoryId": "f1",
        "PilotFactoryQueue": queue,
        "QDate": int(T0) - 600 + proc,
        "EnteredCurrentStatus": int(T0) - 600,
        **ad,
    }


def vm(k: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A joined, idle grid-universe VM: its job, its one slot and its master."""
    job = {
        "ClusterId": 50,
        "ProcId": k,
        "JobStatus": 2,
        "JobUniverse": 9,
        "EC2InstanceName": f"i-{k}",
        "PilotFactoryId": "f1",
        "PilotFactoryQueue": "V",
        "QDate": int(T0) - 7200,
        "JobStartDate": int(T0) - 7000,
        "EnteredCurrentStatus": int(T0) - 7000,
    }
    slot = {
        "Name": f"slot1@vm{k}",
        "Machine": f"vm{k}",
        "State": "Unclaimed",
        "Activity": "Idle",
        "EC2InstanceID": f"i-{k}",
        "EnteredCurrentActivity": int(T0) - 3000,
    }
    master = {"Name": f"vm{k}", "Machine": f"vm{k}", "EC2InstanceID": f"i-{k}"}
    return job, slot, master


def load(tmp_path: Path, text: str, name: str) -> QueueConfig:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(text))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return next(q for q in res.queues if q.name == name)


@dataclass
class Rig:
    """One queue wired as the factory wires it, with its two status sources."""

    queue: Queue
    port: FakeCondor
    clock: Any
    wms: WMSStatusPlugin
    batch: BatchStatusPlugin

    def refresh(self) -> None:
        self.wms.refresh()
        self.batch.refresh()

    def tick(self, after: float = 0.0) -> CycleTrace:
        """Advance the clock, refresh both sources (one query each), run one cycle."""
        self.clock.advance(after)
        self.refresh()
        return self.queue.cycle(None, None, None)

    def fresh_queue(self) -> Queue:
        """The same queue wired anew, as a reload does."""
        q = self.queue
        return Queue(q.cfg, q.env, self.wms, self.batch)


def rig(tmp_path: Path, text: str = PILOTS, name: str = "A") -> Rig:
    port = FakeCondor()
    env, clock = make_env(port, T0, {"baseLogDir": str(tmp_path / "logs")})
    cfg = load(tmp_path, text, name)
    wms = cfg.wmsstatus.cls(cfg.wmsstatus.params, env)
    batch = cfg.batchstatus.cls(cfg.batchstatus.params, env)
    assert isinstance(wms, WMSStatusPlugin) and isinstance(batch, BatchStatusPlugin)
    return Rig(Queue(cfg, env, wms, batch), port, clock, wms, batch)


def kinds(trace: CycleTrace) -> list[ActionKind]:
    return [a.kind for a in trace.planned]


def submits(port: FakeCondor) -> list[int]:
    """The count of every submit that reached the port (failed ones too)."""
    return [c[2] for c in port.named("submit")]


def removed(port: FakeCondor) -> list[list[str]]:
    return [c[1] for c in port.named("remove")]


# ---------------------------------------------------------------------------- a normal cycle


def test_a_cycle_submits_the_chains_n(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 3) + payload("LABEL_OTHER", 5)
    t = r.tick()
    assert (t.queue, t.time, t.error) == ("A", T0, None)
    assert t.chain is not None and [(s.plugin, s.n_in, s.n_out) for s in t.chain.steps] == [
        ("Ready", 0, 3)
    ]
    assert t.n == 3
    assert [(a.kind, a.count) for a in t.planned] == [(ActionKind.SUBMIT, 3)]
    assert t.results == ["submitted 3"]
    assert submits(r.port) == [3]
    desc = r.port.named("submit")[0][1]
    assert desc["+PilotFactoryQueue"] == '"A"'
    assert desc["+PilotFactoryId"] == '"f1"'
    assert desc["executable"] == "/bin/true"
    assert r.port.count("remove") == 0


def test_pending_pilots_count_against_the_chain(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 5) + [pilot(9, 0, 1), pilot(9, 1, 1), pilot(9, 2, 2)]
    t = r.tick()
    assert t.n == 3  # Ready: 5 ready - 2 pending
    assert t.batch is not None and (t.batch.pending, t.batch.running) == (2, 1)
    assert submits(r.port) == [3]


def test_nothing_to_do_is_a_quiet_cycle(tmp_path: Path) -> None:
    r = rig(tmp_path)
    t = r.tick()
    assert (t.n, t.planned, t.results, t.error) == (0, [], [], None)
    assert t.decision() == "nothing"
    assert r.port.count("submit") == r.port.count("remove") == 0


def test_dry_run_plans_but_does_nothing(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 2)
    r.refresh()
    t = r.queue.cycle(None, None, None, dry_run=True)
    assert t.dry_run is True
    assert [(a.kind, a.count) for a in t.planned] == [(ActionKind.SUBMIT, 2)]
    assert t.results == []
    assert "dry run: nothing done" in t.notes
    assert r.port.count("submit") == 0


class Boom(SchedPlugin):
    NAME = "Boom"

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        raise RuntimeError("plugin bug")


def test_a_failing_scheduler_plugin_fails_the_cycle_not_the_caller(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 2)
    boom = PluginSpec(kind="sched", name="Boom", cls=Boom, params={})
    cfg = replace(r.queue.cfg, sched=(*r.queue.cfg.sched, boom))
    r.queue = Queue(cfg, r.queue.env, r.wms, r.batch)
    t = r.tick()
    assert t.error == "scheduler plugin Boom failed: RuntimeError: plugin bug"
    assert t.decision() == f"error: {t.error}"
    assert t.planned == []
    assert r.port.count("submit") == 0
    r.queue = Queue(replace(cfg, sched=cfg.sched[:1]), r.queue.env, r.wms, r.batch)
    assert r.tick(60).results == ["submitted 2"]  # the queue is not broken for good


# ---------------------------------------------------------------------------- fail closed


def held_pilot_past_timeout() -> dict[str, Any]:
    # held for 2 h: past the default held_timeout of 1 h, so a normal cycle reaps it
    return pilot(7, 0, 5, HoldReason="proxy expired", EnteredCurrentStatus=int(T0) - 7200)


@pytest.mark.parametrize(
    ("how", "note"),
    [
        ("never refreshed", "stale or missing snapshot"),
        ("older than maxage", "stale or missing snapshot"),
        ("refresh failed", "CondorUnreachable: schedd not answering"),
    ],
)
def test_no_batch_status_fails_closed(tmp_path: Path, how: str, note: str) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 4) + [held_pilot_past_timeout()]
    batch_error = None
    r.wms.refresh()
    if how == "older than maxage":
        r.batch.refresh()
        r.clock.advance(601)  # maxage defaults to 600 s
        r.wms.refresh()
    elif how == "refresh failed":
        batch_error = "CondorUnreachable: schedd not answering"
    t = r.queue.cycle(None, batch_error, None)
    assert t.batch is None
    assert t.wms is not None and t.wms.ready == 4
    assert (t.n, t.planned, t.results, t.chain, t.error) == (0, [], [], None, None)
    assert len(t.notes) == 1
    assert t.notes[0].startswith("fail closed: batch status unavailable: ")
    assert note in t.notes[0]
    assert t.batch_error is not None and note in t.batch_error
    assert r.port.count("submit") == r.port.count("remove") == 0  # not even the reap


@pytest.mark.parametrize("how", ["never refreshed", "older than maxage", "refresh failed"])
def test_no_wms_status_sets_n_zero_but_still_reaps(tmp_path: Path, how: str) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 4) + [held_pilot_past_timeout()]
    wms_error = None
    if how == "older than maxage":
        r.wms.refresh()
        r.clock.advance(601)
    elif how == "refresh failed":
        wms_error = "CondorUnreachable: down"
    r.batch.refresh()
    t = r.queue.cycle(wms_error, None, None)
    assert t.wms is None and t.batch is not None
    assert t.n == 0 and t.chain is None
    assert any(n.startswith("fail closed: wms status unavailable: ") for n in t.notes)
    assert [(a.kind, [w.id for w in a.workers]) for a in t.planned] == [(ActionKind.REAP, ["7.0"])]
    assert t.results == ["reaped 1"]
    assert r.port.count("submit") == 0
    assert removed(r.port) == [["7.0"]]


def test_status_back_after_a_fail_closed_cycle(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 2)
    r.wms.refresh()
    assert r.queue.cycle(None, "CondorUnreachable: down", None).planned == []
    t = r.tick(60)
    assert t.results == ["submitted 2"]
    assert submits(r.port) == [2]


# ---------------------------------------------------------------------------- submit back-off


def test_a_submit_error_backs_off_then_retries(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 2)
    r.port.fail["submit"] = CondorRejected("quota exceeded")
    t1 = r.tick()
    assert len(t1.results) == 1
    assert t1.results[0].startswith("submit failed: SubmitError: ")
    assert "quota exceeded" in t1.results[0]
    assert t1.error is None  # an action failure is not a cycle failure
    del r.port.fail["submit"]

    # Inside the back-off (60 s by default) the queue still wants 2 but submits nothing.
    for after in (20, 20, 19):
        t = r.tick(after)
        assert t.n == 2
        assert ActionKind.SUBMIT not in kinds(t)
        assert t.results == []
        blocked = [n for n in t.notes if "blocked" in n]
        assert len(blocked) == 1 and "quota exceeded" in blocked[0]
    assert submits(r.port) == [2]  # only the failed one

    t = r.tick(2)  # 61 s after the failure
    assert t.results == ["submitted 2"]
    assert submits(r.port) == [2, 2]


def test_repeated_submit_errors_double_the_back_off_and_a_success_resets_it(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path, PILOTS + "backoff.initial = 10\nbackoff.max = 25\n")
    r.port.jobs = payload("LABEL_A", 1)
    r.port.fail["submit"] = CondorRejected("quota exceeded")
    tried_at: list[float] = []
    for _ in range(40):  # 40 cycles, 1 s apart
        before = r.port.count("submit")
        r.tick(1)
        if r.port.count("submit") > before:
            tried_at.append(r.clock.now() - T0)
    # 10 s, then 20 s, then capped at 25 s between tries.
    assert tried_at == [1, 11, 31]
    del r.port.fail["submit"]
    r.port.jobs = payload("LABEL_A", 1)
    while r.tick(1).results != ["submitted 1"]:
        assert r.clock.now() - T0 <= 56
    assert r.clock.now() - T0 == 56  # 31 + 25
    r.port.fail["submit"] = CondorRejected("quota exceeded")
    r.tick(1)  # fails again: the back-off starts from backoff.initial again
    failed_at = r.clock.now()
    del r.port.fail["submit"]
    while r.tick(1).results != ["submitted 1"]:
        pass
    assert r.clock.now() - failed_at == 10


# ---------------------------------------------------------------------------- re-check


def test_a_pilot_gone_before_cancel_is_not_cancelled(tmp_path: Path) -> None:
    r = rig(tmp_path, PILOTS + SHRINK)
    r.port.jobs = payload("LABEL_A", 0) + [pilot(5, 0, 1), pilot(5, 1, 1)]
    r.refresh()
    r.port.jobs = [j for j in r.port.jobs if j["ProcId"] != 1]  # 5.1 leaves the queue
    t = r.queue.cycle(None, None, None)
    assert t.n == -2
    cancel = [a for a in t.planned if a.kind is ActionKind.CANCEL]
    assert [sorted(w.id for w in a.workers) for a in cancel] == [["5.0", "5.1"]]
    assert "5.1: gone before cancel; skipped" in t.notes
    assert removed(r.port) == [["5.0"]]
    assert t.results == ["cancelled 1"]


def test_a_pilot_that_started_before_cancel_is_not_cancelled(tmp_path: Path) -> None:
    r = rig(tmp_path, PILOTS + SHRINK)
    r.port.jobs = [pilot(5, 0, 1), pilot(5, 1, 1)]
    r.refresh()
    r.port.jobs[1]["JobStatus"] = 2  # 5.1 started running
    t = r.queue.cycle(None, None, None)
    assert "5.1: now busy, was pending; cancel dropped" in t.notes
    assert removed(r.port) == [["5.0"]]


def test_a_pilot_gone_before_retire_is_not_retired(tmp_path: Path) -> None:
    r = rig(tmp_path, PILOTS + SHRINK + "retire_mode = kill\n")
    r.port.jobs = [pilot(6, 0, 2), pilot(6, 1, 2)]
    r.refresh()
    r.port.jobs = []  # both finished between the status query and the re-check
    t = r.queue.cycle(None, None, None)
    retire = [a for a in t.planned if a.kind is ActionKind.RETIRE]
    assert len(retire) == 1 and retire[0].size() == 2
    assert "6.0: gone before retire; skipped" in t.notes
    assert "6.1: gone before retire; skipped" in t.notes
    assert r.port.count("remove") == 0
    assert t.results == []


def test_a_failed_recheck_skips_every_irreversible_step(tmp_path: Path) -> None:
    r = rig(tmp_path, PILOTS + SHRINK)
    r.port.jobs = [pilot(5, 0, 1), held_pilot_past_timeout()]
    r.refresh()
    r.port.fail["query_jobs"] = CondorUnreachable("schedd gone")
    t = r.queue.cycle(None, None, None)
    assert {ActionKind.CANCEL, ActionKind.REAP} <= set(kinds(t))
    notes = [n for n in t.notes if n.startswith("re-check failed")]
    assert len(notes) == 1 and "schedd gone" in notes[0]
    assert not any("gone before" in n for n in t.notes)  # unknown is not gone
    assert r.port.count("remove") == 0
    assert t.results == []
    assert t.error is None


def test_a_failed_recheck_still_submits(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 2) + [held_pilot_past_timeout()]
    r.refresh()
    r.port.fail["query_jobs"] = CondorUnreachable("schedd gone")
    t = r.queue.cycle(None, None, None)
    assert t.n == 1  # 2 ready - 1 held (held counts as pending)
    assert sorted(a.kind.value for a in t.planned) == ["reap", "submit"]
    assert t.results == ["submitted 1"]
    assert r.port.count("remove") == 0


# ---------------------------------------------------------------------------- failure-rate stop


def test_workers_that_all_fail_stop_submits_for_a_while(tmp_path: Path) -> None:
    r = rig(tmp_path)
    held = [
        pilot(7, k, 5, HoldReason="proxy expired", EnteredCurrentStatus=int(T0) - 7200)
        for k in range(5)
    ]
    r.port.jobs = payload("LABEL_A", 3) + held
    t = r.tick()
    assert t.results == ["reaped 5"]  # failure_limit = 5 failures in a row
    r.port.jobs = payload("LABEL_A", 3)  # the held pilots are gone
    t = r.tick(60)
    assert t.n == 3
    assert ActionKind.SUBMIT not in kinds(t)
    stop = [n for n in t.notes if "blocked" in n]
    assert len(stop) == 1
    assert "last 5 workers all failed: proxy expired" in stop[0]
    assert r.port.count("submit") == 0
    assert r.tick(61).results == ["submitted 3"]


def test_fewer_failures_than_the_limit_do_not_stop_submits(tmp_path: Path) -> None:
    r = rig(tmp_path)
    held = [
        pilot(7, k, 5, HoldReason="proxy expired", EnteredCurrentStatus=int(T0) - 7200)
        for k in range(4)
    ]
    r.port.jobs = payload("LABEL_A", 3) + held
    assert r.tick().results == ["reaped 4"]
    r.port.jobs = payload("LABEL_A", 3)
    assert r.tick(60).results == ["submitted 3"]


# ---------------------------------------------------------------------------- circuit breaker


def test_vms_vanishing_at_once_freeze_reaping_then_are_accepted(tmp_path: Path) -> None:
    r = rig(tmp_path, VMS, "V")
    vms = [vm(k) for k in range(4)]
    r.port.jobs = [j for j, _, _ in vms]
    r.port.startds = [s for _, s, _ in vms]
    r.port.masters = [m for _, _, m in vms]
    t = r.tick()
    assert t.batch is not None
    assert sorted(w.state.value for w in t.batch.workers) == ["idle"] * 4
    assert t.planned == []

    # The collector loses every startd and master ad: the VMs look like they never booted
    # (long past boot_timeout), which would reap all four as LOST.
    r.port.startds, r.port.masters = [], []
    for cycle in (1, 2, 3):
        t = r.tick(60)
        assert ActionKind.REAP not in kinds(t)
        frozen = [n for n in t.notes if n.startswith("retire and reap frozen: ")]
        assert len(frozen) == 1 and f"({cycle}/3)" in frozen[0]
        assert r.port.count("remove") == 0
    t = r.tick(60)  # a fourth cycle with the same picture: accepted
    assert not any("frozen" in n for n in t.notes)
    # ... as VMs whose startds vanished: LOST boot_timeout after they were last seen
    assert t.planned == [] and r.port.count("remove") == 0
    t = r.tick(1800)
    assert [(a.kind, a.failure, a.size()) for a in t.planned] == [(ActionKind.REAP, True, 4)]
    assert [sorted(ids) for ids in removed(r.port)] == [["50.0", "50.1", "50.2", "50.3"]]


def test_a_single_vanished_vm_is_reaped_boot_timeout_after_it_was_last_seen(
    tmp_path: Path,
) -> None:
    """Not at once: counted from launch, every VM older than boot_timeout whose ads a
    restarted collector had not got back yet was reaped with its payload (real pool)."""
    r = rig(tmp_path, VMS, "V")
    vms = [vm(k) for k in range(4)]
    r.port.jobs = [j for j, _, _ in vms]
    r.port.startds = [s for _, s, _ in vms]
    r.port.masters = [m for _, _, m in vms]
    r.tick()
    r.port.startds, r.port.masters = r.port.startds[1:], r.port.masters[1:]
    t = r.tick(60)
    assert not any("frozen" in n for n in t.notes)
    assert r.port.count("remove") == 0
    r.tick(1800)
    assert removed(r.port) == [["50.0"]]


# ---------------------------------------------------------------------------- reload


def back_off(r: Rig) -> None:
    r.port.jobs = payload("LABEL_A", 2)
    r.port.fail["submit"] = CondorRejected("quota exceeded")
    assert r.tick().results[0].startswith("submit failed")
    del r.port.fail["submit"]


def test_carry_over_keeps_the_back_off(tmp_path: Path) -> None:
    r = rig(tmp_path)
    back_off(r)
    old = r.queue
    r.queue = r.fresh_queue()
    r.queue.carry_over(old)
    t = r.tick(30)
    assert ActionKind.SUBMIT not in kinds(t)
    assert any("blocked" in n and "quota exceeded" in n for n in t.notes)
    assert submits(r.port) == [2]
    assert r.tick(31).results == ["submitted 2"]


def test_without_carry_over_a_new_queue_would_submit(tmp_path: Path) -> None:
    r = rig(tmp_path)
    back_off(r)
    r.queue = r.fresh_queue()
    assert r.tick(30).results == ["submitted 2"]


def test_carry_over_keeps_retire_confirmation(tmp_path: Path) -> None:
    text = PILOTS + SHRINK.replace("retire_confirm_cycles = 1", "retire_confirm_cycles = 2")
    r = rig(tmp_path, text)
    r.port.jobs = [pilot(5, 0, 1)]
    t = r.tick()
    assert "1 candidate(s) wait for retire_confirm_cycles=2" in t.notes
    assert r.port.count("remove") == 0
    fresh = r.fresh_queue()
    carried = r.fresh_queue()
    carried.carry_over(r.queue)

    r.refresh()
    r.clock.advance(60)
    r.refresh()
    assert fresh.cycle(None, None, None).results == []  # a forgetful queue starts counting anew
    assert carried.cycle(None, None, None).results == ["cancelled 1"]
    assert removed(r.port) == [["5.0"]]


def test_carry_over_keeps_the_breaker_frozen(tmp_path: Path) -> None:
    r = rig(tmp_path, VMS, "V")
    vms = [vm(k) for k in range(4)]
    r.port.jobs = [j for j, _, _ in vms]
    r.port.startds = [s for _, s, _ in vms]
    r.port.masters = [m for _, _, m in vms]
    r.tick()
    r.port.startds, r.port.masters = [], []
    assert any("(1/3)" in n for n in r.tick(60).notes)
    old = r.queue
    r.queue = r.fresh_queue()
    r.queue.carry_over(old)
    t = r.tick(60)
    assert any("(2/3)" in n for n in t.notes)
    assert r.port.count("remove") == 0


def test_carry_over_keeps_counters_and_history(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.port.jobs = payload("LABEL_A", 2)
    first = r.tick()
    old = r.queue
    r.queue = r.fresh_queue()
    r.queue.carry_over(old)
    second = r.tick(60)
    expected = [json.loads(json.dumps(t.to_dict(max_ids=20))) for t in (first, second)]
    assert r.queue.history == expected
    assert r.queue.counters["cycles"] == 2
    assert r.queue.counters["submitted"] == 4


def test_factory_reload_keeps_an_unchanged_queue_in_back_off(tmp_path: Path) -> None:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(PILOTS))
    port = FakeCondor()
    env, clock = make_env(port, T0)
    fcfg = replace(
        default_factory_config(), factory_id="f1", raw={"baseLogDir": str(tmp_path / "logs")}
    )
    factory = Factory(fcfg, load_queues([str(conf)]).queues, env.world, clock)
    port.jobs = payload("LABEL_A", 2)
    port.fail["submit"] = CondorRejected("quota exceeded")
    factory.cycle()
    del port.fail["submit"]

    factory.reload(load_queues([str(conf)]).queues)
    clock.advance(30)
    (t,) = factory.cycle(force=True)
    assert any("blocked" in n for n in t.notes)
    assert submits(port) == [2]

    conf.write_text(textwrap.dedent(PILOTS).replace("apfqueue.sleep = 60", "apfqueue.sleep = 61"))
    factory.reload(load_queues([str(conf)]).queues)  # changed, but not its submit target
    (t,) = factory.cycle(force=True)
    assert any("blocked" in n for n in t.notes), "the back-off still applies"
    assert factory.queues["A"].counters["cycles"] == 3

    changed = PILOTS.replace("/bin/true", "/bin/false")
    conf.write_text(textwrap.dedent(changed))
    factory.reload(load_queues([str(conf)]).queues)  # a new submit target: back-off dropped
    (t,) = factory.cycle(force=True)
    assert t.results == ["submitted 2"]
    assert factory.queues["A"].counters["cycles"] == 4, "counters survive any change"


def test_a_changed_queue_keeps_what_applies(tmp_path: Path) -> None:
    r = rig(tmp_path, VMS, "V")
    vms = [vm(k) for k in range(4)]
    r.port.jobs = [j for j, _, _ in vms]
    r.port.startds = [s for _, s, _ in vms]
    r.port.masters = [m for _, _, m in vms]
    r.tick()
    r.port.startds, r.port.masters = [], []
    assert any("(1/3)" in n for n in r.tick(60).notes)
    old = r.queue
    r.queue = r.fresh_queue()
    r.queue.cfg = replace(r.queue.cfg, sleep=old.cfg.sleep / 2)
    assert r.queue.carry_over(old, now=r.clock.now()) == []
    assert r.queue.next_run <= r.clock.now() + old.cfg.sleep / 2, "a shorter interval applies"
    assert any("(2/3)" in n for n in r.tick(60).notes), "same status and submit: breaker kept"

    again = r.fresh_queue()
    again.cfg = replace(
        again.cfg, batchstatus=replace(again.cfg.batchstatus, params={"maxage": 999})
    )
    fresh = again.carry_over(r.queue, now=r.clock.now())
    assert fresh and "circuit breaker" in fresh[0]
    assert again.breaker is not r.queue.breaker
    assert again.counters is r.queue.counters and again.records is r.queue.records


# ---------------------------------------------------------------------------- why not


def test_status_says_why_not_per_queue_and_per_worker(tmp_path: Path) -> None:
    from pilotfactory.cli import format_trace, format_workers
    from pilotfactory.factory.trace import workers_view

    text = VMS.replace(
        "schedplugin = Null",
        "schedplugin = KeepNRunning\nsched.keepnrunning.keep_running = 0\n"
        "retire_confirm_cycles = 2",
    )
    r = rig(tmp_path, text, "V")
    vms = [vm(k) for k in range(3)]
    booting = dict(vm(7)[0], EC2InstanceName="i-7", ProcId=7)
    stray = dict(vm(9)[1], EC2InstanceID="i-9", PilotFactoryQueue="V", PilotFactoryId="f1")
    r.port.jobs = [j for j, _, _ in vms] + [booting]
    r.port.startds = [s for _, s, _ in vms] + [stray]
    r.port.masters = [m for _, _, m in vms]
    t = r.tick()
    why = t.why_not()
    assert why["buy"] == "n=-4: " + t.chain.steps[-1].reason  # type: ignore[union-attr]
    assert [(h["what"], h["reason"], h["count"]) for h in why["held"]] == [
        ("retire", "confirmation 1/2", 3),
        (
            "retire",
            "n=-4 but only 3 worker(s) may be taken away (the others are booting, being "
            "reaped, protected or already retiring)",
            1,
        ),
    ]
    text_out = format_trace(t)
    assert "why nothing was bought: n=-4: KeepNRunning" in text_out
    assert "retire held back for 3: confirmation 1/2 [50.0, 50.1, 50.2]" in text_out

    view = workers_view(t)
    assert view["totals"] == {"joined": 3, "unjoined": 1, "unmatched_startds": 1}
    joined = {row["id"]: row for row in view["joined"]}
    assert joined["50.0"]["startd"] == "vm0" and joined["50.0"]["instance"] == "i-0"
    assert joined["50.0"]["this_cycle"] == "retire held back: confirmation 1/2"
    assert [(r_["id"], r_["state"], r_["instance"]) for r_ in view["unjoined"]] == [
        ("50.7", "booting", "i-7")
    ]
    table = format_workers(view)
    assert "joined workers (3)" in table and "not joined (1)" in table
    assert "startds matching no worker (1):" in table

    t2 = r.tick(60)  # confirmed now: the same workers are retired (and said so per worker)
    acting = {row["id"]: row["this_cycle"] for row in workers_view(t2)["joined"]}
    assert set(acting.values()) <= {"retire (peaceful)", "retire (drain)"}, acting
    assert workers_view(t2, limit=1)["joined"][0]["id"] in acting
    assert "(2 more joined not shown)" in format_workers(workers_view(t2, limit=1))


def test_a_cycles_cancels_and_reaps_are_one_removal(tmp_path: Path) -> None:
    """One schedd write per queue per cycle for every worker taken away (issue 13)."""
    r = rig(tmp_path, PILOTS + SHRINK)
    held = pilot(7, 0, 5, HoldReason="proxy expired", EnteredCurrentStatus=int(T0) - 7200)
    r.port.jobs = [held, pilot(5, 0, 1), pilot(5, 1, 1)]
    t = r.tick()
    assert sorted(t.results) == ["cancelled 2", "reaped 1"]
    assert r.port.count("remove") == 1
    assert sorted(removed(r.port)[0]) == ["5.0", "5.1", "7.0"]
    assert "cancel and reap" in r.port.named("remove")[0][2]
    assert r.queue.counters["cancelled"] == 2 and r.queue.counters["reaped"] == 1
