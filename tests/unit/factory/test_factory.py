"""Factory and queue cycle mechanics on a fake condor port: sharing, fail-closed, isolation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import classad2
import pytest

from pilotfactory.cli import main
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.plugin import SchedContext, SchedPlugin
from pilotfactory.factory.ports import CondorRejected, CondorUnreachable
from tests.unit.fakecondor import FakeCondor, make_env

QUEUES = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/true
schedplugin = Ready, MaxPerCycle
sched.maxpercycle.maximum = 5
apfqueue.sleep = 60

[A]
wmsqueue = LABEL_A

[B]
wmsqueue = LABEL_B
"""


def payload(label: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"ClusterId": 1, "ProcId": start + k, "JobStatus": 1, "MATCH_APF_QUEUE": label}
        for k in range(n)
    ]


def build(tmp_path: Path, text: str = QUEUES) -> tuple[Factory, FakeCondor, Any]:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(text))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    port = FakeCondor()
    env, clock = make_env(port)
    fcfg = replace(
        default_factory_config(), factory_id="f1", raw={"baseLogDir": str(tmp_path / "logs")}
    )
    factory = Factory(fcfg, res.queues, env.world, clock)
    return factory, port, clock


def test_one_query_per_source_per_cycle(tmp_path: Path) -> None:
    factory, port, _ = build(tmp_path)
    port.jobs = payload("LABEL_A", 3) + payload("LABEL_B", 12, start=3)
    traces = factory.cycle()
    assert {t.queue: t.n for t in traces} == {"A": 3, "B": 5}
    # One WMS query and one batch query for both queues together, not one per queue.
    assert port.count("query_jobs") == 2
    assert [c[2] for c in port.named("submit")] == [3, 5]


def test_schedd_down_fails_closed_then_recovers(tmp_path: Path) -> None:
    factory, port, clock = build(tmp_path)
    port.jobs = payload("LABEL_A", 3)
    port.fail["query_jobs"] = CondorUnreachable("schedd not answering")
    traces = factory.cycle()
    assert all(t.n == 0 and not t.planned for t in traces)
    assert all(any("fail closed" in n for n in t.notes) for t in traces)
    assert port.count("submit") == 0
    del port.fail["query_jobs"]
    clock.advance(61)
    traces = factory.cycle()
    assert {t.queue: t.n for t in traces} == {"A": 3, "B": 0}
    assert port.count("submit") == 1


class Boom(SchedPlugin):
    NAME = "Boom"

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        raise RuntimeError("plugin bug")


def test_plugin_exception_fails_only_its_queue(tmp_path: Path) -> None:
    factory, port, _ = build(tmp_path)
    port.jobs = payload("LABEL_A", 2) + payload("LABEL_B", 2, start=2)
    factory.queues["A"].sched.insert(0, Boom({}))
    traces = {t.queue: t for t in factory.cycle()}
    assert traces["A"].error is not None and "Boom failed: RuntimeError: plugin bug" in (
        traces["A"].error
    )
    assert traces["B"].error is None and traces["B"].n == 2
    assert [c[2] for c in port.named("submit")] == [2]


def test_submit_failure_backs_off(tmp_path: Path) -> None:
    factory, port, clock = build(tmp_path)
    port.jobs = payload("LABEL_A", 2)
    port.fail["submit"] = CondorRejected("quota exceeded")
    t1 = next(t for t in factory.cycle() if t.queue == "A")
    assert any("submit failed" in r and "quota exceeded" in r for r in t1.results)
    del port.fail["submit"]
    clock.advance(61)  # back-off is 60 s initially: this cycle is still inside it
    factory.queues["A"].backoff.until = clock.now() + 1
    t2 = next(t for t in factory.cycle() if t.queue == "A")
    assert any("blocked" in n for n in t2.notes)
    clock.advance(61)
    t3 = next(t for t in factory.cycle() if t.queue == "A")
    assert t3.results == ["submitted 2"]


def test_queues_run_on_their_own_interval(tmp_path: Path) -> None:
    text = QUEUES.replace("[B]\n", "[B]\napfqueue.sleep = 300\n")
    factory, _, clock = build(tmp_path, text)
    assert {t.queue for t in factory.cycle()} == {"A", "B"}
    clock.advance(61)
    assert {t.queue for t in factory.cycle()} == {"A"}
    clock.advance(240)
    assert {t.queue for t in factory.cycle()} == {"A", "B"}


