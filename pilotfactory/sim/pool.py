"""Simulated HTCondor pool: one schedd, collector, negotiator and gridmanager on a virtual clock.

It implements ``CondorPort`` and answers like the real pool measured in
``docs/reference/real-htcondor.md``: partitionable slots carved into dynamic slots, peaceful
retirement that cannot be cancelled (but ``condor_on`` makes the master restart the startd 1 s
after it exits), drains that evict at once when ``MaxJobRetirementTime`` is 0, removed EC2 jobs
that stay in the queue as Removed until the gridmanager has terminated their instance.

Everything is indexed (jobs by status, free slots by machine, idle jobs in a FIFO heap), so a
tick costs what changed, not jobs x slots.
"""

from __future__ import annotations

import heapq
import random
import re
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pilotfactory.factory.contract import INTERRUPTION_ACTION_ATTR, INTERRUPTION_ATTR
from pilotfactory.factory.ports import (
    CloudError,
    CondorRejected,
    CondorUnreachable,
    LaunchSpec,
    SubmitResult,
)
from pilotfactory.sim.events import EventLoop, seeded_rng
from pilotfactory.sim.metrics import SimMetrics

if TYPE_CHECKING:
    from pilotfactory.sim.cloud import SimCloud, SimInstance
    from pilotfactory.sim.panda import PandaJob, SimPanda

IDLE, RUNNING, REMOVED, COMPLETED, HELD = 1, 2, 3, 4, 5
MASTER_SHUTDOWN_AFTER = 60.0
"""The worker template's ``MASTER.DAEMON_SHUTDOWN`` holds for a master up longer than this."""
VANILLA, GRID = 5, 9
NEVER = 2**31 - 1

UNIVERSES = {"vanilla": VANILLA, "docker": VANILLA, "container": VANILLA, "grid": GRID}
PROTECTED = frozenset({"clusterid", "procid", "jobstatus", "mytype", "owner", "qdate"})

# submit key -> (job attribute, kind): kind "s" string, "e" expression, "i" int, "b" bool
SUBMIT_KEYS: dict[str, tuple[str, str]] = {
    "executable": ("Cmd", "s"),
    "arguments": ("Arguments", "s"),
    "environment": ("Environment", "s"),
    "input": ("In", "s"),
    "output": ("Out", "s"),
    "error": ("Err", "s"),
    "log": ("UserLog", "s"),
    "initialdir": ("Iwd", "s"),
    "requirements": ("Requirements", "e"),
    "rank": ("Rank", "e"),
    "periodic_remove": ("PeriodicRemove", "e"),
    "periodic_hold": ("PeriodicHold", "e"),
    "periodic_release": ("PeriodicRelease", "e"),
    "on_exit_remove": ("OnExitRemove", "e"),
    "request_cpus": ("RequestCpus", "i"),
    "request_memory": ("RequestMemory", "i"),
    "request_disk": ("RequestDisk", "i"),
    "job_lease_duration": ("JobLeaseDuration", "i"),
    "priority": ("JobPrio", "i"),
    "should_transfer_files": ("ShouldTransferFiles", "s"),
    "when_to_transfer_output": ("WhenToTransferOutput", "s"),
    "transfer_executable": ("TransferExecutable", "b"),
    "transfer_input_files": ("TransferInput", "s"),
    "x509userproxy": ("x509userproxy", "s"),
    "accounting_group": ("AcctGroup", "s"),
    "grid_resource": ("GridResource", "s"),
    "ec2_ami_id": ("EC2AmiID", "s"),
    "ec2_instance_type": ("EC2InstanceType", "s"),
    "ec2_spot_price": ("EC2SpotPrice", "s"),
    "ec2_access_key_id": ("EC2AccessKeyId", "s"),
    "ec2_secret_access_key": ("EC2SecretAccessKey", "s"),
    "ec2_user_data": ("EC2UserData", "s"),
    "ec2_user_data_file": ("EC2UserDataFile", "s"),
    "ec2_security_groups": ("EC2SecurityGroups", "s"),
    "ec2_keypair": ("EC2KeyPair", "s"),
    "ec2_keypair_file": ("EC2KeyPairFile", "s"),
    "ec2_tag_names": ("EC2TagNames", "s"),
    "ec2_vpc_subnet": ("EC2VpcSubnet", "s"),
}

# Spellings that win when a caller writes a name in another case (ClassAd names ignore case).
KNOWN_NAMES = (
    *(name for name, _ in SUBMIT_KEYS.values()),
    *(  # noqa: SIM905 - a word list reads better than 45 quoted names
        "MyType TargetType ClusterId ProcId GlobalJobId Owner User QDate JobStatus "
        "LastJobStatus EnteredCurrentStatus JobUniverse JobPrio NumJobStarts JobStartDate "
        "JobCurrentStartDate CompletionDate RemoteHost LastRemoteHost HoldReason "
        "HoldReasonCode RemoveReason ExitCode EC2InstanceName EC2SpotRequestID GridJobStatus "
        "RemoteWallClockTime MATCH_APF_QUEUE APF_QUEUE FACTORY_JOBID PilotFactoryId "
        "PilotFactoryQueue SimDuration SimPandaSite Name Machine State Activity SlotType Cpus "
        "EnteredCurrentActivity MaxJobRetirementTime Draining EC2InstanceID PilotFactoryWorker"
    ).split(),
)
_MACRO = re.compile(r"(?<!\$)\$\((\w+)\)")
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?\Z")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"\Z', re.S)
_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_PIN = re.compile(
    r'\b(EC2InstanceID|PilotFactoryWorker)\s*(?:=\?=|==|\bis\b)\s*"([^"]*)"', re.IGNORECASE
)


class SimExpr(str):
    """A ClassAd expression kept as text (``Requirements``, ``+A = B + 1``), not a string."""


class _Undefined:
    """``undefined`` in a submit value or edit: the attribute is left out / deleted."""


UNDEFINED = _Undefined()


def parse_literal(text: str) -> Any:
    """ClassAd literal -> Python value; anything that is not a literal stays an expression."""
    t = text.strip()
    low = t.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low == "undefined":
        return UNDEFINED
    if _INT.match(t):
        return int(t)
    if _FLOAT.match(t):
        return float(t)
    m = _STRING.match(t)
    if m:
        return re.sub(r"\\(.)", r"\1", m.group(1))
    return SimExpr(t)


