"""The factory against a real HTCondor pool (scripts/condor-sandbox): pilots, isolation,
and a schedd that goes away and comes back. Every wait polls real daemons, bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.clock import WallClock
from pilotfactory.factory.config import QueueConfig, default_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.info import BatchQueueInfo, WorkerState
from pilotfactory.factory.ports import CondorTarget
from tests.conftest import wait_for

pytestmark = pytest.mark.condor

PILOTS = """
[IT_PILOTS]
wmsstatusplugin = Condor
wmsqueue = {label}
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/sleep
batchsubmit.condorlocal.executable.arguments = 600
schedplugin = Ready, MaxPerCycle, MaxPending, MaxToRun
sched.maxpercycle.maximum = 3
sched.maxpending.maximum = 4
sched.maxtorun.maximum = {maxtorun}
retire_confirm_cycles = 1
apfqueue.sleep = 1
"""


@pytest.fixture
def workdir(condor_pool: Any) -> Iterator[Path]:
    """A directory that exists at the same path in the chroot, writable by the submit user."""
    root = Path(os.environ["PILOTFACTORY_SANDBOX_JOBDIR"]) / f"it-{uuid.uuid4().hex[:8]}"
    old = os.umask(0)
    try:
        root.mkdir(parents=True, mode=0o1777)
        yield root
    finally:
        os.umask(old)


def load(tmp: Path, text: str) -> list[QueueConfig]:
    conf = tmp / f"queues-{uuid.uuid4().hex[:6]}.conf"
    conf.write_text(textwrap.dedent(text))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return res.queues


def make_factory(fid: str, queues: list[QueueConfig], workdir: Path) -> Factory:
    fcfg = replace(
        default_factory_config(),
        factory_id=fid,
        raw={"baseLogDir": str(workdir / "logs")},
    )
    return Factory(fcfg, queues, RealWorld("bindings"), WallClock())


def observe(factory: Factory, queue: str) -> BatchQueueInfo:
    """Read the queue's workers without deciding anything."""
    src = factory.queues[queue].batch_source
    src.refresh()
    info = src.info(queue)
    assert info is not None
    return info


def settled(factory: Factory, queue: str, total: int, cpus: int = 4) -> Callable[[], Any]:
    def probe() -> Any:
        info = observe(factory, queue)
        running = info.count(WorkerState.BUSY)
        if len(info.workers) == total and running == min(total, cpus):
            return info
        return None

    return probe


@pytest.fixture
def payload(condor_pool: Any, workdir: Path) -> Iterator[Callable[[str, int], list[str]]]:
    """Idle payload jobs that never match (Requirements = False): a constant 'ready' count."""
    port = RealWorld("bindings").condor(CondorTarget())
    made: list[str] = []

    def submit(label: str, n: int) -> list[str]:
        res = port.submit(
            {
                "executable": "/bin/true",
                "requirements": "False",
                "+MATCH_APF_QUEUE": f'"{label}"',
                "initialdir": str(workdir),
                "log": str(workdir / "payload.log"),
            },
            n,
        )
        made.extend(res.job_ids)
        return res.job_ids

    yield submit
    if made:
        port.remove(made, "test cleanup")


def cleanup(*factories: Factory) -> None:
    port = RealWorld("bindings").condor(CondorTarget())
    for f in factories:
        jobs = port.query_jobs({"PilotFactoryId": f.fcfg.factory_id}, ["ClusterId", "ProcId"])
        ids = [f"{j['ClusterId']}.{j['ProcId']}" for j in jobs]
        if ids:
            port.remove(ids, "test cleanup")