def test_dry_run_acts_on_nothing(tmp_path: Path) -> None:
    factory, port, _ = build(tmp_path)
    factory.dry_run = True
    port.jobs = payload("LABEL_A", 4)
    traces = factory.cycle()
    assert next(t for t in traces if t.queue == "A").planned[0].count == 4
    assert port.count("submit") == 0


@pytest.mark.parametrize("state", [1, 2])
def test_pending_pilots_count_against_ready(tmp_path: Path, state: int) -> None:
    factory, port, _ = build(tmp_path)
    port.jobs = payload("LABEL_A", 4) + [
        {
            "ClusterId": 9,
            "ProcId": 0,
            "JobStatus": state,
            "PilotFactoryId": "f1",
            "PilotFactoryQueue": "A",
            "EnteredCurrentStatus": 1_700_000_000,
        }
    ]
    t = next(t for t in factory.cycle() if t.queue == "A")
    # Ready = ready - pending; a running pilot is not pending.
    assert t.n == (3 if state == 1 else 4)


def test_metrics_follow_the_traces(tmp_path: Path) -> None:
    factory, port, clock = build(tmp_path)
    port.jobs = payload("LABEL_A", 3)
    factory.cycle()
    reg = factory.metrics.registry
    assert reg.get_sample_value("pilotfactory_decision_n", {"queue": "A"}) == 3
    assert reg.get_sample_value("pilotfactory_wms_jobs", {"queue": "A", "state": "ready"}) == 3
    assert (
        reg.get_sample_value(
            "pilotfactory_planned_actions_total", {"queue": "A", "action": "submit"}
        )
        == 3
    )
    port.fail["query_jobs"] = CondorUnreachable("down")
    clock.advance(61)
    factory.cycle()
    assert (
        reg.get_sample_value(
            "pilotfactory_failclosed_cycles_total", {"queue": "A", "source": "batch"}
        )
        == 1
    )
    assert (
        reg.get_sample_value(
            "pilotfactory_source_failures_total",
            {"kind": "batchstatus", "plugin": "Condor", "source": "local schedd"},
        )
        == 1
    )


def test_run_loop_ticks_on_the_clock_and_stops(tmp_path: Path) -> None:
    factory, port, clock = build(tmp_path)
    port.jobs = payload("LABEL_A", 1)
    start = clock.now()
    factory.run(cycles=3)
    assert factory.cycles_run == 3
    assert clock.now() - start >= 120  # queues are due every 60 s
    factory.stop()
    factory.run()  # a stopped factory returns at once
    assert factory.cycles_run == 3


def test_reload_keeps_memory_of_unchanged_queues(tmp_path: Path) -> None:
    factory, _, _ = build(tmp_path)
    marker = factory.queues["A"].memory
    conf = tmp_path / "queues.conf"
    res = load_queues([str(conf)])
    factory.reload(res.queues)
    assert factory.queues["A"].memory is marker
    changed = textwrap.dedent(QUEUES).replace("wmsqueue = LABEL_B", "wmsqueue = LABEL_C")
    conf.write_text(changed)
    factory.reload(load_queues([str(conf)]).queues)
    assert factory.queues["A"].memory is marker
    assert factory.queues["B"].cfg.wmsqueue == "LABEL_C"


