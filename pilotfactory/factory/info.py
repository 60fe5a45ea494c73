"""Typed snapshots that flow from the status plugins into the chain and the planner.

Everything here is plain data: the scheduler chain and the planner are pure functions of it,
so they can be tested without any backend.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload


class WorkerKind(enum.StrEnum):
    """What a submit plugin makes: the planner treats them differently."""

    PILOT = "pilot"
    """A batch job: never retired peacefully from outside; taking one away removes it."""
    VM = "vm"
    """A cloud VM whose startd joins the pool: retired peacefully, un-retired, then reaped."""


class RetireMode(enum.StrEnum):
    """How a worker is retired (queues.conf ``retire_mode``; DESIGN "Retire mechanisms")."""

    DRAIN = "drain"
    """``condor_drain -graceful``: cancellable; safe only if MaxJobRetirementTime covers a job."""
    PEACEFUL = "peaceful"
    """``condor_off -peaceful``: the running job finishes; un-retired by restarting the startd."""
    KILL = "kill"
    """Remove the job / terminate the instance at once."""

    @classmethod
    def parse(cls, value: object) -> RetireMode | None:
        """A mode read back from a job ad or tag; anything else (outside text) is None."""
        try:
            return cls(value) if isinstance(value, str) and value else None
        except ValueError:
            return None


DEFAULT_RETIRE_MODE: dict[WorkerKind, RetireMode] = {
    WorkerKind.VM: RetireMode.DRAIN,
    WorkerKind.PILOT: RetireMode.KILL,
}
"""The one place a queue without ``retire_mode`` gets its mode from."""


class WorkerState(enum.Enum):
    """Life-cycle state of one worker (pilot job or VM).

    The table ``SUPPLY`` / ``FAILURE`` below says how each state is counted; the planner's
    decisions follow from it.
    """

    PENDING = "pending"
    """Queued job, open spot request, or instance requested but not running yet."""
    BOOTING = "booting"
    """VM running, but its startd has not joined the collector yet."""
    IDLE = "idle"
    """Startd joined and every slot idle (VM); pilot running with no payload known."""
    BUSY = "busy"
    """Startd joined with at least one claimed slot; for pilots: the job is running."""
    RETIRING = "retiring"
    """The factory asked it to retire; it is finishing its last job(s)."""
    RETIRED = "retired"
    """The factory retired it and its startd is gone or drained: ready to reap."""
    HELD = "held"
    """Job held (cloud API or credential failure, bad submit file, ...)."""
    LOST = "lost"
    """Startd vanished without being retired, or never joined within ``boot_timeout``."""
    DONE = "done"
    """Completed or removed."""
    UNKNOWN = "unknown"
    """State could not be read this cycle. Counted as present, never as gone."""
    INTERRUPTED = "interrupted"
    """VMs: the provider announced it will end the VM (a spot interruption notice). Its
    capacity is gone already (no supply, so its replacement is bought at once), it is vacated
    and its end is no failure."""

    # Members are singletons compared by identity: hash them so too. Enum's own hash is Python
    # code hashing the name, and states key dicts ~150,000 times a cycle (benchmarks/scale.py).
    __hash__ = object.__hash__


ALL_STATES: tuple[WorkerState, ...] = tuple(WorkerState)
"""The members, once: iterating an Enum class (and reading a member's ``value``) is Python
code each time, and every queue's counts go through all of them every cycle."""
STATE_VALUES: tuple[tuple[WorkerState, str], ...] = tuple((s, s.value) for s in ALL_STATES)


# Which states count as supply (the worker exists or is on its way) and which as failure.
#   state     supply  sched bucket  failure
#   PENDING   yes     pending       no
#   BOOTING   yes     pending       only when reaped past boot_timeout (then LOST)
#   IDLE      yes     running       no
#   BUSY      yes     running       no
#   RETIRING  yes     running       no
#   RETIRED   no      -             no (the factory retired it on purpose)
#   HELD      yes     pending       yes once reaped past held_timeout
#   LOST      no      -             yes
#   DONE      no      -             no
#   UNKNOWN   yes     running       no
#   INTERRUPTED no    -             no (the provider's doing; vacated, then reaped)
SUPPLY: frozenset[WorkerState] = frozenset(
    {
        WorkerState.PENDING,
        WorkerState.BOOTING,
        WorkerState.IDLE,
        WorkerState.BUSY,
        WorkerState.RETIRING,
        WorkerState.HELD,
        WorkerState.UNKNOWN,
    }
)
PENDING_STATES: frozenset[WorkerState] = frozenset(
    {WorkerState.PENDING, WorkerState.BOOTING, WorkerState.HELD}
)
RUNNING_STATES: frozenset[WorkerState] = frozenset(
    {WorkerState.IDLE, WorkerState.BUSY, WorkerState.RETIRING, WorkerState.UNKNOWN}
)
FAILURE: frozenset[WorkerState] = frozenset({WorkerState.LOST, WorkerState.HELD})


@dataclass(slots=True)
class Worker:
    """One worker of one queue, as read from the batch system this cycle.

    Treat it as immutable (``dataclasses.replace`` for a changed copy). It is not ``frozen``
    because a frozen dataclass sets each field through ``object.__setattr__``: 2.7 us instead
    of 0.4 us a worker, a third of a cycle at 200,000 jobs (benchmarks/scale.py).
    """

    id: str
    """``cluster.proc`` for HTCondor jobs; for direct cloud workers the worker tag, chosen
    before launch (the instance id when an instance carries none)."""
    queue: str
    state: WorkerState
    since: float
    """When it entered this state (EnteredCurrentStatus / startd activity time)."""
    instance_id: str | None = None
    machine: str | None = None
    """Startd ``Machine`` used for retire commands."""
    slots_total: int = 0
    slots_busy: int = 0
    retire_requested_at: float | None = None
    """Written into the job ad / instance tags by the factory; survives restarts."""
    retire_mode: RetireMode | None = None
    unretired_at: float | None = None
    submitted_at: float | None = None
    retirement_time: float | None = None
    """The startd's MaxJobRetirementTime as advertised (drain is only safe when large)."""
    hold_reason: str | None = None
    """Why it is HELD, or why a PENDING VM request is not being fulfilled (the provider's
    spot request status, a grid resource the gridmanager cannot use)."""
    master_seen: bool | None = None
    """VMs: whether the VM's master ad was in the collector (a retired VM keeps its master until
    reaped; a collector that lost ads loses both). ``None`` for pilots: not applicable."""
    remote_host: str | None = None
    """Pilots: the slot the job runs in, as the schedd reports it."""
    keep: bool = False
    """VMs: a slot (or the job running in it) asks that the VM not be retired."""
    launched_as: str | None = None
    """Direct-cloud VMs: what was launched (instance type, zone or network, market, price per
    hour where known), from the instance's ``launched_as`` tag."""
    retire_visible: bool | None = None
    """Joined VMs: whether the startd shows a retire under way (a slot Draining, Drained or
    Retiring). A recorded retire the startd does not show was never sent (the factory died
    between record and act) or was lost; the planner sends it again."""
    interruption: float | None = None
    """VMs: the provider's stated action time of an interruption notice (epoch seconds; the
    slots' ``PilotFactoryInterruption``), or when the factory recorded it."""
    vacated: bool = False
    """VMs: the factory recorded (tag / job ad) that it vacated this interrupted VM."""
    deadline: float | None = None
    """VMs: end of life (``max_lifetime`` with its stagger); None: none."""
    fingerprint: str | None = None
    """VMs: what it was launched as; another than the queue's current one means drifted."""
    lease_until: float | None = None
    """VMs: the dead-man's lease as tagged (renewed by the daemon); None: no lease."""


class JobRecord(NamedTuple):
    """A finished or running job of this queue, for the Throttle black-hole guard (a named
    tuple: one per recent job per cycle)."""

    id: str
    started: float
    ended: float | None = None

    def walltime(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.started


Build = Callable[[Any], Worker]
"""Turns one raw item (a job ad) of a known state into its worker."""
IdOf = Callable[[Any], str]
SubmittedOf = Callable[[Any], float | None]
"""A raw item's submission time (``Worker.submitted_at``) read without building the worker."""
"""The worker id of one raw item, without building the worker."""


class WorkerSet(Sequence[Worker]):
    """A queue's workers, by state; a state's workers are built on first need.

    A pilot queue of a large site holds thousands of running pilots that no decision looks at
    one by one: the chain and the totals count them, the planner reads held and pending ones,
    the circuit breaker their ids. A status plugin hands over its raw items already sorted by
    state (``lazy``), so counts cost nothing and only the states a decision reads are built
    (benchmarks/scale.py). Built eagerly (``workers``), it keeps the given order.
    """

    __slots__ = ("_built", "_id_of", "_lazy", "_order", "_submitted_of")

    def __init__(
        self,
        workers: Iterable[Worker] = (),
        lazy: Mapping[WorkerState, Sequence[Any]] | None = None,
        build: Build | None = None,
        id_of: IdOf | None = None,
        submitted_of: SubmittedOf | None = None,
    ) -> None:
        self._order: tuple[Worker, ...] | None = tuple(workers) if lazy is None else None
        built: dict[WorkerState, list[Worker]] = {}
        for w in self._order or ():
            built.setdefault(w.state, []).append(w)
        self._built: dict[WorkerState, tuple[Worker, ...]] = {
            st: tuple(ws) for st, ws in built.items()
        }
        self._lazy: dict[WorkerState, tuple[Build, Sequence[Any]]] = {}
        if lazy is not None:
            if build is None:
                raise ValueError("a lazy WorkerSet needs build")
            self._lazy = {st: (build, items) for st, items in lazy.items() if items}
        self._id_of = id_of
        self._submitted_of = submitted_of

    def _state(self, state: WorkerState) -> tuple[Worker, ...]:
        hit = self._built.get(state)
        if hit is None:
            pending = self._lazy.pop(state, None)
            hit = tuple(map(pending[0], pending[1])) if pending else ()
            self._built[state] = hit
        return hit

    def in_states(self, *states: WorkerState) -> tuple[Worker, ...]:
        """The workers in these states (built now if not yet)."""
        if len(states) == 1:
            return self._state(states[0])
        return tuple(w for st in states for w in self._state(st))

    def ids_in(self, *states: WorkerState) -> set[str]:
        """Ids of the workers in these states, building none that ``id_of`` can name."""
        out: set[str] = set()
        for st in states:
            pending = self._lazy.get(st)
            if pending is not None and self._id_of is not None:
                out.update(map(self._id_of, pending[1]))
            else:
                out.update(w.id for w in self._state(st))
        return out

    def submitted_since(self, since: float, *states: WorkerState) -> bool:
        """Whether a worker in these states was submitted at ``since`` or later, building none
        that ``submitted_of`` can date (the failure back-off asks it of every running pilot)."""
        for st in states:
            pending = self._lazy.get(st)
            dates: Iterable[float | None]
            if pending is not None and self._submitted_of is not None:
                dates = map(self._submitted_of, pending[1])
            else:
                dates = (w.submitted_at for w in self._state(st))
            if any((t or 0.0) >= since for t in dates):
                return True
        return False

    def count(self, *states: WorkerState) -> int:
        total = 0
        for st in states:
            pending = self._lazy.get(st)
            total += len(pending[1]) if pending is not None else len(self._built.get(st, ()))
        return total

    def counts(self) -> dict[WorkerState, int]:
        return {st: self.count(st) for st in ALL_STATES}

    def __len__(self) -> int:
        return self.count(*ALL_STATES)

    def __iter__(self) -> Iterator[Worker]:
        if self._order is not None:
            return iter(self._order)
        return (w for st in ALL_STATES for w in self._state(st))

    @overload
    def __getitem__(self, index: int) -> Worker: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Worker, ...]: ...

    def __getitem__(self, index: int | slice) -> Worker | tuple[Worker, ...]:
        return tuple(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WorkerSet | tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WorkerSet({self.counts()})"


@dataclass(frozen=True)
class BatchQueueInfo:
    """What one queue has in the batch system at ``time``."""

    queue: str
    time: float
    workers: WorkerSet = field(default_factory=WorkerSet)
    """Built per state on first need (a tuple or list given here is wrapped)."""
    history: tuple[JobRecord, ...] | None = None
    """Bounded recent history (only when a plugin asked for it)."""
    unmatched_startds: tuple[str, ...] = ()
    """Startds that carry this queue's join attribute but match no worker (reported)."""
    pool_startds: int | None = None
    """The circuit breaker's gauge (all queues): partitionable and static slot ads of startds
    the factory is not retiring, as the collector returned them this cycle."""
    pool_left: int = 0
    """Of last cycle's gauge, the ads of VMs the factory has begun retiring since: they left
    the gauge on purpose, so the breaker takes them off its reference."""

    def __post_init__(self) -> None:
        if not isinstance(self.workers, WorkerSet):
            object.__setattr__(self, "workers", WorkerSet(self.workers))

    def count(self, *states: WorkerState) -> int:
        return self.workers.count(*states)

    @property
    def pending(self) -> int:
        """On its way: APF's ``pending`` (queued jobs, booting VMs, held jobs)."""
        return self.count(*PENDING_STATES)

    @property
    def running(self) -> int:
        """Present: APF's ``running`` (including retiring and unreadable workers)."""
        return self.count(*RUNNING_STATES)

    @property
    def held(self) -> int:
        return self.count(WorkerState.HELD)

    @property
    def supply(self) -> int:
        return self.count(*SUPPLY)

    def by_state(self) -> dict[str, int]:
        count = self.workers.count
        return {value: count(s) for s, value in STATE_VALUES}


class SiteStatus(enum.Enum):
    ONLINE = "online"
    TEST = "test"
    OFFLINE = "offline"
    BROKEROFF = "brokeroff"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: str | None) -> SiteStatus:
        if not text:
            return cls.UNKNOWN
        try:
            return cls(text.strip().lower())
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True)
class WMSQueueInfo:
    """How much work waits for one WMS queue at ``time``."""

    queue: str
    time: float
    ready: int = 0
    notready: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    unknown: int = 0
    site_status: SiteStatus = SiteStatus.UNKNOWN


@dataclass(frozen=True)
class FactoryTotals:
    """Factory-wide figures for MaxPerFactory (summed over every queue's batch info)."""

    running: int
    pending: int
    maximum: int | None = None


def sum_totals(infos: Sequence[BatchQueueInfo | None], maximum: int | None) -> FactoryTotals:
    running = sum(i.running for i in infos if i is not None)
    pending = sum(i.pending for i in infos if i is not None)
    return FactoryTotals(running=running, pending=pending, maximum=maximum)
