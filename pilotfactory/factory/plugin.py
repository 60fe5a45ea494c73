"""Plugin base classes: the four kinds a queue is wired from.

A plugin class declares ``NAME`` (the name queues.conf uses), ``ALIASES`` (legacy APF names) and
``PARAMS`` (typed parameters read from ``<kind>.<name lower>.<param>``). The config loader
hands each instance its parsed parameters; plugins never read the INI file themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pilotfactory.factory.clock import Clock
from pilotfactory.factory.info import (
    BatchQueueInfo,
    FactoryTotals,
    RetireMode,
    WMSQueueInfo,
    Worker,
    WorkerKind,
)
from pilotfactory.factory.params import DURATION_MAX, Param
from pilotfactory.factory.ports import CondorTarget, World
from pilotfactory.factory.probe import Probe
from pilotfactory.factory.reads import SharedReads

log = logging.getLogger(__name__)


class Plugin:
    KIND: ClassVar[str] = ""
    NAME: ClassVar[str] = ""
    ALIASES: ClassVar[tuple[str, ...]] = ()
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    FAMILY: ClassVar[str | None] = None
    """A parent plugin whose [Factory] defaults apply too (CondorEC2 reads condor's maxage)."""

    @classmethod
    def namespaces(cls) -> tuple[str, ...]:
        """Key prefixes this plugin's parameters may use (canonical name and aliases)."""
        return tuple(f"{cls.KIND}.{n.lower()}." for n in (cls.NAME, *cls.ALIASES))

    @classmethod
    def secret_files(cls, params: Mapping[str, Any]) -> dict[str, str]:
        """Parameter name -> path of each secret file these params name (``Param.secret``),
        so ``check`` can judge its permissions; a plugin that resolves a name into a path
        (a proxy in ``proxy_dir``) says where it will look."""
        out = {}
        for p in cls.PARAMS:
            value = params.get(p.name)
            if p.secret and value:
                out[p.name] = str(value)
        return out

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The endpoints these params make the plugin reach (``check --preflight``), as
        probes the caller runs once per distinct endpoint; nothing is contacted here. By
        default none: a plugin that talks to nothing outside has nothing to check."""
        return []

    @classmethod
    def factory_namespaces(cls) -> tuple[str, ...]:
        """Prefixes of [Factory] defaults: the family's first, so the plugin's own win."""
        family = (f"{cls.KIND}.{cls.FAMILY.lower()}.",) if cls.FAMILY else ()
        return family + cls.namespaces()


@dataclass(frozen=True)
class Env:
    """What every stateful plugin may use: who we are, the ports, the clock."""

    factory_id: str
    world: World
    clock: Clock
    factory_settings: Mapping[str, str] = field(default_factory=dict)
    """Raw ``[Factory]`` keys (e.g. ``baseLogDir``), for plugins that need them."""
    reads: SharedReads = field(default_factory=SharedReads)
    """Answers the status sources of one cycle share (one job query per schedd)."""


# ---------------------------------------------------------------------------- scheduler


@dataclass(frozen=True)
class SchedContext:
    """Everything a scheduler plugin may read. Plain data: the chain is a pure function."""

    queue: str
    now: float
    wms: WMSQueueInfo | None
    batch: BatchQueueInfo | None
    factory: FactoryTotals | None = None


class SchedPlugin(Plugin):
    """``calc(n, ctx) -> (n, reason)``; a negative n means "take that many workers away"."""

    KIND = "sched"

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        raise NotImplementedError

    @classmethod
    def cap(cls, params: Mapping[str, Any]) -> int | None:
        """The most workers a queue with this step in its chain can have, if the step bounds
        it (MaxVMs, MaxToRun): what a pre-flight holds a cloud quota against."""
        return None

    # Plugins that need the bounded job history (Throttle) say so; the batch status plugin
    # then fetches it for that queue.
    NEEDS_HISTORY: ClassVar[bool] = False

    def history_window(self) -> float:
        return 0.0


# ---------------------------------------------------------------------------- status sources


class StatusSource(Plugin):
    """A status plugin instance shared by every queue whose params give the same source key.

    ``refresh`` does the one query per cycle; queues then read their slice of the snapshot.
    ``refresh`` raises on failure; the factory records the error and the queues fail closed.
    """

    MAXAGE: ClassVar[Param] = Param(
        "maxage",
        float,
        600.0,
        "snapshot older than this (s) is not used (queue fails closed)",
        minimum=0,
        maximum=DURATION_MAX,
    )
    """Every status source declares this one ``maxage`` in its PARAMS."""

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        self.params = params
        self.env = env
        self.snapshot_time: float | None = None

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        """Queues whose params give equal keys share one instance (one query per cycle)."""
        return (cls.NAME,)

    def refresh_lane(self) -> Hashable:
        """Sources of one lane refresh one after another on one thread; lanes run side by side
        when the world's calls may block (``World.blocking_io``), so a stalled server delays
        only its own lane's queues. The default lane is the local batch system's: its
        bindings are kept to one thread. A source that only talks to its own remote server
        (PanDA over HTTP) has a lane of its own."""
        return ("local",)

    def source_label(self) -> str:
        """What this instance reads, in a few words and without a secret (a schedd, a server's
        URL redacted): it tells the sources of one plugin apart in the metrics. Instances are
        shared by ``source_key``, by default one per plugin, which needs no further name."""
        return "default"

    def register(self, params: Mapping[str, Any]) -> None:
        """A queue with these params reads this source (so it can fetch what they need)."""

    def refresh(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Let go of the last snapshot; the factory calls it on every source it is about to
        refresh, so two cycles' answers are never held at once (a failed refresh makes the
        source's queues fail closed, and they never read the old one)."""


class WMSStatusPlugin(StatusSource):
    KIND = "wmsstatus"

    def info(self, wmsqueue: str, params: Mapping[str, Any]) -> WMSQueueInfo | None:
        """This queue's slice of the last snapshot; ``params`` are the queue's own."""
        raise NotImplementedError

    def info_for(self, queue: str, wmsqueue: str, params: Mapping[str, Any]) -> WMSQueueInfo | None:
        """``info`` as the queue named ``queue`` sees it: a source that can see the factory's
        own workers among the work leaves that queue's own out (a queue never feeds on
        itself). By default the same for every queue."""
        return self.info(wmsqueue, params)


class BatchStatusPlugin(StatusSource):
    KIND = "batchstatus"

    def want_history(self, queue: str, window: float) -> None:
        """A queue's chain needs jobs that started within ``window`` seconds (Throttle)."""

    def queues_seen(self) -> Mapping[str, int]:
        """Workers per queue label in the last snapshot, every label this factory's workers
        carry (the factory reports those of queues no longer configured)."""
        return {}

    def info(self, queue: str) -> BatchQueueInfo | None:
        raise NotImplementedError

    def reconcile(
        self, claims: Mapping[str, BatchStatusPlugin], protected: Collection[str], dry_run: bool
    ) -> list[str]:
        """After each refresh: act on workers no configured queue claims (``claims``: each
        queue's batch source; ``protected``: queues whose config is broken), returning what it
        reported or did. By default nothing: a schedd's jobs of a removed queue are reported
        (``queues_seen``) and never touched; a cloud source terminates its orphans."""
        return []

    RECHECK_RANK: ClassVar[int] = 0
    """Among sources with one ``recheck_key``, the highest rank re-reads for all of them."""

    def recheck_key(self) -> Hashable:
        """Sources with equal keys re-read the same batch system: the factory asks one of
        them (the highest ``RECHECK_RANK``) for all their candidates in one query."""
        return ("source", id(self))

    def recheck(self, workers: Sequence[Worker]) -> dict[str, Worker]:
        """Re-read these workers right before an irreversible step (one batched query).

        Returns the current view by worker id; a worker missing from the result is gone.
        """
        raise NotImplementedError


# ---------------------------------------------------------------------------- submit


@dataclass(frozen=True)
class QueueEnv:
    """The queue a submit plugin works for, and its generic (non-plugin) keys."""

    queue: str
    wmsqueue: str
    generic: Mapping[str, str] = field(default_factory=dict)


class PluginError(Exception):
    """Any action a plugin could not carry out, with the outside world's reason.

    Submit plugins raise this (never a port's own exception type), so every failure reaches the
    queue as one type and lands in its trace the same way."""


class SubmitError(PluginError):
    """A submit that failed (quota, credentials, rejected description); backs the queue off."""


RetireGroup = tuple[Sequence[Worker], RetireMode]
"""Workers to retire in one mode."""


class BatchSubmitPlugin(Plugin):
    """Carries out the planner's actions for one queue.

    ``WORKERS`` says whether this plugin makes pilots (retire means remove) or VMs (retire is
    peaceful, reaping removes the VM job / terminates the instance).
    """

    KIND = "batchsubmit"
    WORKERS: ClassVar[WorkerKind] = WorkerKind.PILOT

    def __init__(self, params: Mapping[str, Any], env: Env, queue: QueueEnv) -> None:
        self.params = params
        self.env = env
        self.queue = queue

    def submit(self, count: int) -> list[str]:
        """Submit ``count`` new workers as one transaction; returns their ids."""
        raise NotImplementedError

    def saved_state(self) -> dict[str, Any] | None:
        """What the plugin learned that a restart must not forget (JSON), or None; the state
        file keeps it, and restores it while the queue's submit section is unchanged."""
        return None

    def restore_state(self, data: Any) -> None:
        """Take back ``saved_state``'s data; raise ValueError, naming what is malformed,
        before changing anything."""

    def preview(self) -> str:
        """What submitting one worker would send (a submit description, a launch request and
        its user data), as text, without sending it or creating anything: ``pilotfactory
        show``. Secrets inline in it are the caller's to redact."""
        raise NotImplementedError(f"{self.NAME} cannot show what it would submit")

    def cancel(self, workers: Sequence[Worker]) -> None:
        """Remove workers that run nothing (pending jobs, open requests, idle pilots)."""
        raise NotImplementedError

    def retire(self, workers: Sequence[Worker], mode: RetireMode) -> None:
        """Retire in exactly ``mode`` (the planner chose it, per worker); record it."""
        raise NotImplementedError

    def retire_groups(self, groups: Sequence[RetireGroup]) -> None:
        """Every retire of one cycle (the planner may choose drain for some workers and
        peaceful for others), so a plugin can record them in one write. By default each group
        goes through ``retire``; every group is tried, the first failure is raised."""
        first: Exception | None = None
        for workers, mode in groups:
            try:
                self.retire(workers, mode)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def unretire(self, workers: Sequence[Worker]) -> None:
        raise NotImplementedError

    def vacate(self, workers: Sequence[Worker]) -> None:
        """VMs the provider is about to end (a spot notice): record it, then send their
        payload back to the queue now (``CondorPort.vacate``)."""
        raise NotImplementedError(f"{self.NAME} cannot vacate")

    def fingerprint(self) -> str | None:
        """What a VM launched now would be (``vmlife.fingerprint``): VMs launched as something
        else have drifted. None: the plugin does not say (nothing is judged drifted)."""
        return None

    def maintain(self, workers: Sequence[Worker], now: float) -> list[str]:
        """Once per cycle after the actions: keep what the factory's VMs carry up to date
        (renew the leases of the workers it still wants); returns what it did, for the trace.
        By default nothing."""
        return []

    def lease_ad(self, now: float) -> tuple[CondorTarget, dict[str, Any]] | None:
        """The collector and the lease ad this queue's VMs renew their lease from (issue
        18), or None when the queue has no lease; the factory advertises every queue's ads
        to one collector in one call."""
        return None

    def own(self, workers: Sequence[Worker]) -> list[Worker]:
        """Only this queue's workers (label check): nothing else is ever touched."""
        out = []
        for w in workers:
            if w.queue != self.queue.queue:
                log.error("[%s] refusing to touch %s of queue %s", self.queue.queue, w.id, w.queue)
            else:
                out.append(w)
        return out

    def reap(self, workers: Sequence[Worker]) -> None:
        """Remove what is left of retired / lost / held workers (VM job, instance)."""
        raise NotImplementedError

    def cancel_and_reap(self, cancel: Sequence[Worker], reap: Sequence[Worker]) -> None:
        """A cycle's cancels and reaps together: both take workers away, so a plugin whose
        batch system removes any set of jobs in one call (a schedd) makes it one write. By
        default each in turn."""
        if cancel:
            self.cancel(cancel)
        if reap:
            self.reap(reap)