def _match_value(actual: Any, expected: Any) -> bool:
    """ClassAd equality as ``render_match`` writes it: ``=?=`` for bools, ``==`` otherwise
    (numbers compare by value, strings case-insensitively, a missing attribute never)."""
    if actual is None:
        return False
    if isinstance(expected, bool):
        return isinstance(actual, bool) and actual == expected
    if isinstance(expected, int | float):
        return (
            isinstance(actual, int | float)
            and not isinstance(actual, SimExpr)
            and (actual == expected)
        )
    if isinstance(expected, str):
        return (
            isinstance(actual, str)
            and not isinstance(actual, SimExpr)
            and (actual.lower() == expected.lower())
        )
    return bool(actual == expected)


@dataclass
class PoolConfig:
    """Static shape of the pool; the mutable failure switches live on ``SimPool``."""

    static_nodes: int = 0
    """Worker nodes that exist from the start (``wn1.pool.test`` ...), so pilots need no VM."""
    static_cpus: int = 4
    static_retirement_time: float = 0.0
    default_job_duration: float = 600.0
    """Run time of a payload job without a ``SimDuration`` attribute."""
    pilot_idle_exit: float = 60.0
    """A pilot that finds no PanDA job exits after this long, like a real pilot."""
    pilot_sites: Mapping[str, str] = field(default_factory=dict)
    """Pilot label (``MATCH_APF_QUEUE``) -> PanDA site; default: the label itself."""
    gridmanager_delay: float = 10.0
    """Submit of an EC2 job -> the gridmanager asks the cloud for an instance."""
    grid_terminate_delay: float = 5.0
    """condor_rm of a running EC2 job -> the gridmanager terminates its instance."""
    held_fraction: float = 0.0
    held_reason: str = "Create_Instance_Failed: simulated EC2 API failure"
    owner: str = "pilotfactory"
    schedd_name: str = "schedd.pool.test"
    collector_drop_fraction: float = 0.0
    fill: str = "depth"
    """Negotiator's slot choice: ``depth`` (fill the busiest startd first) or ``breadth``."""


class _Job:
    __slots__ = (
        "ad",
        "cluster",
        "cpus",
        "id",
        "instance_id",
        "kind",
        "label",
        "panda_job",
        "pin",
        "proc",
        "removing",
        "slot",
        "startd",
        "started_at",
        "token",
    )

    def __init__(self, cluster: int, proc: int, ad: dict[str, Any], kind: str) -> None:
        self.cluster = cluster
        self.proc = proc
        self.id = f"{cluster}.{proc}"
        self.ad = ad
        self.kind = kind  # "payload" | "pilot" | "vm"
        self.label = str(ad.get("MATCH_APF_QUEUE") or "unlabelled")
        self.pin: tuple[str, str] | None = None
        self.startd: _Startd | None = None
        self.slot = 0
        self.token = 0
        self.started_at = 0.0
        self.panda_job: PandaJob | None = None
        self.instance_id: str | None = None
        self.removing = False
        req = ad.get("RequestCpus") if kind == "payload" else None
        self.cpus = req if isinstance(req, int) and not isinstance(req, bool) and req > 1 else 1
        """Cores the job's dynamic slot takes: a payload's ``RequestCpus``, else 1."""

    @property
    def status(self) -> int:
        return int(self.ad["JobStatus"])


class _Startd:
    """One machine: its master (alive while the VM lives) and its startd (joins and leaves)."""

    def __init__(
        self,
        machine: str,
        cpus: int,
        mjrt: float,
        attrs: dict[str, Any],
        instance_id: str | None,
    ) -> None:
        self.machine = machine
        self.cpus = cpus
        self.mjrt = mjrt
        self.attrs = attrs
        self.instance_id = instance_id
        self.pin_keys = [(k.lower(), str(v)) for k, v in attrs.items() if isinstance(v, str) and v]
        self.master = True
        self.master_since = 0.0
        self.alive = False
        self.starting = False
        self.mode = "normal"  # "normal" | "retiring" | "draining"
        self.drain_reason = ""
        self.drain_id = 0
        self.drain_exits = False
        """A drain with ``-exit-on-completion`` (the startd exits once empty); a quick drain
        (``vacate``) leaves it Drained until the VM ends."""
        self.idle_from = 0.0
        """When no slot was claimed any more (``STARTD_NOCLAIM_SHUTDOWN`` counts from it)."""
        self.slots: dict[int, _Job] = {}
        self.used = 0
        """Cores taken by the dynamic slots (a multi-core payload takes several)."""
        self.next_slot = 1
        self.started = 0.0
        self.since = 0.0
        self.exited_at: float | None = None
        self.restart_on_exit = False
        self.last_restart: float | None = None
        self.gen = 0
        self.free_key = 0
        self.notice = False
        """The provider announced an interruption: the VM's START refuses new jobs."""

    @property
    def accepting(self) -> bool:
        return self.alive and self.mode == "normal" and not self.notice and self.used < self.cpus