def test_pilot_queue_follows_the_chain_across_cycles(
    condor_pool: Any, workdir: Path, payload: Callable[[str, int], list[str]]
) -> None:
    label = f"IT_{uuid.uuid4().hex[:6]}"
    payload(label, 10)
    factory = make_factory(
        f"it-{label}", load(workdir, PILOTS.format(label=label, maxtorun=100)), workdir
    )
    try:
        t1 = factory.cycle(force=True)[0]
        assert t1.wms is not None and t1.wms.ready == 10
        assert (t1.n, t1.results) == (3, ["submitted 3"])
        # Right after the submit the negotiator has not matched them yet (its cycle is 2 s).
        seen_pending = observe(factory, "IT_PILOTS").count(WorkerState.PENDING)
        assert seen_pending >= 1
        wait_for("3 pilots running", settled(factory, "IT_PILOTS", 3))
        t2 = factory.cycle(force=True)[0]
        assert (t2.n, t2.results) == (3, ["submitted 3"])  # MaxPerCycle
        info = wait_for("4 running, 2 pending", settled(factory, "IT_PILOTS", 6))
        assert info.pending == 2
        t3 = factory.cycle(force=True)[0]
        assert t3.n == 2, t3.chain.summary() if t3.chain else t3  # MaxPending: 4 - 2
        wait_for("4 running, 4 pending", settled(factory, "IT_PILOTS", 8))
        t4 = factory.cycle(force=True)[0]
        assert t4.n == 0 and not t4.planned  # MaxPending full
        # Lower MaxToRun by reloading the configuration: 8 pilots, maximum 5 -> 3 surplus.
        pending_before = {
            w.id for w in observe(factory, "IT_PILOTS").workers if w.state is WorkerState.PENDING
        }
        factory.reload(load(workdir, PILOTS.format(label=label, maxtorun=5)))
        t5 = factory.cycle(force=True)[0]
        assert t5.n == -3
        cancelled = [w.id for a in t5.planned for w in a.workers if a.kind.value == "cancel"]
        newest = sorted(pending_before, key=lambda j: tuple(map(int, j.split("."))))[-3:]
        assert sorted(cancelled) == sorted(newest)

        def five_left() -> BatchQueueInfo | None:
            info = observe(factory, "IT_PILOTS")
            return info if len(info.workers) == 5 else None

        after = wait_for("5 pilots left", five_left)
        assert after.count(WorkerState.BUSY) == 4  # running pilots untouched
    finally:
        cleanup(factory)


def test_two_factories_on_one_schedd_never_see_each_other(
    condor_pool: Any, workdir: Path, payload: Callable[[str, int], list[str]]
) -> None:
    label = f"IT_{uuid.uuid4().hex[:6]}"
    payload(label, 2)
    queues = load(workdir, PILOTS.format(label=label, maxtorun=100))
    a = make_factory(f"it-a-{label}", queues, workdir)
    b = make_factory(f"it-b-{label}", queues, workdir)
    try:
        assert a.cycle(force=True)[0].results == ["submitted 2"]
        info_b = observe(b, "IT_PILOTS")
        assert info_b.workers == ()  # same queue name, same schedd: B sees none of A's
        assert b.cycle(force=True)[0].results == ["submitted 2"]
        ids_a = {w.id for w in observe(a, "IT_PILOTS").workers}
        ids_b = {w.id for w in observe(b, "IT_PILOTS").workers}
        assert len(ids_a) == len(ids_b) == 2 and not ids_a & ids_b
    finally:
        cleanup(a, b)


def _condor(*argv: str) -> subprocess.CompletedProcess[str]:
    binary = Path(os.environ["PILOTFACTORY_SANDBOX_BIN"]) / argv[0]
    return subprocess.run([str(binary), *argv[1:]], capture_output=True, text=True, timeout=60)


def test_factory_survives_a_schedd_restart(
    condor_pool: Any, workdir: Path, payload: Callable[[str, int], list[str]]
) -> None:
    label = f"IT_{uuid.uuid4().hex[:6]}"
    payload(label, 2)
    factory = make_factory(
        f"it-{label}", load(workdir, PILOTS.format(label=label, maxtorun=100)), workdir
    )
    machine = os.environ["PILOTFACTORY_SANDBOX_MACHINE"]
    try:
        off = _condor("condor_off", "-daemon", "schedd", "-name", machine)
        assert off.returncode == 0, off.stderr
        wait_for(
            "the schedd to stop answering",
            lambda: factory.cycle(force=True)[0].batch_error is not None,
            timeout=60,
        )
        t = factory.cycle(force=True)[0]
        assert t.planned == [] and any("fail closed" in n for n in t.notes)
        assert factory.queues["IT_PILOTS"].counters["submitted"] == 0
        on = _condor("condor_on", "-daemon", "schedd", "-name", machine)
        assert on.returncode == 0, on.stderr

        def recovered() -> Any:
            trace = factory.cycle(force=True)[0]
            return trace if trace.results else None

        t = wait_for("the factory to recover", recovered, timeout=90)
        assert t.results == ["submitted 2"]
        assert t.wms is not None and t.wms.ready == 2  # the payload survived the restart
    finally:
        _condor("condor_on", "-daemon", "schedd", "-name", machine)
        wait_for("schedd back", lambda: _condor("condor_q", "-totals").returncode == 0, 60)
        cleanup(factory)


# ---------------------------------------------------------------------------- kill -9


