"""Benchmark cases: each ``setup()`` returns (the callable to time, a figure to print)."""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pilotfactory.factory.chain import run_chain
from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import load_queues
from pilotfactory.factory.info import BatchQueueInfo, WMSQueueInfo, Worker, WorkerState
from pilotfactory.factory.planner import PlanInput, PlannerSettings, plan
from pilotfactory.factory.plugin import Env, SchedContext, SchedPlugin
from pilotfactory.factory.ports import SubmitResult
from pilotfactory.factory.registry import default_registry

Setup = Callable[[], tuple[Callable[[], object], Callable[[], str]]]
NOW = 1_700_000_000.0


def _workers(n: int, rng: random.Random) -> tuple[Worker, ...]:
    states = [WorkerState.IDLE, WorkerState.BUSY, WorkerState.PENDING, WorkerState.RETIRING]
    return tuple(
        Worker(
            id=f"{k}.0",
            queue="q",
            state=rng.choice(states),
            since=NOW - rng.uniform(0, 7200),
            slots_busy=rng.randint(0, 4),
            slots_total=4,
        )
        for k in range(n)
    )


def planner_5000() -> tuple[Callable[[], object], Callable[[], str]]:
    workers = _workers(5000, random.Random(1))
    inp = PlanInput(n=-800, workers=workers, now=NOW, settings=PlannerSettings())

    def run() -> object:
        return plan(inp)

    return run, lambda: "5000 workers, n=-800"


def chain_1000_queues() -> tuple[Callable[[], object], Callable[[], str]]:
    reg = default_registry()
    names = ["Ready", "MaxPerCycle", "MaxPending", "MaxToRun", "Scale", "MinPerCycle"]
    params: dict[str, dict[str, Any]] = {
        "MaxPerCycle": {"maximum": 50},
        "MaxPending": {"maximum": 100, "allow_negative": True},
        "MaxToRun": {"maximum": 5000},
        "Scale": {"factor": 1.5},
        "MinPerCycle": {"minimum": -5},
        "Ready": {"offset": 0},
    }
    plugins: list[SchedPlugin] = []
    for name in names:
        cls = reg.get("sched", name)
        full = {p.name: p.default for p in cls.PARAMS}
        full.update(params[name])
        plugins.append(cls(full))  # type: ignore[call-arg,arg-type]
    rng = random.Random(2)
    ctxs = [
        SchedContext(
            queue=f"q{k}",
            now=NOW,
            wms=WMSQueueInfo(queue=f"q{k}", time=NOW, ready=rng.randint(0, 500)),
            batch=BatchQueueInfo(queue=f"q{k}", time=NOW, workers=_workers(50, rng)),
        )
        for k in range(1000)
    ]

    def run() -> object:
        return [run_chain(plugins, c) for c in ctxs]

    return run, lambda: "1000 queues x 6 plugins x 50 workers"


def config_200_queues() -> tuple[Callable[[], object], Callable[[], str]]:
    lines = [
        "[DEFAULT]",
        "wmsstatusplugin = Condor",
        "batchstatusplugin = Condor",
        "batchsubmitplugin = CondorLocal",
        "schedplugin = Ready, MaxPerCycle, MaxPending",
        "sched.maxpercycle.maximum = 50",
        "sched.maxpending.maximum = 100",
    ]
    for k in range(200):
        lines += [f"[Q{k}]", f"wmsqueue = LABEL{k}", f"sched.maxpercycle.maximum = {k + 1}"]
    fd, path = tempfile.mkstemp(suffix=".conf")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))

    def run() -> object:
        res = load_queues([path])
        assert len(res.queues) == 200
        return res

    return run, lambda: "200 queues, 3-plugin chains"


class StaticPort:
    """A pool frozen in memory: measures the plugin's own cost, not a daemon's."""

    def __init__(self, vms: int, jobs_per_vm: int, payload: int) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.slots: list[dict[str, Any]] = []
        self.masters: list[dict[str, Any]] = []
        self.queries = 0
        for k in range(vms):
            iid = f"i-{k:08x}"
            machine = f"vm{k}.pool.test"
            self.jobs.append(
                {
                    "ClusterId": 1000 + k // 100,
                    "ProcId": k % 100,
                    "JobStatus": 2,
                    "JobUniverse": 9,
                    "EC2InstanceName": iid,
                    "PilotFactoryId": "bench",
                    "PilotFactoryQueue": f"vmq{k % 10}",
                    "EnteredCurrentStatus": NOW - 3600,
                    "QDate": NOW - 4000,
                }
            )
            self.masters.append({"Name": machine, "Machine": machine, "EC2InstanceID": iid})
            self.slots.append(
                {
                    "Name": f"slot1@{machine}",
                    "Machine": machine,
                    "SlotType": "Partitionable",
                    "State": "Unclaimed",
                    "Activity": "Idle",
                    "Cpus": 0,
                    "EC2InstanceID": iid,
                    "MaxJobRetirementTime": 86400,
                    "EnteredCurrentActivity": NOW - 100,
                }
            )
            for d in range(jobs_per_vm):
                self.slots.append(
                    {
                        "Name": f"slot1_{d + 1}@{machine}",
                        "Machine": machine,
                        "SlotType": "Dynamic",
                        "State": "Claimed",
                        "Activity": "Busy",
                        "Cpus": 1,
                        "EC2InstanceID": iid,
                        "MaxJobRetirementTime": 86400,
                        "EnteredCurrentActivity": NOW - 50,
                    }
                )
        for k in range(payload):
            self.jobs.append(
                {"ClusterId": 1, "ProcId": k, "JobStatus": 1, "MATCH_APF_QUEUE": f"L{k % 10}"}
            )

    def _pick(
        self, ads: Sequence[Mapping[str, Any]], match: Mapping[str, Any], proj: Sequence[str]
    ) -> list[dict[str, Any]]:
        self.queries += 1
        return [
            {k: ad[k] for k in proj if k in ad}
            for ad in ads
            if all(ad.get(k) == v for k, v in match.items())
        ]

    def query_jobs(self, match: Any, projection: Any, constraint: Any = None) -> Any:
        return self._pick(self.jobs, match, projection)

    def query_startds(self, match: Any, projection: Any, constraint: Any = None) -> Any:
        return self._pick(self.slots, match, projection)

    def query_masters(self, match: Any, projection: Any, constraint: Any = None) -> Any:
        return self._pick(self.masters, match, projection)

    def query_history(self, *a: Any) -> Any:
        return []

    def submit(self, description: Any, count: int) -> SubmitResult:
        return SubmitResult(1, count)