class SimPool:
    """Implements ``CondorPort``. Failure switches: ``schedd_down``, ``collector_down``,
    ``collector_drop_fraction`` (drop that share of startds from each query), ``held_fraction``
    (EC2 jobs put on hold by the gridmanager)."""

    def __init__(
        self,
        loop: EventLoop,
        config: PoolConfig | None = None,
        rng: random.Random | None = None,
        metrics: SimMetrics | None = None,
        panda: SimPanda | None = None,
        cloud: SimCloud | None = None,
    ) -> None:
        self.loop = loop
        self.config = config or PoolConfig()
        self.rng = rng or seeded_rng(0)
        self._drop_rng = seeded_rng(self.rng.getrandbits(64))
        self.metrics = metrics or SimMetrics()
        self.panda = panda
        self.cloud = cloud
        self.schedd_down = False
        self.collector_down = False
        self.collector_drop_fraction = self.config.collector_drop_fraction
        self.held_fraction = self.config.held_fraction
        self._names: dict[str, str] = {n.lower(): n for n in KNOWN_NAMES}
        self._next_cluster = 1
        self._jobs: dict[str, _Job] = {}
        self._by_status: dict[int, dict[str, _Job]] = {s: {} for s in (1, 2, 3, 4, 5)}
        self._census: Counter[tuple[str, int]] = Counter()
        self._history: list[tuple[float, dict[str, Any]]] = []
        self._idle_heap: list[tuple[int, int, str]] = []
        self._idle: dict[str, _Job] = {}
        self._idle_pinned: dict[tuple[str, str], deque[_Job]] = {}
        self._startds: dict[str, _Startd] = {}
        self.generic_ads: dict[str, dict[str, Any]] = {}
        # accepting startds by free cpus, so a match picks the fullest (or emptiest) in O(1)
        self._free: dict[int, dict[str, _Startd]] = {}
        self._dirty = False
        loop.on_step(self._negotiate)
        for i in range(1, self.config.static_nodes + 1):
            self.add_node(
                f"wn{i}.pool.test", self.config.static_cpus, self.config.static_retirement_time
            )

    # ================================================================== world side API

    def add_node(
        self,
        machine: str,
        cpus: int,
        retirement_time: float = 0.0,
        attrs: Mapping[str, Any] | None = None,
        instance_id: str | None = None,
    ) -> None:
        """A startd (and its master) joins the collector now."""
        key = machine.lower()
        if key in self._startds:
            raise ValueError(f"machine {machine} already in the pool")
        rec = _Startd(machine, cpus, retirement_time, dict(attrs or {}), instance_id)
        rec.master_since = self.loop.now
        self._startds[key] = rec
        self._startd_up(rec, rec.gen)

    def add_payload_jobs(self, label: str, durations: Sequence[float], **attrs: Any) -> list[str]:
        """Users' payload jobs (one cluster), labelled for the Condor WMS plugin.

        Not a port call: it is neither counted nor subject to ``schedd_down``.
        """
        if not durations:
            return []
        cluster = self._new_cluster()
        ids = []
        for proc, duration in enumerate(durations):
            ad = self._base_ad(cluster, proc, VANILLA, "payload.sh", owner="user")
            ad["MATCH_APF_QUEUE"] = label
            ad["SimDuration"] = float(duration)
            for key, value in attrs.items():
                ad[self._canon(key)] = value
            job = self._add_job(cluster, proc, ad)
            ids.append(job.id)
        return ids

    def job(self, job_id: str) -> dict[str, Any] | None:
        """A copy of one job ad, from the queue or the history (for tests)."""
        job = self._jobs.get(job_id)
        if job is not None:
            return dict(job.ad)
        for _, ad in reversed(self._history):
            if f"{ad['ClusterId']}.{ad['ProcId']}" == job_id:
                return dict(ad)
        return None

    def machines(self) -> list[str]:
        """Machines whose startd is in the collector now."""
        return [r.machine for r in self._startds.values() if r.alive]

    def set_machine_attr(self, machine: str, name: str, value: Any) -> None:
        """Advertise ``name = value`` in a machine's ads from now on (a VM's own config, e.g.
        ``PilotFactoryKeep``, which the factory must respect)."""
        self._startds[machine.lower()].attrs[self._canon(name)] = value

    def vm_view(self) -> dict[str, tuple[bool, int, float]]:
        """Instance id -> (its startd is in the collector, jobs running, idle or busy since):
        what a policy outside the factory (the elastiq-style baseline) reads."""
        return {
            r.instance_id: (r.alive, len(r.slots), r.since)
            for r in self._startds.values()
            if r.instance_id is not None
        }

    def census(self) -> dict[str, int]:
        """Counts for snapshots: jobs per kind and status, startds and cpus."""
        c = self._census
        alive = [r for r in self._startds.values() if r.alive]
        return {
            "jobs_idle": c[("payload", IDLE)],
            "jobs_running": c[("payload", RUNNING)],
            "jobs_held": c[("payload", HELD)],
            "pilots_idle": c[("pilot", IDLE)],
            "pilots_running": c[("pilot", RUNNING)],
            "vm_jobs_idle": c[("vm", IDLE)],
            "vm_jobs_running": c[("vm", RUNNING)],
            "vm_jobs_held": c[("vm", HELD)],
            "startds": len(alive),
            "cpus_total": sum(r.cpus for r in alive),
            "cpus_busy": sum(r.used for r in alive),
        }

    # ================================================================== CondorPort: schedd

    def query_jobs(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        self._enter("query_jobs", "schedd")
        test = self._matcher(match, constraint)
        proj = self._projection(projection)
        return [_project(j.ad, proj) for j in self._jobs.values() if test(j.ad)]

    def query_history(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        since: float,
        limit: int,
    ) -> list[dict[str, Any]]:
        self._enter("query_history", "schedd")
        test = self._matcher(match, None)
        proj = self._projection(projection)
        out: list[dict[str, Any]] = []
        for left, ad in reversed(self._history):
            if left <= since or len(out) >= limit:
                break
            if test(ad):
                out.append(_project(ad, proj))
        return out

    def submit(self, description: Mapping[str, str], count: int) -> SubmitResult:
        self._enter("submit", "schedd")
        if count < 1:
            raise CondorRejected(f"cannot submit {count} jobs", daemon="schedd")
        std: dict[str, str] = {}
        custom: dict[str, str] = {}
        for key, raw in description.items():
            value = str(raw)
            if "\n" in value:
                raise CondorRejected(f"submit value of {key!r} spans lines", daemon="schedd")
            if key.startswith("+"):
                custom[key[1:]] = value
            elif key.lower().startswith("my."):
                custom[key[3:]] = value
            else:
                std[key.lower()] = value
        if "queue" in std:
            raise CondorRejected("'queue' is not a submit key (pass the count)", daemon="schedd")
        universe_name = std.get("universe", "vanilla").strip().lower()
        universe = UNIVERSES.get(universe_name)
        if universe is None:
            raise CondorRejected(
                f"universe {universe_name!r} is not simulated (vanilla or grid)", daemon="schedd"
            )
        if not std.get("executable"):
            raise CondorRejected("No 'executable' parameter was provided", daemon="schedd")
        if universe == GRID:
            resource = std.get("grid_resource", "").strip()
            if not resource.lower().startswith("ec2 "):
                raise CondorRejected(
                    f"grid_resource {resource!r}: only 'ec2 <url>' is simulated", daemon="schedd"
                )
            for key in ("ec2_ami_id", "ec2_access_key_id", "ec2_secret_access_key"):
                if not std.get(key):
                    raise CondorRejected(f"EC2 jobs require an '{key}' parameter", daemon="schedd")
        cluster = self._new_cluster()
        for proc in range(count):
            macros = dict(std)
            for name, val in (("cluster", cluster), ("clusterid", cluster)):
                macros[name] = str(val)
            for name in ("process", "procid"):
                macros[name] = str(proc)
            ad = self._base_ad(cluster, proc, universe, "", owner=self.config.owner)
            self._apply_submit(ad, std, custom, macros)
            self._add_job(cluster, proc, ad)
        return SubmitResult(cluster, count)

    def remove(self, job_ids: Sequence[str], reason: str) -> int:
        self._enter("remove", "schedd")
        removed = 0
        for jid in job_ids:
            job = self._jobs.get(jid)
            if job is None or job.removing:
                continue
            removed += 1
            job.ad["RemoveReason"] = reason
            self._remove_job(job)
        return removed

    def edit(self, job_ids: Sequence[str], attr: str, value: str) -> None:
        self._enter("edit", "schedd")
        if not _ATTR.match(attr):
            raise CondorRejected(f"bad attribute name {attr!r}", daemon="schedd")
        if attr.lower() in PROTECTED:
            raise CondorRejected(f"attribute {attr} is protected", daemon="schedd")
        missing = [jid for jid in job_ids if jid not in self._jobs]
        if missing:
            raise CondorRejected(f"no such job(s): {', '.join(missing)}", daemon="schedd")
        parsed = parse_literal(str(value))
        name = self._canon(attr)
        for jid in job_ids:
            job = self._jobs[jid]
            if parsed is UNDEFINED:
                job.ad.pop(name, None)
            else:
                job.ad[name] = parsed
            if name == "Requirements" and job.status == IDLE and job.kind != "vm":
                job.pin = _pin_of(job.ad)
                self._enqueue_idle(job)

    # ================================================================== CondorPort: collector

    def query_startds(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        self._enter("query_startds", "collector")
        test = self._matcher(match, constraint)
        proj = self._projection(projection)
        out = []
        for rec in self._startds.values():
            if not rec.alive:
                continue
            if self.collector_drop_fraction and (
                self._drop_rng.random() < self.collector_drop_fraction
            ):
                continue
            for ad in self._slot_ads(rec):
                if test(ad):
                    out.append(_project(ad, proj))
        return out

    def ping_schedd(self) -> None:
        self._enter("ping_schedd", "schedd")

    def ping_collector(self) -> None:
        self._enter("ping_collector", "collector")

    def create_token(
        self, identity: str | None, authz: Sequence[str], lifetime: int, key_file: str | None = None
    ) -> str:
        """An unsigned token expiring on the simulated clock (the simulated pool takes any)."""
        from pilotfactory.plugins.batchsubmit.vmlife import unsigned_token

        self._enter("create_token", "collector")
        now = int(self.loop.now)
        claims = {"sub": identity or "condor@sim", "iat": now, "exp": now + int(lifetime)}
        return unsigned_token({**claims, "scope": " ".join(f"condor:/{a}" for a in authz)})

    def query_masters(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        self._enter("query_masters", "collector")
        test = self._matcher(match, constraint)
        proj = self._projection(projection)
        out = []
        for rec in self._startds.values():
            if rec.master:
                ad = self._master_ad(rec)
                if test(ad):
                    out.append(_project(ad, proj))
        return out

    # ================================================================== CondorPort: startd commands

    def retire_peaceful(self, machine: str) -> None:
        """``condor_off -peaceful``: no new jobs, exit after the last one; not cancellable."""
        rec = self._command("retire_peaceful", machine)
        rec.restart_on_exit = False
        if rec.starting:  # the master was about to start it: an off wins
            rec.starting = False
            rec.gen += 1
        if not rec.alive or rec.mode == "retiring":
            return
        rec.mode = "retiring"
        rec.since = self.loop.now
        self._refresh_free(rec)
        if not rec.slots:
            self._startd_exit(rec)

    def unretire(self, machine: str) -> None:
        """``condor_on``: while retiring, the master restarts the startd 1 s after it exits;
        after it exited, the master starts it now. A running, non-retiring startd: no-op."""
        rec = self._command("unretire", machine)
        if rec.alive:
            if rec.mode == "retiring":
                rec.restart_on_exit = True
        elif not rec.starting:
            self._schedule_restart(rec)

    def drain(self, machine: str, reason: str) -> None:
        """``condor_drain -graceful -exit-on-completion``: each job may run until its start
        plus MaxJobRetirementTime, then it is evicted; with 0 that is at once."""
        rec = self._command("drain", machine)
        if not rec.alive:
            raise CondorRejected(f"startd on {rec.machine} is not running", daemon="startd")
        if rec.mode != "normal":
            return
        rec.mode = "draining"
        rec.drain_reason = reason
        rec.drain_id += 1
        rec.drain_exits = True
        rec.since = self.loop.now
        self._refresh_free(rec)
        now = self.loop.now
        for job in list(rec.slots.values()):
            deadline = job.started_at + rec.mjrt
            if deadline <= now:
                self._evict(job, "drain (MaxJobRetirementTime exceeded)")
            else:
                self.loop.at(deadline, self._drain_deadline(rec, job, job.token, rec.drain_id))
        if rec.alive and not rec.slots:
            self._startd_exit(rec)

    def cancel_drain(self, machine: str) -> None:
        """``condor_drain -cancel``: running jobs untouched, slots take jobs at once."""
        rec = self._command("cancel_drain", machine)
        if not rec.alive:
            raise CondorRejected(f"startd on {rec.machine} is not running", daemon="startd")
        if rec.mode != "draining":
            return
        rec.mode = "normal"
        rec.drain_reason = ""
        rec.drain_id += 1
        rec.since = self.loop.now
        self._refresh_free(rec)
        self._dirty = True

    def vacate(self, machine: str, reason: str) -> None:
        """``condor_drain -quick``: every job is vacated now (back to idle), no new job is
        taken; the startd stays (Drained) until the VM ends."""
        rec = self._command("vacate", machine)
        if not rec.alive:
            raise CondorRejected(f"startd on {rec.machine} is not running", daemon="startd")
        rec.mode = "draining"
        rec.drain_reason = reason
        rec.drain_id += 1
        rec.drain_exits = False
        rec.since = self.loop.now
        self._refresh_free(rec)
        interrupting = self.metrics.interrupting
        self.metrics.interrupting = rec.notice  # the provider's doing, not the factory's
        try:
            for job in list(rec.slots.values()):
                self._evict(job, f"vacated: {reason}")
        finally:
            self.metrics.interrupting = interrupting

    def advertise(self, ads: Sequence[Mapping[str, Any]]) -> None:
        """Generic ads (the factory's lease ads), kept by ``Name`` (for tests)."""
        self._enter("advertise", "collector")
        for ad in ads:
            self.generic_ads[str(ad.get("Name"))] = dict(ad)

    # ================================================================== cloud callbacks

    def vm_notice(self, inst: SimInstance, action_time: float) -> None:
        """The provider's interruption notice reached the VM: its startd cron advertises it
        and its START refuses new jobs (the VM side of the contract)."""
        rec = self._startds.get(inst.machine.lower())
        if rec is None:
            return
        rec.notice = True
        rec.attrs[INTERRUPTION_ATTR] = int(action_time)
        rec.attrs[INTERRUPTION_ACTION_ATTR] = "terminate"
        self._refresh_free(rec)

    def vm_joined(self, inst: SimInstance, cpus: int, retirement_time: float) -> None:
        """The VM's startd and master join the collector (the cloud calls this)."""
        attrs: dict[str, Any] = {"EC2InstanceID": inst.instance_id}
        worker = inst.worker
        if worker:
            attrs["PilotFactoryWorker"] = worker
        self.add_node(inst.machine, cpus, retirement_time, attrs, inst.instance_id)

    def vm_gone(self, inst: SimInstance) -> None:
        """The instance is terminated: its ads vanish at once, its jobs go back to Idle, and
        the EC2 job that owned it leaves the queue."""
        rec = self._startds.pop(inst.machine.lower(), None)
        if rec is not None:
            rec.master = False
            rec.starting = False
            rec.gen += 1
            was_alive = rec.alive
            rec.alive = False
            self._refresh_free(rec)
            for running in list(rec.slots.values()):
                self._evict(running, "startd vanished (instance terminated)")
            if was_alive:
                rec.exited_at = self.loop.now
        if inst.owner_job is None:
            return
        job = self._jobs.get(inst.owner_job)
        if job is None:
            return
        if job.removing:
            self._leave_queue(job)
        elif job.status in (RUNNING, IDLE):
            job.ad["CompletionDate"] = int(self.loop.now)
            self._set_status(job, COMPLETED)

    def vm_created(self, job_id: str, instance_id: str) -> None:
        """The gridmanager learnt the instance id: EC2InstanceName is set and the job runs."""
        job = self._jobs.get(job_id)
        if job is None or job.removing or job.status != IDLE:
            return
        job.instance_id = instance_id
        job.ad["EC2InstanceName"] = instance_id
        job.ad["GridJobStatus"] = "running"
        self._mark_started(job)
        self._set_status(job, RUNNING)

    def vm_spot_opened(self, job_id: str, request_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.ad["EC2SpotRequestID"] = request_id
            job.ad["GridJobStatus"] = "pending"

    # ================================================================== internals: jobs

    def _new_cluster(self) -> int:
        cluster = self._next_cluster
        self._next_cluster += 1
        return cluster

    def _base_ad(
        self, cluster: int, proc: int, universe: int, cmd: str, owner: str
    ) -> dict[str, Any]:
        now = int(self.loop.now)
        return {
            "MyType": "Job",
            "TargetType": "Machine",
            "ClusterId": cluster,
            "ProcId": proc,
            "GlobalJobId": f"{self.config.schedd_name}#{cluster}.{proc}#{now}",
            "Owner": owner,
            "User": f"{owner}@pool.test",
            "QDate": now,
            "JobStatus": IDLE,
            "LastJobStatus": 0,
            "EnteredCurrentStatus": now,
            "JobUniverse": universe,
            "Cmd": cmd,
            "Iwd": "/tmp",
            "JobPrio": 0,
            "NumJobStarts": 0,
            "RequestCpus": 1,
        }

    def _apply_submit(
        self,
        ad: dict[str, Any],
        std: Mapping[str, str],
        custom: Mapping[str, str],
        macros: Mapping[str, str],
    ) -> None:
        tags: list[str] = []
        for key, raw in std.items():
            value = _expand(raw, macros)
            if key in ("universe", "notification", "getenv", "stream_output", "stream_error"):
                continue
            if key.startswith("ec2_tag_") and key != "ec2_tag_names":
                tags.append(key)
                continue
            spec = SUBMIT_KEYS.get(key)
            if spec is None:
                continue  # a plain macro, as condor_submit treats unknown keys
            name, kind = spec
            if kind == "e":
                ad[name] = SimExpr(value)
            elif kind == "i":
                ad[name] = int(value) if _INT.match(value.strip()) else SimExpr(value)
            elif kind == "b":
                ad[name] = value.strip().lower() in ("true", "yes", "1")
            else:
                if name in ("Arguments", "Environment"):
                    value = value.strip()
                    if len(value) >= 2 and value[0] == value[-1] == '"':
                        value = value[1:-1]
                ad[name] = value
        if tags:
            names = [n.strip() for n in str(ad.get("EC2TagNames", "")).split(",") if n.strip()]
            by_lower = {n.lower(): n for n in names}
            for key in tags:
                raw_name = key[len("ec2_tag_") :]
                tag = by_lower.get(raw_name, raw_name)
                ad[self._canon(f"EC2Tag{tag}")] = _expand(std[key], macros)
        for key, raw in custom.items():
            parsed = parse_literal(_expand(raw, macros))
            if parsed is not UNDEFINED:
                ad[self._canon(key)] = parsed

    def _add_job(self, cluster: int, proc: int, ad: dict[str, Any]) -> _Job:
        for key in list(ad):
            canon = self._canon(key)
            if canon != key:
                ad[canon] = ad.pop(key)
        universe = ad["JobUniverse"]
        if universe == GRID:
            kind = "vm"
        elif "PilotFactoryId" in ad:
            kind = "pilot"
        else:
            kind = "payload"
        job = _Job(cluster, proc, ad, kind)
        self._jobs[job.id] = job
        self._by_status[IDLE][job.id] = job
        self._census[(kind, IDLE)] += 1
        if kind == "vm":
            self.loop.after(self.config.gridmanager_delay, lambda: self._grid_submit(job))
        else:
            job.pin = _pin_of(ad)
            self._enqueue_idle(job)
        return job

    def _set_status(self, job: _Job, status: int) -> None:
        old = job.status
        if old == status:
            return
        self._by_status[old].pop(job.id, None)
        self._census[(job.kind, old)] -= 1
        job.ad["LastJobStatus"] = old
        job.ad["JobStatus"] = status
        job.ad["EnteredCurrentStatus"] = int(self.loop.now)
        if status in (REMOVED, COMPLETED) and not job.removing:
            self._leave_queue(job)
            return
        self._by_status[status][job.id] = job
        self._census[(job.kind, status)] += 1

    def _leave_queue(self, job: _Job) -> None:
        """Into the history: completed jobs, and removed ones once nothing holds them."""
        if self._jobs.pop(job.id, None) is None:
            return
        status = job.status
        if self._by_status[status].pop(job.id, None) is not None:
            self._census[(job.kind, status)] -= 1
        self._idle.pop(job.id, None)
        self._history.append((self.loop.now, job.ad))

    def _mark_started(self, job: _Job) -> None:
        now = self.loop.now
        job.started_at = now
        job.ad.setdefault("JobStartDate", int(now))
        job.ad["JobCurrentStartDate"] = int(now)
        job.ad["NumJobStarts"] = int(job.ad.get("NumJobStarts", 0)) + 1

    def _remove_job(self, job: _Job) -> None:
        status = job.status
        if job.kind == "vm":
            self._remove_vm_job(job)
            return
        rec = self._stop_running(job, killed=True) if status == RUNNING else None
        self._set_status(job, REMOVED)
        if rec is not None:
            self._slot_freed(rec)

    def _remove_vm_job(self, job: _Job) -> None:
        """Removed EC2 jobs stay in the queue (JobStatus 3) until the instance is gone."""
        cloud = self.cloud
        live = cloud is not None and job.instance_id is not None and cloud.alive(job.instance_id)
        request = job.ad.get("EC2SpotRequestID")
        if cloud is not None and not live and isinstance(request, str):
            cloud.cancel_request(request)
        if not live:
            self._set_status(job, REMOVED)
            return
        job.removing = True
        self._set_status(job, REMOVED)
        instance_id = job.instance_id
        assert cloud is not None and instance_id is not None

        def terminate() -> None:
            if cloud.alive(instance_id):
                cloud.terminate_now(instance_id)
            else:
                self._leave_queue(job)

        self.loop.after(self.config.grid_terminate_delay, terminate)

    def _grid_submit(self, job: _Job) -> None:
        """The gridmanager's first contact with the cloud: hold, or launch one instance."""
        if job.id not in self._jobs or job.removing or job.status != IDLE:
            return
        ad = job.ad
        if self.held_fraction and self.rng.random() < self.held_fraction:
            self._hold(job, self.config.held_reason)
            return
        if self.cloud is None:
            self._hold(job, "Create_Instance_Failed: no cloud in this simulated world")
            return
        price = ad.get("EC2SpotPrice")
        groups = str(ad.get("EC2SecurityGroups", ""))
        spec = LaunchSpec(
            image=str(ad.get("EC2AmiID")),
            flavor=str(ad.get("EC2InstanceType") or "m1.small"),
            spot_price=float(price) if price not in (None, "") else None,
            user_data=ad.get("EC2UserData"),
            key_name=ad.get("EC2KeyPair"),
            security_groups=tuple(g.strip() for g in groups.split(",") if g.strip()),
        )
        tags = {
            key[len("EC2Tag") :]: str(value)
            for key, value in ad.items()
            if key.startswith("EC2Tag") and key != "EC2TagNames"
        }
        queue = str(ad.get("PilotFactoryQueue") or ad.get("APF_QUEUE") or job.label)
        try:
            self.cloud.launch_for_job(spec, tags, job.id, queue)
        except CloudError as exc:
            self._hold(job, f"Create_Instance_Failed: {exc}")

    def _hold(self, job: _Job, reason: str) -> None:
        job.ad["HoldReason"] = reason
        job.ad["HoldReasonCode"] = 0
        self._set_status(job, HELD)

    # ================================================================== internals: negotiation

    def _enqueue_idle(self, job: _Job) -> None:
        if job.pin is not None:
            self._idle_pinned.setdefault(job.pin, deque()).append(job)
        else:
            self._idle[job.id] = job
            heapq.heappush(self._idle_heap, (job.cluster, job.proc, job.id))
        self._dirty = True

    def _negotiate(self) -> None:
        """One negotiation cycle: pinned jobs to their machine, then FIFO to any free slot."""
        if not self._dirty:
            return
        self._dirty = False
        if self._idle_pinned:
            for rec in [r for bucket in self._free.values() for r in bucket.values()]:
                for key in rec.pin_keys:
                    waiting = self._idle_pinned.get(key)
                    while waiting and rec.accepting:
                        job = waiting.popleft()
                        if job.cpus > rec.cpus - rec.used:  # does not fit: wait for more
                            waiting.appendleft(job)
                            break
                        if job.id in self._jobs and job.status == IDLE and job.pin == key:
                            self._start_job(job, rec)
                    if waiting is not None and not waiting:
                        del self._idle_pinned[key]
        skipped: list[tuple[int, int, str]] = []
        while self._free and self._idle_heap:
            entry = heapq.heappop(self._idle_heap)
            queued = self._idle.get(entry[2])
            if queued is None or queued.status != IDLE or queued.pin is not None:
                self._idle.pop(entry[2], None)
                continue
            dest = self._pick(queued.cpus)
            if dest is None:  # no startd has that many free cores; later jobs may fit
                skipped.append(entry)
                continue
            del self._idle[entry[2]]
            self._start_job(queued, dest)
        for entry in skipped:
            heapq.heappush(self._idle_heap, entry)

    def _refresh_free(self, rec: _Startd) -> None:
        free = rec.cpus - rec.used if rec.alive and rec.mode == "normal" and not rec.notice else 0
        if free == rec.free_key:
            return
        if rec.free_key:
            bucket = self._free[rec.free_key]
            del bucket[rec.machine]
            if not bucket:
                del self._free[rec.free_key]
        if free > 0:
            self._free.setdefault(free, {})[rec.machine] = rec
        rec.free_key = free

    def _pick(self, cpus: int = 1) -> _Startd | None:
        """Depth-first fills the busiest startd (NEGOTIATOR_DEPTH_FIRST, what elastic pools
        set so idle VMs stay idle and can be retired); breadth-first spreads the jobs.
        None when no startd has ``cpus`` free cores."""
        if cpus == 1:
            key = min(self._free) if self.config.fill == "depth" else max(self._free)
        else:
            fits = [k for k in self._free if k >= cpus]
            if not fits:
                return None
            key = min(fits) if self.config.fill == "depth" else max(fits)
        return next(iter(self._free[key].values()))

    def _start_job(self, job: _Job, rec: _Startd) -> None:
        now = self.loop.now
        slot = rec.next_slot
        rec.next_slot += 1
        if not rec.slots:
            rec.since = now
            if rec.instance_id is not None:
                self.metrics.vm_busy(rec.instance_id, now, True)
        rec.slots[slot] = job
        rec.used += job.cpus
        job.startd = rec
        job.slot = slot
        job.token += 1
        first = int(job.ad.get("NumJobStarts", 0)) == 0
        self._mark_started(job)
        job.ad["RemoteHost"] = f"slot1_{slot}@{rec.machine}"
        job.ad["LastMatchTime"] = int(now)
        self._set_status(job, RUNNING)
        self._refresh_free(rec)
        if job.kind == "pilot":
            duration = self._pilot_starts(job)
        else:
            sim = job.ad.get("SimDuration")
            duration = (
                float(sim) if isinstance(sim, int | float) else self.config.default_job_duration
            )
            if first:
                self.metrics.started(job.label, now - float(job.ad["QDate"]), now)
        token = job.token
        self.loop.at(now + duration, lambda: self._job_done(job, token))

    def _pilot_starts(self, job: _Job) -> float:
        """A pilot pulls one activated job of its PanDA site, else exits after a short wait."""
        self.metrics.pilots_started += 1
        site = str(job.ad.get("SimPandaSite") or self.config.pilot_sites.get(job.label, job.label))
        got = self.panda.pull(site) if self.panda is not None else None
        if got is None:
            self.metrics.pilots_without_payload += 1
            return self.config.pilot_idle_exit
        job.panda_job = got
        self.metrics.started(got.site, self.loop.now - got.created, self.loop.now)
        return got.duration

    def _job_done(self, job: _Job, token: int) -> None:
        if job.token != token or job.status != RUNNING or job.startd is None:
            return
        rec = self._stop_running(job, killed=False)
        job.ad["CompletionDate"] = int(self.loop.now)
        job.ad["ExitCode"] = 0
        if job.kind == "payload":
            self.metrics.completed(job.label, self.loop.now)
        self._set_status(job, COMPLETED)
        if rec is not None:
            self._slot_freed(rec)

    def _stop_running(self, job: _Job, killed: bool) -> _Startd | None:
        """Release the job's dynamic slot and settle its payload; the caller sets the status."""
        rec = job.startd
        job.token += 1
        now = self.loop.now
        job.ad["RemoteWallClockTime"] = float(job.ad.get("RemoteWallClockTime", 0.0)) + (
            now - job.started_at
        )
        if rec is not None:
            if rec.slots.pop(job.slot, None) is not None:
                rec.used -= job.cpus
                if not rec.slots and rec.instance_id is not None:
                    self.metrics.vm_busy(rec.instance_id, now, False)
            job.startd = None
            job.ad["LastRemoteHost"] = job.ad.pop("RemoteHost", "")
        pj = job.panda_job
        if pj is not None:
            job.panda_job = None
            if self.panda is not None:
                self.panda.finish(pj, ok=not killed)
            if killed:
                self.metrics.killed(pj.site)
            else:
                self.metrics.completed(pj.site, now)
        elif killed and job.kind == "payload":
            self.metrics.killed(job.label)
        return rec

    def _evict(self, job: _Job, reason: str) -> None:
        """The job loses its slot and goes back to Idle (its work is lost: counted killed)."""
        rec = self._stop_running(job, killed=True)
        job.ad["LastVacateTime"] = int(self.loop.now)
        job.ad["VacateReason"] = reason
        self._set_status(job, IDLE)
        self._enqueue_idle(job)
        if rec is not None:
            self._slot_freed(rec)

    def _slot_freed(self, rec: _Startd) -> None:
        if not rec.alive:
            return
        if not rec.slots:
            rec.since = self.loop.now
            self._unclaimed(rec)
        if rec.mode == "normal":
            self._refresh_free(rec)
            self._dirty = True
        elif not rec.slots and (rec.mode == "retiring" or rec.drain_exits):
            self._startd_exit(rec)

    def _drain_deadline(
        self, rec: _Startd, job: _Job, token: int, drain_id: int
    ) -> Callable[[], None]:
        def fire() -> None:
            if (
                rec.alive
                and rec.mode == "draining"
                and rec.drain_id == drain_id
                and job.token == token
                and job.startd is rec
            ):
                self._evict(job, "drain (MaxJobRetirementTime exceeded)")

        return fire

    # ================================================================== internals: startds

    def _startd_up(self, rec: _Startd, gen: int) -> None:
        if gen != rec.gen or not rec.master or rec.alive:
            return
        now = self.loop.now
        rec.gen += 1
        rec.alive = True
        rec.starting = False
        rec.mode = "normal"
        rec.drain_reason = ""
        rec.restart_on_exit = False
        rec.started = now
        rec.since = now
        rec.slots.clear()
        rec.used = 0
        rec.next_slot = 1
        self._refresh_free(rec)
        self._dirty = True
        self._unclaimed(rec)

    def _startd_exit(self, rec: _Startd, sigterm: bool = False) -> None:
        """The startd leaves the collector; the master stays while the VM lives, unless the
        VM follows the worker contract (``CloudConfig.poweroff_delay``)."""
        rec.alive = False
        rec.exited_at = self.loop.now
        self._refresh_free(rec)
        if rec.restart_on_exit and rec.mode == "retiring":
            self._schedule_restart(rec)
        rec.restart_on_exit = False
        self._master_shutdown(rec, sigterm)

    def _master_shutdown(self, rec: _Startd, sigterm: bool) -> None:
        """The worker contract: a master whose startd is gone (and not being restarted by a
        ``condor_on``) exits, and its shutdown script powers the VM off ``poweroff_delay``
        later. ``MASTER.DAEMON_SHUTDOWN`` holds only after the master's first minute; a
        no-claim shutdown (``sigterm``: the startd signals its master) is not bound by that."""
        cloud = self.cloud
        delay = cloud.config.poweroff_delay if cloud is not None else None
        if delay is None or rec.instance_id is None or cloud is None:
            return
        gen = rec.gen
        instance_id = rec.instance_id
        at = self.loop.now + delay
        if not sigterm:
            at = max(at, rec.master_since + MASTER_SHUTDOWN_AFTER)

        def off() -> None:
            if (rec.master or sigterm) and not rec.alive and not rec.starting and rec.gen == gen:
                cloud.power_off(instance_id)

        self.loop.at(at, off)

    def _unclaimed(self, rec: _Startd) -> None:
        """No slot claimed from now: ``STARTD_NOCLAIM_SHUTDOWN`` later, if still unclaimed, the
        startd shuts HTCondor down, master included (VMs only)."""
        rec.idle_from = self.loop.now
        cloud = self.cloud
        limit = cloud.config.noclaim_shutdown if cloud is not None else None
        if limit is None or rec.instance_id is None:
            return
        since = rec.idle_from

        def check() -> None:
            if rec.alive and not rec.slots and rec.idle_from == since:
                rec.master = False
                self._startd_exit(rec, sigterm=True)

        self.loop.at(since + limit, check)

    def _schedule_restart(self, rec: _Startd) -> None:
        """The master starts the startd 1 s after it exited (10 s if it restarted it within
        the last 300 s); the new startd is in the collector 2-3 s later."""
        now = self.loop.now
        recent = rec.last_restart is not None and now - rec.last_restart < 300
        delay = 10.0 if recent else 1.0
        start = max(now, (rec.exited_at if rec.exited_at is not None else now) + delay)
        rec.last_restart = start
        rec.starting = True
        rec.gen += 1
        gen = rec.gen
        self.loop.at(start + self.rng.uniform(2.0, 3.0), lambda: self._startd_up(rec, gen))

    def _command(self, kind: str, machine: str) -> _Startd:
        self._enter(kind, "collector")
        name = machine.split("@", 1)[-1].lower()
        rec = self._startds.get(name)
        if rec is None or not rec.master:
            raise CondorRejected(f"Can't find address for {machine}", daemon="master")
        return rec

    # ================================================================== internals: ads

    def _slot_ads(self, rec: _Startd) -> list[dict[str, Any]]:
        now = self.loop.now
        common: dict[str, Any] = {
            "MyType": "Machine",
            "Machine": rec.machine,
            "MyAddress": f"<127.0.1.1:9618?alias={rec.machine}>",
            "DaemonStartTime": int(rec.started),
            "LastHeardFrom": int(now),
            "MaxJobRetirementTime": int(rec.mjrt),
            "Arch": "X86_64",
            "OpSys": "LINUX",
            "TotalCpus": rec.cpus,
        }
        common.update(rec.attrs)
        if rec.mode == "draining":
            common["Draining"] = True
            common["DrainReason"] = rec.drain_reason
            common["DrainingRequestId"] = str(rec.drain_id)
        retiring = rec.mode == "retiring"
        if retiring:
            common["Requirements"] = False
            common["ExpectedMachineGracefulDrainingCompletion"] = NEVER
        else:
            common["Start"] = rec.mode == "normal" and not rec.notice
        busy = rec.used
        pslot = dict(common)
        pslot.update(
            Name=f"slot1@{rec.machine}",
            SlotType="Partitionable",
            PartitionableSlot=True,
            State="Drained" if rec.mode == "draining" else "Unclaimed",
            Activity="Retiring" if rec.mode == "draining" and busy else "Idle",
            Cpus=rec.cpus - busy,
            TotalSlotCpus=rec.cpus,
            Memory=2048 * (rec.cpus - busy),
            EnteredCurrentActivity=int(rec.since),
            EnteredCurrentState=int(rec.since),
            ChildCpus=busy,
        )
        ads = [pslot]
        for k, job in rec.slots.items():
            dslot = dict(common)
            start = job.started_at
            if retiring:
                remaining: int = NEVER
            elif rec.mode == "draining":
                remaining = max(0, int(start + rec.mjrt - now))
            else:
                remaining = int(rec.mjrt)
            dslot.update(
                Name=f"slot1_{k}@{rec.machine}",
                SlotType="Dynamic",
                DynamicSlot=True,
                State="Claimed",
                Activity="Retiring" if rec.mode != "normal" else "Busy",
                Cpus=job.cpus,
                Memory=2048 * job.cpus,
                JobId=job.id,
                GlobalJobId=job.ad.get("GlobalJobId", job.id),
                RemoteOwner=job.ad.get("User", ""),
                JobStart=int(start),
                EnteredCurrentActivity=int(rec.since if rec.mode != "normal" else start),
                EnteredCurrentState=int(start),
                RetirementTimeRemaining=remaining,
            )
            ads.append(dslot)
        return ads

    def _master_ad(self, rec: _Startd) -> dict[str, Any]:
        ad: dict[str, Any] = {
            "MyType": "DaemonMaster",
            "Name": rec.machine,
            "Machine": rec.machine,
            "MyAddress": f"<127.0.1.1:9618?alias={rec.machine}>",
            "DaemonStartTime": int(rec.master_since),
            "LastHeardFrom": int(self.loop.now),
        }
        ad.update(rec.attrs)
        return ad

    # ================================================================== internals: queries

    def _enter(self, kind: str, daemon: str) -> None:
        """Every port call: catch the world up with the clock, count it, honour outages."""
        self.loop.advance()
        self.metrics.count(kind)
        down = self.schedd_down if daemon == "schedd" else self.collector_down
        if down:
            self.metrics.failed(kind)
            raise CondorUnreachable(
                f"Failed to connect to {daemon} (simulated outage)", daemon=daemon
            )

    def _canon(self, name: str) -> str:
        """One spelling per attribute name: ClassAd names are case-insensitive."""
        return self._names.setdefault(name.lower(), name)

    def _projection(self, projection: Sequence[str]) -> list[str] | None:
        if not projection:
            return None
        return [self._names.get(p.lower(), p) for p in projection]

    def _matcher(
        self, match: Mapping[str, Any], constraint: str | None
    ) -> Callable[[Mapping[str, Any]], bool]:
        pairs = [(self._names.get(k.lower(), k), v) for k, v in match.items()]
        tree: Any = None
        if constraint:
            import classad2

            try:
                tree = classad2.ExprTree(constraint)
            except Exception as exc:
                raise CondorRejected(f"bad constraint {constraint!r}: {exc}") from exc

        def test(ad: Mapping[str, Any]) -> bool:
            for key, expected in pairs:
                if not _match_value(ad.get(key), expected):
                    return False
            return tree is None or _eval_constraint(tree, ad)

        return test


def _project(ad: Mapping[str, Any], proj: list[str] | None) -> dict[str, Any]:
    if proj is None:
        return dict(ad)
    return {k: ad[k] for k in proj if k in ad}


def _eval_constraint(tree: Any, ad: Mapping[str, Any]) -> bool:
    """The slow path: real ClassAd evaluation of a raw constraint."""
    import classad2

    values = {k: classad2.ExprTree(str(v)) if isinstance(v, SimExpr) else v for k, v in ad.items()}
    try:
        return tree.eval(classad2.ClassAd(values)) is True
    except Exception:
        return False


def _pin_of(ad: Mapping[str, Any]) -> tuple[str, str] | None:
    req = ad.get("Requirements")
    if not isinstance(req, str):
        return None
    m = _PIN.search(req)
    return (m.group(1).lower(), m.group(2)) if m else None


def _expand(value: str, macros: Mapping[str, str], depth: int = 0) -> str:
    """condor_submit macro expansion: ``$(Cluster)``, ``$(Process)`` and the description's own
    keys; an undefined macro expands to nothing, ``$$(...)`` is left for match time."""
    if "$(" not in value or depth > 8:
        return value

    def sub(m: re.Match[str]) -> str:
        return _expand(macros.get(m.group(1).lower(), ""), macros, depth + 1)

    return _MACRO.sub(sub, value)
