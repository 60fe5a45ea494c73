"""The pre-flight runner: one probe per endpoint, queue maxima against quota, one deadline.

Run against the simulated world (a real implementation of every port) with its outage switches;
a stalling probe is a plugin-free world whose condor port sleeps.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import QueueConfig, load_queues
from pilotfactory.factory.ports import CondorTarget
from pilotfactory.factory.preflight import collect, queue_maximum, run_preflight
from pilotfactory.factory.probe import Result
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.world import SimConfig, SimWorld

PILOTS = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
schedplugin = Ready, MaxToRun
sched.maxtorun.maximum = 5
executable = /bin/true

[P1]
wmsqueue = A
[P2]
wmsqueue = B
sched.maxtorun.maximum = 2
"""

VMS = """
[V{n}]
wmsstatusplugin = Condor
wmsqueue = V
batchstatusplugin = EC2
batchsubmitplugin = EC2
schedplugin = Ready{chain}
batchsubmit.ec2.image = ami-1
batchsubmit.ec2.flavor = m1.small
batchsubmit.ec2.collectorhost = cm.test
batchstatus.ec2.collectorhost = cm.test
"""


def queues(tmp_path: Path, text: str) -> list[QueueConfig]:
    conf = tmp_path / "q.conf"
    conf.write_text(textwrap.dedent(text))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return res.queues


def vm_queues(tmp_path: Path, *maxima: int | None) -> list[QueueConfig]:
    text = ""
    for n, m in enumerate(maxima):
        chain = "" if m is None else f", MaxVMs\nsched.maxvms.maximum = {m}"
        text += VMS.format(n=n, chain=chain)
    return queues(tmp_path, text)


def sim(limit: int | None = None) -> SimWorld:
    return SimWorld(VirtualClock(1_000_000.0), SimConfig(cloud=CloudConfig(quota=limit)))


def test_one_probe_per_endpoint_naming_every_queue(tmp_path: Path) -> None:
    qs = queues(tmp_path, PILOTS)
    probes = collect(qs, sim())
    # wms, batch status and submit of both queues all name the one local schedd
    assert [p.endpoint for p, _ in probes] == ["schedd (local)"]
    need = probes[0][1]
    assert need.queues == ("P1", "P2") and need.maximum == 7
    reports = run_preflight(qs, sim())
    assert len(reports) == 1 and reports[0].result is Result.OK
    assert "answered" in reports[0].findings[0].what


def test_the_tightest_cap_is_the_queue_maximum(tmp_path: Path) -> None:
    text = VMS.format(n=0, chain=", MaxToRun, MaxVMs") + (
        "sched.maxtorun.maximum = 9\nsched.maxvms.maximum = 4\n"
    )
    [q] = queues(tmp_path, text)
    assert queue_maximum(q) == 4
    [bare] = vm_queues(tmp_path, None)
    assert queue_maximum(bare) is None


def test_an_unreachable_schedd_fails_its_queues(tmp_path: Path) -> None:
    world = sim()
    world.pool.schedd_down = True
    [report] = run_preflight(queues(tmp_path, PILOTS), world)
    assert report.result is Result.FAIL and report.queues == ("P1", "P2")
    assert "unreachable" in report.findings[0].what


def test_quota_headroom_judged_against_the_summed_maximum(tmp_path: Path) -> None:
    reports = {r.endpoint: r for r in run_preflight(vm_queues(tmp_path, 3, 4), sim(limit=10))}
    cloud = next(r for name, r in reports.items() if name.startswith("EC2"))
    assert cloud.result is Result.OK and cloud.queues == ("V0", "V1")
    assert [f.what for f in cloud.findings] == [
        "credentials accepted",
        "instances: 0 of 10 used, 10 free; the queues' maximum 7 fits",
    ]
    assert reports["collector cm.test"].result is Result.OK

    tight = run_preflight(vm_queues(tmp_path, 3, 4), sim(limit=6))
    cloud = next(r for r in tight if r.endpoint.startswith("EC2"))
    assert cloud.result is Result.WARN
    assert "maximum 7 exceeds it: launches past 6 will meet quota errors" in cloud.findings[1].what