class StaticWorld:
    def __init__(self, port: StaticPort) -> None:
        self.port = port

    def condor(self, target: Any) -> StaticPort:
        return self.port


def ec2_status_1000_vms() -> tuple[Callable[[], object], Callable[[], str]]:
    port = StaticPort(vms=1000, jobs_per_vm=4, payload=10_000)
    cls = default_registry().get("batchstatus", "CondorEC2")
    params = {p.name: p.default for p in cls.PARAMS}
    env = Env("bench", StaticWorld(port), VirtualClock(NOW))  # type: ignore[arg-type]
    source = cls(params, env)  # type: ignore[call-arg]

    def run() -> object:
        port.queries = 0
        source.refresh()  # type: ignore[attr-defined]
        infos = [source.info(f"vmq{k}") for k in range(10)]  # type: ignore[attr-defined]
        assert sum(len(i.workers) for i in infos if i) == 1000
        return infos

    return run, lambda: f"1000 VMs, 5000 slot ads, 10 queues; {port.queries} queries/refresh"


def factory_cycle_1000_vms() -> tuple[Callable[[], object], Callable[[], str]]:
    """The whole factory: 10 VM queues sharing one schedd, 1000 VMs, 10 000 idle jobs."""
    from dataclasses import replace

    from pilotfactory.factory.config import default_factory_config
    from pilotfactory.factory.factory import Factory

    port = StaticPort(vms=1000, jobs_per_vm=4, payload=10_000)
    lines = [
        "[DEFAULT]",
        "wmsstatusplugin = Condor",
        "batchstatusplugin = CondorEC2",
        "batchsubmitplugin = CondorEC2",
        "schedplugin = JobsPerVM, IdleShutdown, MaxPerCycle, MaxVMs",
        "sched.jobspervm.jobs = 4",
        "sched.maxpercycle.maximum = 50",
        "sched.maxvms.maximum = 500",
        # what CondorEC2 cannot work without (check refuses the queue otherwise); dry run
        "batchsubmit.condorec2.gridresource = https://ec2.example.test/",
        "batchsubmit.condorec2.ami_id = ami-1",
        "batchsubmit.condorec2.instance_type = m1.small",
        "batchsubmit.condorec2.access_key_id = /nonexistent/access.key",
        "batchsubmit.condorec2.secret_access_key = /nonexistent/secret.key",
    ]
    for k in range(10):
        lines += [f"[vmq{k}]", f"wmsqueue = L{k}"]
    fd, path = tempfile.mkstemp(suffix=".conf")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines))
    queues = load_queues([path]).queues
    fcfg = replace(default_factory_config(), factory_id="bench")
    clock = VirtualClock(NOW)
    factory = Factory(fcfg, queues, StaticWorld(port), clock, dry_run=True)  # type: ignore[arg-type]

    def run() -> object:
        port.queries = 0
        traces = factory.cycle(force=True)
        assert len(traces) == 10 and all(t.error is None for t in traces), traces
        return traces

    return run, lambda: f"10 queues, 1000 VMs, 10k jobs; {port.queries} pool queries/cycle"


def demo_6_hours() -> tuple[Callable[[], object], Callable[[], str]]:
    """The shipped demo: simulated hours per wall second."""
    from pathlib import Path

    from pilotfactory.factory.config import default_factory_config
    from pilotfactory.sim.runner import _dummy_secrets, simulate

    conf = Path(__file__).resolve().parents[1] / "etc" / "queues.conf"
    workdir = tempfile.mkdtemp(prefix="pf-bench-")
    queues = _dummy_secrets(load_queues([str(conf)]).queues, workdir)
    fcfg = dataclasses.replace(default_factory_config(), raw={"baseLogDir": workdir})
    out: dict[str, Any] = {}

    def run() -> object:
        out.update(simulate(fcfg, queues, 6.0, 1, "auto", verbose=False))
        return out

    return (
        run,
        lambda: (
            f"6 simulated hours, {out['world']['payload_completed']} jobs, "
            f"{out['world']['instances_launched']} VMs"
        ),
    )


ALL: list[tuple[str, Setup, float | None]] = [
    ("planner: 5000 workers, one plan", planner_5000, 0.1),
    ("chain: 1000 queues", chain_1000_queues, 1.0),
    ("config: load 200 queues", config_200_queues, 1.0),
    ("CondorEC2 batch status: 1000 VMs refresh", ec2_status_1000_vms, 1.0),
    ("factory cycle: 10 queues, 1000 VMs, 10k jobs", factory_cycle_1000_vms, 10.0),
    ("demo: 6 simulated hours (etc/queues.conf)", demo_6_hours, 10.0),
]
