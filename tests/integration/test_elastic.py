"""Elastic VM pools on real daemons: the factory grows, drains, un-retires and reaps VMs whose
startds really join the sandbox pool.

The cloud is a moto EC2 server on loopback; every running instance becomes a real startd
through ``vmemu.Emulator``, configured only by the user data the factory rendered. Both VM
paths run the same scenarios: ``EC2`` (the factory calls the EC2 API itself) and
``CondorEC2`` (grid-universe jobs: the sandbox's real gridmanager and ec2_gahp call moto).
Each scenario asserts what was lost (nothing: no payload job started twice, no instance left)
and records a timeline, printed in the terminal summary of the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import htcondor2
import pytest
from moto.server import ThreadedMotoServer

from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.clock import WallClock
from pilotfactory.factory.config import QueueConfig, default_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.info import Worker, WorkerState
from pilotfactory.factory.ports import CondorError, CondorTarget
from pilotfactory.factory.trace import CycleTrace
from tests.conftest import wait_for
from tests.integration.conftest import CondorPool
from tests.integration.vmemu import Emulator

pytestmark = [pytest.mark.condor, pytest.mark.elastic]

PATHS = ("EC2", "CondorEC2")
QUEUE = "ELASTIC"


# ---------------------------------------------------------------------------- the world


@dataclass
class Cloud:
    url: str  # what the factory and the emulator use
    grid_url: str  # what the gridmanager uses (the host name carries region and service)
    client: Any
    image: str


@pytest.fixture(scope="module")
def cloud(condor_pool: CondorPool) -> Iterator[Cloud]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDELASTIC",
        aws_secret_access_key="elastic-secret",
    )
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    grid_host = condor_pool.env["PILOTFACTORY_SANDBOX_EC2_HOST"]
    yield Cloud(url, f"http://{grid_host}:{port}/", client, image)
    server.stop()


@pytest.fixture(scope="module")
def emulator(condor_pool: CondorPool, cloud: Cloud) -> Iterator[Emulator]:
    jobdir = Path(condor_pool.env["PILOTFACTORY_SANDBOX_JOBDIR"])
    vm_dir = jobdir / f"vms-{uuid.uuid4().hex[:8]}"
    emu = Emulator(cloud.client, Path(condor_pool.env["PILOTFACTORY_SANDBOX_ROOT"]), vm_dir)
    emu.start()
    yield emu
    emu.stop()


@dataclass
class Keys:
    access: Path
    secret: Path


@pytest.fixture(scope="module")
def keys(condor_pool: CondorPool) -> Keys:
    """Owner-only key files the job owner can read (the gridmanager runs as that user)."""
    root = condor_pool.env["PILOTFACTORY_SANDBOX_ROOT"]
    user = condor_pool.env["PILOTFACTORY_SANDBOX_SUBMIT_USER"]
    uid = int(subprocess.check_output(["chroot", root, "id", "-u", user], text=True))
    gid = int(subprocess.check_output(["chroot", root, "id", "-g", user], text=True))
    d = Path(condor_pool.env["PILOTFACTORY_SANDBOX_JOBDIR"]) / f"keys-{uuid.uuid4().hex[:8]}"
    d.mkdir(mode=0o700)
    os.chown(d, uid, gid)
    out = []
    for name, text in (("access.key", "AKIDELASTIC"), ("secret.key", "elastic-secret")):
        path = d / name
        path.write_text(text + "\n")
        path.chmod(0o600)
        os.chown(path, uid, gid)
        out.append(path)
    return Keys(*out)


@pytest.fixture
def workdir(condor_pool: CondorPool) -> Path:
    path = Path(condor_pool.env["PILOTFACTORY_SANDBOX_JOBDIR"]) / f"el-{uuid.uuid4().hex[:8]}"
    old = os.umask(0)
    try:
        path.mkdir(mode=0o1777)
    finally:
        os.umask(old)
    return path


# ---------------------------------------------------------------------------- the queue


def queue_text(path: str, run: Run, **settings: Any) -> str:
    """One elastic queue: idle payload labelled ``run.label`` -> VMs with one job slot each."""
    base = {
        "wmsstatusplugin": "Condor",
        "wmsqueue": run.label,
        "batchstatusplugin": path,
        "batchsubmitplugin": path,
        "schedplugin": "JobsPerVM, IdleShutdown, MaxVMs",
        "sched.jobspervm.jobs": 1,
        # A VM given a job looks idle until its slot ad reaches the collector: with a cycle a
        # second, an idle time and 3 confirming cycles keep that window from retiring it.
        "sched.idleshutdown.idle_time": 8,
        "sched.maxvms.maximum": 2,
        "retire_confirm_cycles": 3,
        "apfqueue.sleep": 1,
        "boot_timeout": 120,
        "held_timeout": 60,
        "expected_job_length": 600,
    }
    c, k = run.cloud, run.keys
    if path == "EC2":
        account = {
            "endpoint_url": c.url,
            "region": "us-east-1",
            "access_key_id": k.access,
            "secret_access_key": k.secret,
            "retries": 0,
            "timeout": 10,
        }
        base.update({f"batchstatus.ec2.{key}": v for key, v in account.items()})
        base.update({f"batchsubmit.ec2.{key}": v for key, v in account.items()})
        base.update({"batchsubmit.ec2.image": c.image, "batchsubmit.ec2.flavor": "t3.micro"})
    else:
        ud = run.workdir / "user-data.sh"
        ud.write_text(  # CondorEC2 passes user data through: the VM's config says who it is
            "#!/bin/sh\ncat > /etc/condor/config.d/50-queue <<'EOF'\n"
            f'PilotFactoryQueue = "{QUEUE}"\nSTARTD_ATTRS = $(STARTD_ATTRS) PilotFactoryQueue\n'
            "EOF\n"
        )
        base.update(
            {
                "batchsubmit.condorec2.gridresource": c.grid_url,
                "batchsubmit.condorec2.ami_id": c.image,
                "batchsubmit.condorec2.instance_type": "t3.micro",
                "batchsubmit.condorec2.access_key_id": k.access,
                "batchsubmit.condorec2.secret_access_key": k.secret,
                "batchsubmit.condorec2.user_data_file": ud,
                "batchsubmit.condorec2.keypair_file": run.workdir / "keypair",
            }
        )
    base.update(settings)
    body = "\n".join(f"{key} = {value}" for key, value in base.items())
    return f"[{QUEUE}]\n{body}\n"


@dataclass
class Run:
    """One scenario: its factory, its payload, its timeline, and what it saw of the cloud."""

    path: str
    pool: CondorPool
    cloud: Cloud
    keys: Keys
    emu: Emulator
    workdir: Path
    label: str = field(default_factory=lambda: f"EL_{uuid.uuid4().hex[:6]}")
    factory: Factory | None = None
    factory_id: str = field(default_factory=lambda: f"pf-el-{uuid.uuid4().hex[:6]}")
    t0: float = field(default_factory=time.monotonic)
    rows: list[str] = field(default_factory=list)
    before: set[str] = field(default_factory=set)
    requests_before: set[str] = field(default_factory=set)
    traces: list[CycleTrace] = field(default_factory=list)
    port: Any = field(default_factory=lambda: RealWorld("bindings").condor(CondorTarget()))

    # -------------------------------------------------------------- set-up

    def configure(self, **settings: Any) -> Factory:
        conf = self.workdir / f"queues-{uuid.uuid4().hex[:6]}.conf"
        conf.write_text(queue_text(self.path, self, **settings))
        res = load_queues([str(conf)])
        assert res.errors == [], res.problems
        queues: list[QueueConfig] = res.queues
        if self.factory is None:
            fcfg = replace(
                default_factory_config(),
                factory_id=self.factory_id,
                raw={"baseLogDir": str(self.workdir / "logs")},
            )
            self.factory = Factory(fcfg, queues, RealWorld("bindings"), WallClock())
        else:
            self.factory.reload(queues)
        return self.factory

    def restart(self, **settings: Any) -> Factory:
        """The factory process dies (kill -9: nothing it held in memory survives) and a new
        one starts with the same factory id and the given queue settings."""
        self.factory = None
        self.row("factory killed and restarted")
        return self.configure(**settings)

    def payload(self, n: int, seconds: int, cpus: int = 1, label: bool = True) -> list[str]:
        """Payload that only a VM can run (the pool's own startd has no EC2InstanceID)."""
        labelled = {"+MATCH_APF_QUEUE": f'"{self.label}"'} if label else {}
        res = self.port.submit(
            {
                "executable": "/bin/sleep",
                "arguments": str(seconds),
                "requirements": "TARGET.EC2InstanceID =!= undefined",
                **labelled,
                "request_cpus": str(cpus),
                "request_memory": "64",
                "job_lease_duration": "30",
                "initialdir": str(self.workdir),
                "log": str(self.workdir / "payload.log"),
            },
            n,
        )
        return list(res.job_ids)

    # -------------------------------------------------------------- observing

    def spot_requests(self) -> dict[str, str]:
        """Spot requests this scenario caused, by id -> state (moto is shared by the suite)."""
        reqs = self.cloud.client.describe_spot_instance_requests()["SpotInstanceRequests"]
        return {
            r["SpotInstanceRequestId"]: r["State"]
            for r in reqs
            if r["SpotInstanceRequestId"] not in self.requests_before
        }

    def open_requests(self) -> int:
        return sum(1 for state in self.spot_requests().values() if state == "open")

    def instances(self) -> dict[str, str]:
        """Instances this scenario caused, by id -> state (CondorEC2's gahp cannot tag)."""
        pages = self.cloud.client.get_paginator("describe_instances").paginate()
        out = {}
        for page in pages:
            for r in page["Reservations"]:
                for i in r["Instances"]:
                    if i["InstanceId"] not in self.before:
                        out[i["InstanceId"]] = i["State"]["Name"]
        return out

    def payload_jobs(self) -> list[dict[str, Any]]:
        return self.port.query_jobs(
            {"MATCH_APF_QUEUE": self.label},
            ["ClusterId", "ProcId", "JobStatus", "NumJobStarts", "RemoteHost"],
        )

    def startds(self) -> set[str]:
        ads = self.port.query_startds(
            {}, ["Machine", "EC2InstanceID"], constraint="EC2InstanceID =!= undefined"
        )
        mine = set(self.instances())
        return {str(a["EC2InstanceID"]) for a in ads if a.get("EC2InstanceID") in mine}

    def count(self, state: WorkerState) -> int:
        return sum(1 for w in self.workers() if w.state is state)

    def acted(self, kind: str, since: int = 0) -> list[Any]:
        """Actions of this kind planned and carried out in the cycles from ``since`` on."""
        return [a for t in self.traces[since:] for a in t.planned if a.kind.value == kind]

    def workers(self) -> list[Worker]:
        assert self.factory is not None
        src = self.factory.queues[QUEUE].batch_source
        src.refresh()
        info = src.info(QUEUE)
        return list(info.workers) if info is not None else []

    def row(self, note: str = "") -> None:
        try:
            jobs = self.payload_jobs()
            status = Counter(int(j["JobStatus"]) for j in jobs)
            seen = f"waiting={status.get(1, 0)} payload_running={status.get(2, 0)}"
            hosts = sorted(str(j["RemoteHost"]).split("@")[-1] for j in jobs if "RemoteHost" in j)
            if hosts:
                seen += f" on[{','.join(h.split('.')[0] for h in hosts)}]"
            seen += f" startds={len(self.startds())}"
        except CondorError as exc:  # the pool itself is what a scenario disturbs
            seen = f"(pool unreadable: {str(exc)[:50]})"
        inst = Counter(self.instances().values())
        if opened := self.open_requests():
            inst["open-spot-request"] = opened
        states = " ".join(f"{k}={v}" for k, v in sorted(inst.items())) or "-"
        self.rows.append(
            f"{time.monotonic() - self.t0:6.1f}s {seen} instances[{states}] {note}".rstrip()
        )

    # -------------------------------------------------------------- driving

    def cycle(self) -> CycleTrace:
        assert self.factory is not None
        [trace] = self.factory.cycle(force=True)
        self.traces.append(trace)
        acted = "; ".join(trace.results) or "nothing"
        if trace.error:
            acted = f"ERROR {trace.error}"
        if trace.batch is not None:
            ws = Counter(w.state.value for w in trace.batch.workers)
            counts = " ".join(f"{k}={v}" for k, v in sorted(ws.items()))
            acted = f"workers[{counts}] n={trace.n} {acted}"
        self.row(acted)
        if os.environ.get("PILOTFACTORY_ELASTIC_DEBUG"):
            print(trace.to_dict())
        return trace

    def until(self, what: str, done: Callable[[], Any], timeout: float = 180) -> Any:
        """Run factory cycles (one a second or so) until ``done()`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            self.cycle()
            try:
                got = done()
            except CondorError:  # the test's own reads fail while the pool is disturbed
                got = None
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}; {self.diagnosis()}"
                )
            time.sleep(1.0)

    def diagnosis(self) -> str:
        """What the factory and the cloud looked like when a wait timed out (CI keeps only
        the assertion message and the tail of the log)."""
        parts = []
        if self.traces:
            parts.append(f"last notes: {list(self.traces[-1].notes)}")
        try:
            workers = [
                f"{w.id}:{w.state.value}@{w.since:.0f}:{w.hold_reason or ''}"
                for w in self.workers()
            ]
            parts.append(f"workers: {workers}")
        except Exception as exc:  # a diagnosis must not hide the failure
            parts.append(f"workers unreadable: {exc}")
        try:
            parts.append(f"instances: {self.instances()} requests: {self.spot_requests()}")
        except Exception as exc:
            parts.append(f"cloud unreadable: {exc}")
        parts.append(f"now={time.time():.0f}")
        return "; ".join(parts)

    # -------------------------------------------------------------- what was lost

    def restarts(self) -> dict[str, int]:
        """Execute events per payload job in its event log (1 each: nothing ever restarted)."""
        starts: Counter[str] = Counter()
        evicted: Counter[str] = Counter()
        log_path = self.workdir / "payload.log"
        if not log_path.exists():
            return {}
        for event in htcondor2.JobEventLog(str(log_path)).events(0):
            jid = f"{event.cluster}.{event.proc}"
            if event.type == htcondor2.JobEventType.EXECUTE:
                starts[jid] += 1
            elif event.type in (
                htcondor2.JobEventType.JOB_EVICTED,
                htcondor2.JobEventType.JOB_ABORTED,
                htcondor2.JobEventType.SHADOW_EXCEPTION,
            ):
                evicted[jid] += 1
        return {jid: starts[jid] + evicted[jid] for jid in starts | evicted}

    def cleanup(self) -> None:
        """Remove this run's jobs and end its instances (the emulator kills their VMs)."""
        try:
            ids = [f"{j['ClusterId']}.{j['ProcId']}" for j in self.payload_jobs()]
            if self.factory is not None:
                fid = self.factory.fcfg.factory_id
                grid = self.port.query_jobs({"PilotFactoryId": fid}, ["ClusterId", "ProcId"])
                ids += [f"{j['ClusterId']}.{j['ProcId']}" for j in grid]
            if ids:
                self.port.remove(ids, "test cleanup")
        finally:
            # The gridmanager terminates a removed grid job's instance by itself; what is still
            # up after that is terminated here. Then every VM of the run must be dead: a VM left
            # idle would take the next scenario's payload.
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and self.live():
                time.sleep(1)
            if live := self.live():
                self.cloud.client.terminate_instances(InstanceIds=live)
            mine = set(self.instances())

            def vms_dead() -> bool:
                return not any(v.instance_id in mine for v in self.emu.running())

            wait_for("the run's VMs killed", vms_dead, timeout=30)

    def live(self) -> list[str]:
        return [i for i, s in self.instances().items() if s != "terminated"]


@pytest.fixture(params=PATHS)
def run(
    request: pytest.FixtureRequest,
    condor_pool: CondorPool,
    cloud: Cloud,
    keys: Keys,
    emulator: Emulator,
    workdir: Path,
) -> Iterator[Run]:
    r = Run(request.param, condor_pool, cloud, keys, emulator, workdir)
    r.before = set(r.instances())
    r.requests_before = set(r.spot_requests())
    yield r
    r.cleanup()
    r.row("after cleanup")
    # In the report (and JUnit XML); the integration conftest prints it after the run.
    request.node.user_properties.append(("timeline", r.rows))


def nothing_lost(run: Run) -> None:
    """No payload job started twice, none evicted; no instance of the run left alive."""
    restarts = run.restarts()
    assert restarts, "no payload ever ran"
    assert set(restarts.values()) == {1}, f"payload restarted or evicted: {restarts}"
    left = {i: s for i, s in run.instances().items() if s != "terminated"}
    assert left == {}, f"instances left: {left}"
    assert not run.emu.errors, run.emu.errors


def states(run: Run) -> Counter[WorkerState]:
    return Counter(w.state for w in run.workers())


# ---------------------------------------------------------------------------- scenarios


def test_grow_run_drain_terminate(run: Run) -> None:
    """(a) Idle payload buys VMs, their startds join and run it; once the work is gone the
    VMs are drained and terminated: zero evictions, zero instances left."""
    run.configure()
    run.row("start")
    jobs = run.payload(2, 15)
    run.until("2 VMs running payload", lambda: len(run.startds()) == 2, timeout=150)
    assert len(run.instances()) == 2, "exactly one VM per idle job (MaxVMs 2)"
    run.until("payload done", lambda: not run.payload_jobs(), timeout=120)
    run.until(
        "every instance terminated",
        lambda: run.instances() and set(run.instances().values()) == {"terminated"},
        timeout=120,
    )
    assert len(run.instances()) == 2, "no VM bought after the work was gone"
    assert len(jobs) == 2
    nothing_lost(run)
    kinds = Counter(a.kind.value for t in run.traces for a in t.planned)
    assert kinds["submit"] >= 1 and kinds["retire"] >= 1 and kinds["reap"] >= 1, kinds


@pytest.mark.parametrize("mode", ["drain", "peaceful"])
def test_demand_returns_while_draining(run: Run, mode: str) -> None:
    """(b) A busy VM is retired (the operator lowers MaxVMs); work comes back while it
    drains: it is un-retired instead of buying a VM, its job is never restarted, and (peaceful)
    its startd comes back after the job and is not reaped in the gap."""
    run.configure(retire_mode=mode)
    run.payload(2, 30)
    run.until("2 busy VMs", lambda: run.count(WorkerState.BUSY) == 2, timeout=150)
    run.configure(retire_mode=mode, **{"sched.maxvms.maximum": 1})
    mark = len(run.traces)
    run.until("one VM retiring", lambda: run.count(WorkerState.RETIRING) == 1, timeout=60)
    assert len(run.acted("retire", mark)) == 1, "exactly one VM retired for MaxVMs 1"
    run.payload(1, 5)
    run.configure(retire_mode=mode, **{"sched.maxvms.maximum": 2})
    mark = len(run.traces)
    run.until("the retiring VM un-retired", lambda: run.acted("unretire", mark), timeout=60)
    assert not run.acted("submit", mark), "no VM bought while one could be un-retired"
    run.until("payload done", lambda: not run.payload_jobs(), timeout=150)
    run.until(
        "every instance terminated",
        lambda: set(run.instances().values()) == {"terminated"},
        timeout=120,
    )
    assert len(run.instances()) == 2, "no VM bought: the un-retired one took the work"
    nothing_lost(run)
    assert len(run.restarts()) == 3


def test_never_joining_image(run: Run) -> None:
    """(c) VMs of a broken image never join: reaped at boot_timeout, never more than
    max_booting booting at once, submits stop with the reason, reaping goes on."""
    broken = run.cloud.client.describe_images(Owners=["amazon"])["Images"][1]["ImageId"]
    run.emu.broken_images.add(broken)
    image_key = "batchsubmit.ec2.image" if run.path == "EC2" else "batchsubmit.condorec2.ami_id"
    run.configure(
        **{
            image_key: broken,
            "boot_timeout": 12,
            "max_booting": 2,
            "failure_limit": 3,
            "backoff.initial": 600,
            "sched.maxvms.maximum": 4,
        }
    )
    run.payload(4, 5)
    stopped = run.until(
        "submits stopped by the failure limit",
        lambda: [n for t in run.traces[-1:] for n in t.notes if "all failed" in n],
        timeout=240,
    )
    assert "never joined" in stopped[0] or "boot_timeout" in stopped[0] or "lost" in stopped[0]
    for t in run.traces:
        if t.batch is not None:
            booting = sum(
                1 for w in t.batch.workers if w.state in (WorkerState.BOOTING, WorkerState.PENDING)
            )
            assert booting <= 2, f"{booting} booting at once (max_booting 2)"
    mark = len(run.traces)
    run.until(
        "every instance reaped",
        lambda: set(run.instances().values()) <= {"terminated"},
        timeout=90,
    )
    for _ in range(3):
        run.cycle()
    assert not run.acted("submit", mark), "no submit once the failure limit stopped the queue"
    assert len(run.payload_jobs()) == 4, "the payload waits; nothing ran"
    assert run.restarts() == {}


def start_daemon(run: Run, **settings: Any) -> subprocess.Popen[bytes]:
    """``pilotfactory run`` as its own process, on this scenario's queue and factory id."""
    qconf = run.workdir / f"queues-{uuid.uuid4().hex[:6]}.conf"
    qconf.write_text(queue_text(run.path, run, **settings))
    fconf = run.workdir / "factory.conf"
    fconf.write_text(
        f"[Factory]\nfactoryId = {run.factory_id}\nbaseLogDir = {run.workdir}/logs\n"
        f"queueConf = {qconf}\nfactory.sleep = 1\ncondor_backend = bindings\n"
        "allowRoot = true\n"  # the sandbox runs everything as root
    )
    log = open(run.workdir / "daemon.log", "ab")  # noqa: SIM115 - the child keeps it
    argv = [
        sys.executable,
        "-c",
        "from pilotfactory.cli import main; raise SystemExit(main())",
        "run",
        "-v",
    ]
    proc = subprocess.Popen(
        [*argv, "-c", str(fconf)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    log.close()
    run.row(f"daemon started (pid {proc.pid})")
    return proc


def kill_9(run: Run, proc: subprocess.Popen[bytes], what: str) -> None:
    proc.kill()
    proc.wait(timeout=10)
    run.row(f"daemon kill -9 {what}")


def watch(run: Run, what: str, done: Callable[[], Any], timeout: float) -> Any:
    """Poll (fast: the kill must land right after the event) while the daemon acts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = done()
        except CondorError:
            got = None
        if got:
            run.row(what)
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def test_kill_9_after_launch_and_after_retire(run: Run) -> None:
    """(d) The factory daemon is killed with SIGKILL right after a launch request and right
    after a retire request, and restarted: no duplicate VM, no orphan, nothing evicted, and
    the retire goes on."""
    run.configure()  # an observer only: it reads, never cycles
    run.payload(2, 30)
    proc = start_daemon(run)
    try:
        watch(run, "first instance launched", lambda: run.instances(), timeout=60)
        kill_9(run, proc, "right after a launch")
        proc = start_daemon(run)
        watch(run, "2 busy VMs", lambda: run.count(WorkerState.BUSY) == 2, timeout=150)
        assert len(run.instances()) == 2, "the restarted daemon saw its VMs coming"
        kill_9(run, proc, "to lower MaxVMs")
        proc = start_daemon(run, **{"sched.maxvms.maximum": 1})
        watch(run, "a retire recorded", lambda: run.count(WorkerState.RETIRING), timeout=60)
        kill_9(run, proc, "right after a retire")
        proc = start_daemon(run, **{"sched.maxvms.maximum": 1})
        watch(run, "payload done", lambda: not run.payload_jobs(), timeout=150)
        watch(
            run,
            "every instance terminated",
            lambda: set(run.instances().values()) == {"terminated"},
            timeout=120,
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert len(run.instances()) == 2, "no duplicate VM"
    nothing_lost(run)


def test_collector_restart_changes_nothing(run: Run) -> None:
    """(e) The collector restarts while VMs run payload: its ads vanish for a while, and
    nothing is retired, reaped or bought because of it."""
    # The VMs are older than boot_timeout when their ads vanish: counted from launch (as it
    # was), they were LOST and reaped with their payload the moment the collector came back.
    run.configure(boot_timeout=20)
    run.payload(2, 70)  # outlasts the restart and the checks after it, with a margin
    run.until("2 busy VMs", lambda: run.count(WorkerState.BUSY) == 2, timeout=150)
    run.until("VMs older than boot_timeout", lambda: time.monotonic() - run.t0 > 25, timeout=60)
    mark = len(run.traces)
    out = run.pool.tool("condor_restart", "-daemon", "collector")
    run.row(f"collector restarted: {out.strip()[:60]}")
    run.until("the startds back in the collector", lambda: len(run.startds()) == 2, timeout=60)
    for _ in range(3):
        run.cycle()
    for kind in ("retire", "reap", "submit", "cancel"):
        assert not run.acted(kind, mark), f"{kind} while the collector restarted"
    run.until("payload done", lambda: not run.payload_jobs(), timeout=150)
    run.until(
        "every instance terminated",
        lambda: set(run.instances().values()) == {"terminated"},
        timeout=120,
    )
    assert len(run.instances()) == 2
    nothing_lost(run)


def test_instance_terminated_behind_our_back(run: Run) -> None:
    """(f) An instance is terminated by someone else while its VM runs payload: its worker
    leaves the books (its record is cleaned up), a replacement is bought, and HTCondor requeues
    the payload that ran there, which then completes on the replacement."""
    run.configure(**{"sched.maxvms.maximum": 1})
    [job] = run.payload(1, 20)
    run.until("a busy VM", lambda: run.count(WorkerState.BUSY) == 1, timeout=150)
    [victim] = [i for i, s in run.instances().items() if s == "running"]
    run.cloud.client.terminate_instances(InstanceIds=[victim])
    run.row(f"terminated {victim} behind the factory's back")
    run.until("a replacement bought", lambda: len(run.instances()) == 2, timeout=120)
    run.until("payload done", lambda: not run.payload_jobs(), timeout=240)
    run.until(
        "every instance terminated",
        lambda: set(run.instances().values()) == {"terminated"},
        timeout=120,
    )
    starts = run.restarts()
    assert starts.get(job, 0) >= 2, f"the payload was requeued and ran again: {starts}"
    assert len(run.instances()) == 2, "one replacement, not more"
    assert not run.emu.errors, run.emu.errors


@pytest.fixture
def spot_stays_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto leaves new spot requests open with AWS's capacity status, as a busy region does
    (the threaded server shares this process's model)."""
    from moto.ec2.models import spot_requests

    original = spot_requests.SpotInstanceRequest.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.ec2_backend.terminate_instances([self.instance.id])
        self.instance = type("NoInstance", (), {"id": None})()
        self.state, self._status_code = "open", "capacity-not-available"
        self.status_message = "no t3.micro capacity in us-east-1a"

    monkeypatch.setattr(spot_requests.SpotInstanceRequest, "__init__", init)


def test_request_never_fulfilled(run: Run, request: pytest.FixtureRequest) -> None:
    """(g) VM requests that are never fulfilled -- an open spot request (EC2), a grid job the
    gridmanager cannot act on because its owner cannot read the key files (CondorEC2) -- are
    reported with their cause, cancelled after pending_timeout and replaced, and the queue
    stops when every request fails the same way."""
    settings: dict[str, Any] = {"pending_timeout": 20, "failure_limit": 4, "backoff.initial": 600}
    if run.path == "EC2":
        request.getfixturevalue("spot_stays_open")
        settings["batchsubmit.ec2.spot_price"] = 0.05
        cause = "capacity-not-available"
    else:
        locked = run.workdir / "root-only"
        locked.mkdir(mode=0o700)  # root's: the gridmanager runs as the job owner
        for name in ("access.key", "secret.key"):
            (locked / name).write_text("x\n")
            (locked / name).chmod(0o600)
        settings["batchsubmit.condorec2.access_key_id"] = locked / "access.key"
        settings["batchsubmit.condorec2.secret_access_key"] = locked / "secret.key"
        cause = "unavailable to the gridmanager"
    run.configure(**settings)
    run.payload(2, 5)
    reported = run.until(
        "the cause reported",
        lambda: [n for n in run.traces[-1].notes if cause in n],
        timeout=60,
    )
    assert "pending_timeout=20s" in reported[0]
    run.until("a request cancelled", lambda: run.acted("reap"), timeout=60)
    [reap] = run.acted("reap")[:1]
    assert reap.failure and cause in reap.reason
    run.until(
        "the queue stopped: every request failed the same way",
        lambda: [n for n in run.traces[-1].notes if "all failed" in n],
        timeout=120,
    )
    assert len(run.acted("submit")) >= 2, "a cancelled request is replaced"
    mark = len(run.traces)
    run.until(
        "the last requests cancelled",
        lambda: not run.workers() and not run.open_requests(),
        timeout=90,
    )
    for _ in range(3):
        run.cycle()
    assert not run.acted("submit", mark), "no submit once every request failed"
    assert set(run.instances().values()) <= {"terminated"} and run.restarts() == {}


@pytest.mark.parametrize("run", ["EC2"], indirect=True)
def test_only_demand_the_vms_can_serve(run: Run) -> None:
    """(5) With the slot its VMs advertise in the queue config, an idle job that cannot
    match it buys no VM; the VM's rendered START takes only the queue's label, so a stranger's
    job that would fit stays idle."""
    slot = '[ Cpus = 1; Memory = 1024; OpSys = "LINUX"; Arch = "X86_64"; EC2InstanceID = "i-x" ]'
    run.configure(**{"wmsstatus.condor.slot_ad": slot, "sched.maxvms.maximum": 3})
    run.cycle()  # the first cycle tells the WMS source to match this label
    [big] = run.payload(1, 5, cpus=4)
    [fits] = run.payload(1, 10)
    [stranger] = run.port.submit(
        {
            "executable": "/bin/sleep",
            "arguments": "5",
            "requirements": "TARGET.EC2InstanceID =!= undefined",
            "request_cpus": "1",
            "request_memory": "64",
            "initialdir": str(run.workdir),
            "log": str(run.workdir / "stranger.log"),
        },
        1,
    ).job_ids
    try:
        run.until("the fitting job done", lambda: fits not in ids(run.payload_jobs()), timeout=150)
        stranger_ad = run.port.query_jobs(
            {"ClusterId": int(stranger.split(".")[0])}, ["JobStatus", "NumJobStarts"]
        )
    finally:
        run.port.remove([stranger], "test cleanup")
    assert len(run.instances()) == 1, "one VM: the 4-core job cannot run on a 1-core VM"
    waiting = {j: int(a["JobStatus"]) for j, a in ids(run.payload_jobs()).items()}
    assert waiting == {big: 1}, "the unmatchable job still waits"
    assert any(t.wms is not None and t.wms.notready == 1 for t in run.traces)
    assert stranger_ad and int(stranger_ad[0]["JobStatus"]) == 1, "START kept the stranger off"
    assert not stranger_ad[0].get("NumJobStarts")
    run.until(
        "the idle VM terminated",
        lambda: set(run.instances().values()) == {"terminated"},
        timeout=120,
    )


def ids(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{j['ClusterId']}.{j['ProcId']}": j for j in jobs}