def test_a_queue_without_maximum_leaves_headroom_unjudged(tmp_path: Path) -> None:
    reports = run_preflight(vm_queues(tmp_path, 3, None), sim(limit=10))
    cloud = next(r for r in reports if r.endpoint.startswith("EC2"))
    assert cloud.result is Result.WARN
    assert "queue(s) V1 have no maximum" in cloud.findings[1].what


def test_no_stated_quota_is_fine(tmp_path: Path) -> None:
    reports = run_preflight(vm_queues(tmp_path, 3), sim(limit=None))
    cloud = next(r for r in reports if r.endpoint.startswith("EC2"))
    assert cloud.result is Result.OK
    assert cloud.findings[1].what == "instances: 0 used, no limit"


class _StallingWorld:
    """A world whose condor port never answers (a black-holed address) for one collector."""

    def __init__(self, base: SimWorld) -> None:
        self.base = base
        self.release = threading.Event()

    def condor(self, target: CondorTarget) -> Any:
        if target.collector != "blackhole.test":
            return self.base.condor(target)
        release = self.release

        class Port:
            def ping_schedd(self) -> None:
                release.wait(30)

        return Port()

    def cloud(self, account: Any) -> Any:
        return self.base.cloud(account)

    def panda(self, settings: Any) -> Any:
        return self.base.panda(settings)

    def site_status(self, settings: Any) -> Any:
        return self.base.site_status(settings)


def test_the_deadline_bounds_the_whole_preflight(tmp_path: Path) -> None:
    conf = tmp_path / "stall.conf"
    conf.write_text(
        textwrap.dedent(PILOTS)
        + "[P3]\nwmsqueue = C\n"
        + "".join(
            f"{k}.condor{'local' if k == 'batchsubmit' else ''}.collectorhost = blackhole.test\n"
            for k in ("wmsstatus", "batchstatus", "batchsubmit")
        )
    )
    qs = load_queues([str(conf)]).queues
    world = _StallingWorld(sim())
    started = time.monotonic()
    try:
        reports = run_preflight(qs, world, deadline=0.5)  # type: ignore[arg-type]
    finally:
        world.release.set()
    assert time.monotonic() - started < 2.0
    by_endpoint = {r.endpoint: r for r in reports}
    assert by_endpoint["schedd (local)"].result is Result.OK
    stalled = by_endpoint["schedd (local) via collector blackhole.test"]
    assert stalled.result is Result.FAIL and stalled.queues == ("P3",)
    assert stalled.findings[0].what == "no answer within the 0.5 s pre-flight"


def test_a_plugin_raising_fails_only_its_own_probe(tmp_path: Path) -> None:
    world = sim()

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom\x1b[31m")

    world.pool.ping_schedd = broken  # type: ignore[method-assign]
    [report] = run_preflight(queues(tmp_path, PILOTS), world)
    assert report.result is Result.FAIL
    assert report.findings[0].what == "RuntimeError: boom\\x1b[31m"


def test_condor_probes_share_one_thread(tmp_path: Path) -> None:
    """The HTCondor bindings are kept to one thread: distinct schedds are probed in turn."""
    text = "".join(
        f"[Q{n}]\nwmsstatusplugin = Condor\nwmsqueue = W\nbatchstatusplugin = Condor\n"
        f"batchsubmitplugin = CondorLocal\nschedplugin = Ready\nexecutable = /bin/true\n"
        + "".join(
            f"{k}.condor{'local' if k == 'batchsubmit' else ''}.scheddhost = s{n}.test\n"
            for k in ("wmsstatus", "batchstatus", "batchsubmit")
        )
        for n in range(4)
    )
    busy: list[int] = []
    most: list[int] = [0]
    guard = threading.Lock()

    class World(_StallingWorld):
        def condor(self, target: CondorTarget) -> Any:
            class Port:
                def ping_schedd(self) -> None:
                    with guard:
                        busy.append(1)
                        most[0] = max(most[0], len(busy))
                    time.sleep(0.05)
                    with guard:
                        busy.pop()

            return Port()

    reports = run_preflight(queues(tmp_path, text), World(sim()))  # type: ignore[arg-type]
    assert [r.result for r in reports] == [Result.OK] * 4
    assert most[0] == 1