def test_daemon_status_file_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    factory, port, clock = build(tmp_path)
    status_file = tmp_path / "run" / "status.json"
    factory.fcfg = replace(factory.fcfg, status_file=str(status_file))
    port.jobs = payload("LABEL_A", 2)
    factory.cycle()
    port.fail["query_jobs"] = CondorUnreachable("schedd gone")
    clock.advance(61)
    factory.cycle()
    fconf = tmp_path / "factory.conf"
    fconf.write_text(
        f"[Factory]\nqueueConf = {tmp_path / 'queues.conf'}\nstatusFile = {status_file}\n"
    )
    assert main(["status", "--daemon", "-c", str(fconf), "--queue", "A"]) == 0
    out = capsys.readouterr().out
    assert "[A] cycles 2, submitted 2" in out
    assert "n=2    submit 2" in out
    assert "fail closed: batch status unavailable" in out
    assert "failing (1 in a row): CondorUnreachable: schedd gone" in out
    assert out.count("why nothing was bought: fail closed: batch status unavailable") == 1
    assert main(["status", "--daemon", "-c", str(fconf), "--json", "--last", "1"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [len(q["history"]) for q in state["queues"].values()] == [1, 1]
    # The newest record is whole; older ones keep what the text view prints.
    older, newest = json.loads(status_file.read_text())["queues"]["A"]["history"]
    assert "batch" in newest and "chain" in newest
    assert "batch" not in older and older["actions"][0] == {
        "kind": "submit", "count": 2, "mode": None, "reason": "n=2"
    }  # fmt: skip


def test_rechecks_of_all_queues_on_one_source_are_one_query(tmp_path: Path) -> None:
    """Pilots of two queues become surplus at once: both queues cancel in the same cycle, and
    their candidates are re-read together, in one constrained job query."""
    surplus = QUEUES.replace("schedplugin = Ready, MaxPerCycle", "schedplugin = MaxToRun").replace(
        "sched.maxpercycle.maximum = 5", "sched.maxtorun.maximum = 1"
    )
    factory, port, clock = build(tmp_path, surplus)
    port.jobs = [
        {"ClusterId": 7, "ProcId": k, "JobStatus": 1, "PilotFactoryId": "f1", "QDate": 1.0,
         "PilotFactoryQueue": "A" if k < 3 else "B"}
        for k in range(6)
    ]  # fmt: skip
    cancelled: list[str] = []
    for _ in range(10):
        clock.advance(61)
        port.calls.clear()
        traces = factory.cycle()
        acting = [t.queue for t in traces if any(r.startswith("cancelled") for r in t.results)]
        if acting:
            cancelled = acting
            break
    assert sorted(cancelled) == ["A", "B"]
    rechecks = [c for c in port.named("query_jobs") if "ClusterId ==" in (c[3] or "")]
    assert len(rechecks) == 1
    expr = classad2.ExprTree(rechecks[0][3])
    chosen = [j["ProcId"] for j in port.jobs if expr.eval(classad2.ClassAd(j)) is True]
    assert len(chosen) == 4  # n = 1 - 3 in each queue, 2 of each


def test_pilot_and_vm_sources_of_one_schedd_recheck_in_one_query(tmp_path: Path) -> None:
    """A pilot queue and a VM queue on one schedd both cancel: one by-id job query re-reads
    both queues' candidates (the VM source judges the pilots too)."""
    text = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/true
schedplugin = MaxToRun
sched.maxtorun.maximum = 1
apfqueue.sleep = 60

[A]
wmsqueue = LABEL_A

[V]
wmsqueue = LABEL_V
batchstatusplugin = CondorEC2
batchsubmitplugin = CondorEC2
batchsubmit.condorec2.gridresource = https://ec2.example.test/
batchsubmit.condorec2.ami_id = ami-1
batchsubmit.condorec2.instance_type = m1.small
batchsubmit.condorec2.access_key_id = /nonexistent/access.key
batchsubmit.condorec2.secret_access_key = /nonexistent/secret.key
"""
    factory, port, clock = build(tmp_path, text)
    port.jobs = [
        {"ClusterId": 7, "ProcId": k, "JobStatus": 1, "PilotFactoryId": "f1",
         "QDate": clock.now(), "JobUniverse": 5 if k < 3 else 9,
         "PilotFactoryQueue": "A" if k < 3 else "V"}
        for k in range(6)
    ]  # fmt: skip
    acting: list[str] = []
    for _ in range(10):
        clock.advance(61)
        port.calls.clear()
        traces = factory.cycle()
        acting = sorted(t.queue for t in traces if any("cancelled" in r for r in t.results))
        if acting:
            break
    assert acting == ["A", "V"]
    rechecks = [c for c in port.named("query_jobs") if "ClusterId ==" in (c[3] or "")]
    assert len(rechecks) == 1
    expr = classad2.ExprTree(rechecks[0][3])
    assert sum(expr.eval(classad2.ClassAd(j)) is True for j in port.jobs) == 4
    assert sorted(len(c[1]) for c in port.named("remove")) == [2, 2]  # n = 1 - 3 in each


def test_workers_of_a_queue_no_longer_configured_are_reported_and_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    factory, port, clock = build(tmp_path)
    status_file = tmp_path / "status.json"
    factory.fcfg = replace(factory.fcfg, status_file=str(status_file))
    port.jobs = [
        {"ClusterId": 8, "ProcId": k, "JobStatus": 1, "PilotFactoryId": "f1", "QDate": 1.0,
         "PilotFactoryQueue": "GONE_QUEUE"}
        for k in range(3)
    ]  # fmt: skip
    with caplog.at_level("WARNING"):
        factory.cycle()
        clock.advance(61)
        factory.cycle()
    assert factory.unconfigured == {"GONE_QUEUE": 3}
    warned = [r for r in caplog.records if "GONE_QUEUE" in r.getMessage()]
    assert len(warned) == 1 and "never touched" in warned[0].getMessage()
    assert port.count("remove") == port.count("edit") == 0
    fconf = tmp_path / "factory.conf"
    fconf.write_text(f"[Factory]\nstatusFile = {status_file}\n")
    assert main(["status", "--daemon", "-c", str(fconf)]) == 0
    assert "3 worker(s) of queue GONE_QUEUE, which is not configured" in capsys.readouterr().out


# ---------------------------------------------------------------------------- stalled sources

STALLING = QUEUES.replace(
    "[A]\nwmsqueue = LABEL_A", "[A]\nwmsqueue = LABEL_A\nwmsstatus.condor.scheddhost = far.example"
)


def stalling(tmp_path: Path, budget: float = 0.3) -> tuple[Factory, FakeCondor, Any, Any]:
    """A and B read their work from different sources; A's hangs on a server until released."""
    factory, port, _ = build(tmp_path, STALLING)
    factory.fcfg = replace(factory.fcfg, refresh_timeout=budget)
    factory.world.blocking_io = True  # type: ignore[attr-defined]
    stuck = factory.queues["A"].wms_source
    assert stuck is not factory.queues["B"].wms_source
    gate = threading.Event()
    calls = []
    real = stuck.refresh

    def hang() -> None:
        calls.append(time.monotonic())
        gate.wait(30)
        real()

    stuck.refresh = hang  # type: ignore[method-assign]
    stuck.refresh_lane = lambda: ("http", "far")  # type: ignore[method-assign]
    port.jobs = payload("LABEL_A", 2) + payload("LABEL_B", 3, start=2)
    return factory, port, gate, calls


def test_a_stalled_source_delays_no_other_queue(tmp_path: Path) -> None:
    factory, port, gate, calls = stalling(tmp_path)
    t0 = time.monotonic()
    traces = {t.queue: t for t in factory.cycle()}
    took = time.monotonic() - t0
    assert took < 2.0, f"the cycle waited {took:.1f}s for a stalled source"
    assert traces["B"].n == 3 and [c[2] for c in port.named("submit")] == [3]
    assert traces["A"].n == 0
    assert "no answer within refresh_timeout=0.3s" in json.dumps(traces["A"].to_dict())
    # Next tick, the stalled lane is not asked again while its refresh still runs.
    traces = {t.queue: t for t in factory.cycle(force=True)}
    assert len(calls) == 1
    assert "still refreshing" in json.dumps(traces["A"].to_dict())
    gate.set()
    factory._lanes[("http", "far")].thread.join(5)
    traces = {t.queue: t for t in factory.cycle(force=True)}
    assert len(calls) == 2 and traces["A"].n == 2, traces["A"].to_dict()


def test_stop_is_honoured_while_a_server_stalls(tmp_path: Path) -> None:
    factory, _, gate, _ = stalling(tmp_path, budget=60)
    done = threading.Event()
    runner = threading.Thread(target=lambda: (factory.run(), done.set()), daemon=True)
    runner.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    factory.stop()
    assert done.wait(2), "run() still waiting on a stalled source after stop()"
    assert time.monotonic() - t0 < 1.0
    assert factory.cycles_run == 0, "a cycle interrupted while reading acts on nothing"
    gate.set()


def test_inline_refresh_without_blocking_io(tmp_path: Path) -> None:
    """A world that never stalls (the simulator) is read in order on the caller's thread."""
    factory, port, _ = build(tmp_path)
    port.jobs = payload("LABEL_A", 1)
    seen = []
    src = factory.queues["A"].batch_source
    real = src.refresh

    def spy() -> None:
        seen.append(threading.current_thread() is threading.main_thread())
        real()

    src.refresh = spy  # type: ignore[method-assign]
    factory.cycle()
    assert seen == [True]


# ---------------------------------------------------------------------------- reload, status file


def test_reload_keeps_a_queue_that_broke_on_its_old_config(tmp_path: Path) -> None:
    factory, port, _ = build(tmp_path)
    conf = tmp_path / "queues.conf"
    conf.write_text(
        textwrap.dedent(QUEUES).replace("wmsqueue = LABEL_A", "wmsqueue = LABEL_A\nbogus.key = 1")
        .replace("[B]\nwmsqueue = LABEL_B", "[B]\nwmsqueue = LABEL_B\nbatchsubmitplugin = Nope")
    )  # fmt: skip
    factory.reload_hook = lambda: load_queues([str(conf)])
    assert factory.reload_from_hook()
    assert set(factory.queues) == {"A", "B"}, "a typo must not drop a queue"
    assert "A" not in factory.reload_errors, "a warning is no reason to keep the old config"
    assert "Nope" in factory.reload_errors["B"], factory.reload_errors
    assert factory.queues["B"].cfg.batchsubmit.cls.NAME == "CondorLocal"
    port.jobs = payload("LABEL_B", 2)
    traces = {t.queue: t for t in factory.cycle(force=True)}
    assert traces["B"].n == 2, "the kept queue still runs"
    assert "Nope" in factory.status()["reload_errors"]["B"]


def test_reload_to_no_queue_or_unreadable_config_is_refused(tmp_path: Path) -> None:
    factory, _, _ = build(tmp_path)
    before = dict(factory.queues)
    conf = tmp_path / "queues.conf"
    conf.write_text("[A]\nenabled = False\n[B]\nenabled = False\n")
    factory.reload_hook = lambda: load_queues([str(conf)])
    assert not factory.reload_from_hook()
    assert factory.queues == before
    assert "no usable queue" in (factory.status()["reload_refused"] or "")
    conf.write_bytes(b"\x00\xff not ini")
    assert not factory.reload_from_hook()
    assert factory.queues == before and factory.reload_refused


@pytest.mark.parametrize(
    "content",
    ["", '{"factory_id": "f1", "cyc', "[1, 2]", '{"a": 1}', '{"factory_id": "f1", "time": 1, '
     '"cycles": 1, "sources": [], "queues": {"A": {"history": "x", "counters": {}}}}',
     '{"factory_id": "f1", "time": 1, "cycles": 1, "sources": [{}], "queues": {}}'],
)  # fmt: skip
def test_status_daemon_survives_a_bad_status_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    status_file = tmp_path / "status.json"
    status_file.write_text(content)
    fconf = tmp_path / "factory.conf"
    fconf.write_text(f"[Factory]\nstatusFile = {status_file}\n")
    assert main(["status", "--daemon", "-c", str(fconf)]) == 2
    err = capsys.readouterr().err
    assert str(status_file) in err and "Traceback" not in err


def test_status_file_is_not_world_readable(tmp_path: Path) -> None:
    factory, _, _ = build(tmp_path)
    status_file = tmp_path / "status.json"
    factory.fcfg = replace(factory.fcfg, status_file=str(status_file))
    factory.cycle()
    assert status_file.stat().st_mode & 0o777 == 0o640


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    """`pilotfactory check ... | head -1`: the reader leaves early."""
    conf = tmp_path / "queues.conf"
    conf.write_text(
        "".join(f"[Q{i}]\nwmsqueue = L\nbogus{i} = 1\n" for i in range(2000))
        + "[DEFAULT]\nbatchsubmitplugin = CondorLocal\nbatchsubmit.condorlocal.executable = /x\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pilotfactory.cli", "check", "-q", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()  # the reader leaves, as head does
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


# ---------------------------------------------------------------------------- scheduling


def test_an_overrunning_cycle_skips_ticks_and_never_stacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = QUEUES.replace("[B]\nwmsqueue = LABEL_B", "[B]\nwmsqueue = LABEL_B\napfqueue.sleep = 20")
    factory, port, clock = build(tmp_path, text)
    start = clock.now()
    port.jobs = payload("LABEL_A", 1)
    real_submit = port.submit

    def slow_submit(*args: Any, **kwargs: Any) -> Any:
        clock.advance(130)  # a schedd that takes 130 s to accept one submit
        return real_submit(*args, **kwargs)

    port.submit = slow_submit  # type: ignore[method-assign]
    factory.cycle()
    a, b = factory.queues["A"], factory.queues["B"]
    # A (every 60 s) began at start and ran till start+130: the runs due at +60 and +120 fell
    # inside it and are skipped, not run back to back; B (every 20 s) skipped six.
    assert (a.next_run - start, a.counters["skipped"]) == (180, 2)
    assert (b.next_run - start, b.counters["skipped"]) == (140, 6)
    assert "queue A: the cycle took 130.0s, longer than its 60s interval; skipped 2" in caplog.text
    assert factory.due_queues(clock.now()) == []
    port.submit = real_submit  # type: ignore[method-assign]
    port.jobs = []
    clock.advance(10)
    assert [t.queue for t in factory.cycle()] == ["B"]
    assert b.next_run - start == 160 and b.counters["skipped"] == 6, "on time: nothing skipped"
    assert factory.status()["queues"]["B"]["counters"]["skipped"] == 6