def start_daemon(workdir: Path, fid: str, label: str, maxtorun: int) -> subprocess.Popen[bytes]:
    """``pilotfactory run`` as its own process; its queue runs every 20 s, so a kill right
    after an action lands before the next status read."""
    qconf = workdir / f"queues-{uuid.uuid4().hex[:6]}.conf"
    qconf.write_text(
        textwrap.dedent(PILOTS.format(label=label, maxtorun=maxtorun)).replace(
            "apfqueue.sleep = 1", "apfqueue.sleep = 20"
        )
    )
    fconf = workdir / "factory.conf"
    fconf.write_text(
        f"[Factory]\nfactoryId = {fid}\nbaseLogDir = {workdir}/logs\nqueueConf = {qconf}\n"
        f"factory.sleep = 1\ncondor_backend = bindings\nallowRoot = true\n"
        f"statusFile = {workdir}/status.json\nstateFile = {workdir}/state.json\n"
    )
    out = open(workdir / "daemon.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pilotfactory.cli import main; raise SystemExit(main())",
         "run", "-v", "-c", str(fconf)],
        stdin=subprocess.DEVNULL, stdout=out, stderr=out,
    )  # fmt: skip
    out.close()
    return proc


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    assert proc.wait(timeout=10) == -9


def cycles_since(workdir: Path, since: float) -> int:
    """Cycles the daemon started at ``since`` has finished (its status file)."""
    try:
        state = json.loads((workdir / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(state["cycles"]) if state["time"] >= since else 0


def test_kill_9_mid_cycle_submits_nothing_twice_and_evicts_nothing(
    condor_pool: Any, workdir: Path, payload: Callable[[str, int], list[str]]
) -> None:
    """The daemon is SIGKILLed between a submit and its next status read, and between a
    cancel and its next read, on the real pool, and restarted each time: no pilot is
    submitted twice, none is left unowned, no running pilot is removed or restarted."""
    label = f"IT_{uuid.uuid4().hex[:6]}"
    fid = f"it-k9-{label}"
    port = RealWorld("bindings").condor(CondorTarget())
    attrs = ["ClusterId", "ProcId", "JobStatus", "JobCurrentStartDate", "PilotFactoryQueue"]

    def pilots() -> dict[str, dict[str, Any]]:
        jobs = port.query_jobs({"PilotFactoryId": fid}, attrs)
        return {f"{j['ClusterId']}.{j['ProcId']}": j for j in jobs if j["JobStatus"] != 3}

    payload(label, 3)
    proc = start_daemon(workdir, fid, label, maxtorun=3)
    try:
        first = wait_for("the first submit", lambda: len(pilots()) == 3 and pilots(), 60, 0.1)
        kill_9(proc)  # submitted; the next status read was 20 s away
        restarted = time.time()
        proc = start_daemon(workdir, fid, label, maxtorun=3)
        wait_for("a cycle of the restarted daemon", lambda: cycles_since(workdir, restarted), 60)
        assert set(pilots()) == set(first), "the restarted daemon submitted nothing again"
        running = wait_for(
            "3 pilots running",
            lambda: (p := pilots()) and all(j["JobStatus"] == 2 for j in p.values()) and p,
            60,
        )

        # More work: 3 more pilots, one more runs (4 cpus), two wait. Then MaxToRun drops to
        # 4: the two waiting ones are cancelled, and the daemon is killed right after.
        payload(label, 3)
        kill_9(proc)
        proc = start_daemon(workdir, fid, label, maxtorun=6)
        wait_for("6 pilots", lambda: len(pilots()) == 6, 60, 0.2)
        six = wait_for(
            "4 running, 2 waiting",
            lambda: (
                (p := pilots())
                and sorted(j["JobStatus"] for j in p.values()) == [1, 1, 2, 2, 2, 2]
                and p
            ),
            60,
        )
        kill_9(proc)
        waiting = {i for i, j in six.items() if j["JobStatus"] == 1}
        proc = start_daemon(workdir, fid, label, maxtorun=4)
        wait_for("the cancel", lambda: not waiting & set(pilots()), 60, 0.1)
        kill_9(proc)  # cancelled; the next status read was 20 s away
        restarted = time.time()
        proc = start_daemon(workdir, fid, label, maxtorun=4)
        wait_for("a cycle of the restarted daemon", lambda: cycles_since(workdir, restarted), 60)
        left = pilots()
        assert set(left) == set(six) - waiting, "no submit, no second cancel"
        started = {i: j.get("JobCurrentStartDate") for i, j in six.items() if i not in waiting}
        assert {i: (j["JobStatus"], j.get("JobCurrentStartDate")) for i, j in left.items()} == {
            i: (2, when) for i, when in started.items()
        }, "nothing evicted or restarted: each runs in the slot it started in"
        assert set(running) <= set(left), "the first pilots ran on throughout"
        status = json.loads((workdir / "status.json").read_text())
        assert status["unconfigured_queues"] == {}, "no orphan: every pilot has its queue"
        restored = (workdir / "daemon.log").read_text()
        assert "restored from" in restored, "the state file was read at each restart"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        cleanup_ids = list(pilots())
        if cleanup_ids:
            port.remove(cleanup_ids, "test cleanup")
