"""From the chain's n and the queue's workers to concrete actions. A pure function.

n > 0: un-retire retiring workers first (already booted, cheapest), then submit the rest.
n < 0: take away |n| workers, cheapest first: held and pending (cancel), then idle (longest idle
first), then busy (fewest busy slots first, retired peacefully). A worker is acted on only after
it has been a candidate in ``retire_confirm_cycles`` consecutive cycles.
Every cycle: reap retired workers, booting ones past ``boot_timeout``, held ones past
``held_timeout`` and VM requests never fulfilled within ``pending_timeout`` (an open spot
request, a grid job the gridmanager cannot act on: pending forever otherwise, counted as coming
supply); the cause a status plugin reports for a pending request is a note every cycle.

The worker VM contract (issue 18), VMs only: an INTERRUPTED VM (the provider's notice) is
vacated at once and reaped, never as a failure, once the provider's time has passed; a VM past
its deadline is retired ("lifetime"); a VM whose fingerprint is not the queue's current one is
drifted and replaced surge-first: a replacement is bought, and the drifted VM is retired
("drift") only once a current VM is there idle to take its place, so supply never drops.

"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pilotfactory.factory.contract import KEEP_ATTR
from pilotfactory.factory.info import (
    DEFAULT_RETIRE_MODE,
    SUPPLY,
    RetireMode,
    Worker,
    WorkerKind,
    WorkerSet,
    WorkerState,
)
from pilotfactory.factory.params import DURATION_MAX, Param

_CAP = re.compile(r"(\d{1,18})\s*(%?)", re.ASCII)


def _check_cap(text: str) -> None:
    """``max_retire_per_cycle``: a count, or a percentage of at most 100."""
    m = _CAP.fullmatch(text)
    if m is None:
        raise ValueError("expected N or N%")
    if m.group(2) and int(m.group(1)) > 100:
        raise ValueError("expected N or N% with N% at most 100%")


PLANNER_PARAMS: tuple[Param, ...] = (
    Param(
        "retire_mode",
        str,
        None,
        "drain | peaceful | kill",
        choices=tuple(m.value for m in RetireMode),
    ),
    Param(
        "expected_job_length",
        float,
        3600.0,
        "drain only where the slots' MaxJobRetirementTime >= this (seconds)",
        minimum=0.0,
        maximum=DURATION_MAX,
    ),
    # A timeout of 0 would call every booting VM lost, every held job stuck: at least a second.
    Param(
        "boot_timeout",
        float,
        1800.0,
        "BOOTING longer than this is LOST",
        minimum=1.0,
        maximum=DURATION_MAX,
    ),
    Param(
        "held_timeout",
        float,
        3600.0,
        "HELD longer than this is reaped",
        minimum=1.0,
        maximum=DURATION_MAX,
    ),
    Param(
        "pending_timeout",
        float,
        1800.0,
        "a VM request PENDING longer than this is cancelled (a failure) and replaced",
        minimum=1.0,
        maximum=DURATION_MAX,
    ),
    Param("retire_confirm_cycles", int, 2, minimum=1),
    Param(
        "keep_max",
        float,
        86400.0,
        "a VM whose slot or job says PilotFactoryKeep is spared retire this long at most",
        minimum=0.0,
        maximum=DURATION_MAX,
    ),
    Param("max_booting", int, None, "cap on PENDING+BOOTING workers", minimum=0),
    Param(
        "max_retire_per_cycle",
        str,
        None,
        "count or percentage, e.g. 5 or 10%",
        validate=_check_cap,
    ),
    Param(
        "scale_down_delay",
        float,
        0.0,
        "no retire this long after a scale-up",
        minimum=0.0,
        maximum=DURATION_MAX,
    ),
    Param(
        "reap_followup",
        float,
        20.0,
        "after a cycle that retired idle VMs, run again this soon to reap them (0: next interval)",
        minimum=0.0,
        maximum=DURATION_MAX,
    ),
    Param("failure_limit", int, 5, "last K workers all failed -> stop submitting", minimum=1),
    Param("backoff.initial", float, 60.0, minimum=0.0, maximum=DURATION_MAX),
    Param("backoff.max", float, 1800.0, minimum=0.0, maximum=DURATION_MAX),
    Param(
        "shrink_freeze_ratio",
        float,
        0.5,
        "snapshot shrink (a fraction) that freezes retire",
        minimum=0.0,
        maximum=1.0,
    ),
)
"""The queue keys the planner and the rails read (DESIGN "The planner", "Safety rails"): the
one place their names, types and defaults are declared; ``PlannerSettings`` follows from it."""

_D = {p.name: p.default for p in PLANNER_PARAMS}


@dataclass(frozen=True)
class PlannerSettings:
    """A queue's planner and safety-rail settings; defaults come from ``PLANNER_PARAMS``."""

    retire_mode: RetireMode | None = None
    """Unset: ``DEFAULT_RETIRE_MODE`` of the queue's worker kind."""
    expected_job_length: float = _D["expected_job_length"]
    """Drain only where the slots' MaxJobRetirementTime is at least this (else peaceful)."""
    boot_timeout: float = _D["boot_timeout"]
    held_timeout: float = _D["held_timeout"]
    pending_timeout: float = _D["pending_timeout"]
    retire_confirm_cycles: int = _D["retire_confirm_cycles"]
    keep_max: float = _D["keep_max"]
    max_booting: int | None = _D["max_booting"]
    max_retire_per_cycle: str | None = _D["max_retire_per_cycle"]
    scale_down_delay: float = _D["scale_down_delay"]
    reap_followup: float = _D["reap_followup"]
    """An idle VM retired peacefully (or drained) is gone from the collector within seconds;
    reaping it a whole interval later (APF's default is 360 s) would bill that idle time."""
    failure_limit: int = _D["failure_limit"]
    backoff_initial: float = _D["backoff.initial"]
    backoff_max: float = _D["backoff.max"]
    shrink_freeze_ratio: float = _D["shrink_freeze_ratio"]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PlannerSettings:
        """From parsed ``PLANNER_PARAMS`` values (``backoff.initial`` -> ``backoff_initial``)."""
        kw = {p.name.replace(".", "_"): values[p.name] for p in PLANNER_PARAMS if p.name in values}
        mode = kw.get("retire_mode")
        kw["retire_mode"] = RetireMode(mode) if mode else None
        return cls(**kw)


class ActionKind(enum.Enum):
    UNRETIRE = "unretire"
    VACATE = "vacate"
    SUBMIT = "submit"
    CANCEL = "cancel"
    RETIRE = "retire"
    REAP = "reap"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    workers: tuple[Worker, ...] = ()
    count: int = 0
    mode: RetireMode | None = None
    reason: str = ""
    failure: bool = False
    """A reap that counts as a failure (LOST / HELD), for the queue's failure rate."""

    def size(self) -> int:
        return self.count if self.kind is ActionKind.SUBMIT else len(self.workers)

    def describe(self) -> str:
        what = f"{self.kind.value} {self.size()}"
        if self.mode:
            what += f" ({self.mode})"
        return f"{what}: {self.reason}" if self.reason else what


@dataclass(frozen=True)
class PlannerMemory:
    """What the planner remembers between cycles; losing it only delays a retire."""

    candidate_cycles: Mapping[str, int] = field(default_factory=dict)
    last_scale_up: float | None = None


@dataclass(frozen=True)
class PlanInput:
    n: int
    workers: WorkerSet
    """A tuple or list given here is wrapped; the planner reads only the states it needs."""
    now: float
    settings: PlannerSettings
    worker_kind: WorkerKind = WorkerKind.VM
    """Pilots are never retired peacefully: removal only."""
    freeze: str | None = None
    """Circuit breaker: why retire and reap are frozen this cycle (None: not frozen)."""
    submit_blocked: str | None = None
    """Back-off: why no new workers may be submitted this cycle."""
    fingerprint: str | None = None
    """The queue's current VM fingerprint (None: unknown, nothing is judged drifted)."""
    maximum: int | None = None
    """The chain's bound on the queue's workers (MaxVMs, MaxToRun), if it has one: what the
    replacements of vacated VMs may not exceed."""

    def __post_init__(self) -> None:
        if not isinstance(self.workers, WorkerSet):
            object.__setattr__(self, "workers", WorkerSet(self.workers))


@dataclass(frozen=True)
class HeldBack:
    """What the plan was asked for and did not do, and why: ``status`` answers "why was nothing
    bought" and "why is this worker not retired" from these, not from free-text notes."""

    what: str
    """``buy``, or how workers are taken away: ``retire`` (VMs, pilots in kill mode) or
    ``cancel`` (pending and held ones)."""
    reason: str
    count: int
    workers: tuple[str, ...] = ()
    """The ids concerned, when there are particular workers (a confirmation, a budget)."""


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    notes: tuple[str, ...]
    memory: PlannerMemory
    held_back: tuple[HeldBack, ...] = ()

    def of(self, kind: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind is kind]


def retire_cap(setting: str | None, workers: int) -> int | None:
    """``max_retire_per_cycle`` as a count: ``5`` or ``10%`` of the queue (at least 1)."""
    if setting is None:
        return None
    text = setting.strip()
    if text.endswith("%"):
        pct = float(text[:-1])
        return max(1, math.floor(workers * pct / 100.0))
    return int(text)


def plan(inp: PlanInput, memory: PlannerMemory | None = None) -> Plan:
    memory = memory or PlannerMemory()
    s = inp.settings
    actions: list[Action] = []
    notes: list[str] = []
    held: list[HeldBack] = []
    last_up = memory.last_scale_up

    # ---- reaping, every cycle; vacating interrupted VMs even when frozen (the notice is the
    # provider's positive word, not a missing ad)
    notes.extend(stuck_notes(inp))
    actions.extend(_vacates(inp))
    if inp.freeze:
        notes.append(f"retire and reap frozen: {inp.freeze}")
    else:
        actions.extend(_reaps(inp))
    reaped = {w.id for a in actions if a.kind is ActionKind.REAP for w in a.workers}

    life = Life.of(inp, reaped)
    n = inp.n
    if extra := _replacements(inp, actions, n):
        # The payload of a vacated VM is back in the queue within seconds, but the chain saw
        # it running: buy its VM now, not a cycle later.
        notes.append(f"n={n}->{n + extra}: replacing {extra} vacated VM(s)")
        n += extra
    if n < 0 and life.surge_on_way:
        # the chain counts the replacements bought for drifted VMs as excess: they are not
        n = min(0, n + life.surge_on_way)
        notes.append(
            f"n={inp.n}->{n}: {life.surge_on_way} replacement(s) of drifted VMs on the way"
        )
    cap_left = life.cap
    if life.expired and not inp.freeze:
        expired = life.expired[:cap_left]
        if len(expired) < len(life.expired):
            notes.append(
                f"lifetime: {len(life.expired) - len(expired)} more past their deadline wait "
                "for the disruption budget"
            )
        actions.extend(_gentle_retires(inp, tuple(expired), "lifetime: past max_lifetime", notes))
        cap_left -= len(expired)
        reaped |= {w.id for w in expired}
        n = min(0, n + len(expired)) if n < 0 else n

    counters: dict[str, int] = {}
    take_away = "retire" if inp.worker_kind is WorkerKind.VM else "cancel"
    surge = 0
    if n >= 0 and life.drifted and not inp.freeze:
        k = min(len(life.drifted), cap_left, life.spare)
        if k:
            actions.extend(
                _gentle_retires(
                    inp,
                    tuple(life.drifted[:k]),
                    f"drift: fingerprint is not the queue's {inp.fingerprint}; a current VM "
                    "took its place",
                    notes,
                )
            )
        surge = max(0, min(life.cap, len(life.drifted) - k) - life.on_way - (life.spare - k))
        if len(life.drifted) > k:
            notes.append(
                f"drift: {len(life.drifted) - k} drifted VM(s) wait for a replacement "
                f"({life.on_way} on the way, {surge} more bought)"
            )
    if n > 0 or surge > 0:
        if n > 0:
            last_up = inp.now
        retiring = [
            w
            for w in inp.workers.in_states(WorkerState.RETIRING)
            if w.id not in reaped and inp.worker_kind is WorkerKind.VM
        ]
        # Most recently asked to retire first: it has the most work left and is furthest from
        # exiting, so un-retiring it is the surest.
        retiring.sort(key=lambda w: -(w.retire_requested_at or w.since))
        unretire = [w for w in retiring if not life.is_leaving(w)][: max(0, n)]
        if unretire:
            actions.append(
                Action(ActionKind.UNRETIRE, tuple(unretire), reason="cheaper than a new worker")
            )
        rest = max(0, n) - len(unretire) + surge
        if rest > 0:
            submit, why = _submit_count(inp, rest)
            if why:
                notes.append(why)
                held.append(HeldBack("buy", why, rest - submit))
            if submit > 0:
                reason = f"n={n}" if surge == 0 else f"n={n}, drift surge {surge}"
                actions.append(Action(ActionKind.SUBMIT, count=submit, reason=reason))
    elif n < 0:
        if inp.freeze:
            notes.append(f"n={n} not acted on: frozen")
            held.append(HeldBack(take_away, f"circuit breaker: {inp.freeze}", -n))
        elif (
            s.scale_down_delay > 0
            and last_up is not None
            and inp.now - last_up < s.scale_down_delay
        ):
            wait = s.scale_down_delay - (inp.now - last_up)
            notes.append(f"n={n} held back: scale_down_delay, {wait:.0f}s to go")
            held.append(
                HeldBack(
                    take_away,
                    f"scale_down_delay={s.scale_down_delay:g}s since the last scale-up, "
                    f"{wait:.0f}s to go",
                    -n,
                )
            )
        else:
            down = replace(inp, n=n) if n != inp.n else inp
            actions_down, counters, down_notes = _scale_down(
                down, memory, reaped, held, life, cap_left
            )
            actions.extend(actions_down)
            notes.extend(down_notes)
    if not inp.freeze:  # last: an un-retire this cycle wins over a second send
        acted = {w.id for a in actions for w in a.workers}
        actions.extend(_resend_retires(inp, acted))
    new_memory = PlannerMemory(candidate_cycles=counters, last_scale_up=last_up)
    return Plan(
        actions=tuple(actions), notes=tuple(notes), memory=new_memory, held_back=tuple(held)
    )


INTERRUPT_REAP_AFTER = 300.0
"""Seconds past the provider's stated time an interrupted VM may still be listed (a stop or
hibernate, a late provider) before the factory terminates it itself (no failure)."""
SURGE_DEFAULT = 0.1
"""Without ``max_retire_per_cycle``, a drift surge buys at most this share of the queue at
once (at least one VM)."""


@dataclass(frozen=True)
class Life:
    """The worker VM contract's view of a queue's joined VMs this cycle (issue 18)."""

    expired: tuple[Worker, ...] = ()
    """Joined, staying, past their deadline; most overdue first."""
    drifted: tuple[Worker, ...] = ()
    """Joined, staying, launched as something else than the queue's current fingerprint;
    idle ones first (longest idle), then busy ones with the fewest busy slots."""
    on_way: int = 0
    """Pending and booting VMs (new launches are current): replacements under way."""
    spare: int = 0
    """Idle current VMs not already standing in for a drifted one that is retiring."""
    cap: int = 0
    """Disruption budget of this cycle for lifetime and drift retires, and the surge size."""
    now: float = 0.0
    current: str | None = None

    @property
    def surge_on_way(self) -> int:
        return min(self.on_way, len(self.drifted))

    def is_leaving(self, w: Worker) -> bool:
        """Un-retiring it would bring back a VM that must go anyway (past its deadline, or
        drifted)."""
        if w.deadline is not None and self.now >= w.deadline:
            return True
        return self.current is not None and w.fingerprint not in (None, self.current)

    @classmethod
    def of(cls, inp: PlanInput, reaped: set[str]) -> Life:
        if inp.worker_kind is not WorkerKind.VM:
            return cls()
        s, now, current = inp.settings, inp.now, inp.fingerprint
        staying = inp.workers.in_states(WorkerState.IDLE, WorkerState.BUSY)
        if not any(w.deadline or w.fingerprint for w in staying):
            # no VM carries the contract: nothing to judge (the common case)
            return cls(now=now, current=current)
        expired: list[Worker] = []
        drifted: list[Worker] = []
        spare = 0
        for w in staying:
            if w.id in reaped or (w.keep and now - w.since < s.keep_max):
                continue
            if w.deadline is not None and now >= w.deadline:
                expired.append(w)
            elif current is not None and w.fingerprint is not None and w.fingerprint != current:
                drifted.append(w)
            elif w.state is WorkerState.IDLE:
                spare += 1
        standing_in = sum(
            1
            for w in inp.workers.in_states(WorkerState.RETIRING)
            if current is not None and w.fingerprint is not None and w.fingerprint != current
        )
        expired.sort(key=lambda w: w.deadline or 0.0)
        drifted.sort(key=lambda w: (w.state is not WorkerState.IDLE, w.slots_busy, w.since))
        size = len(inp.workers)
        cap = retire_cap(s.max_retire_per_cycle, size)
        if cap is None:
            cap = max(1, math.ceil(size * SURGE_DEFAULT))
        on_way = inp.workers.count(WorkerState.PENDING, WorkerState.BOOTING)
        return cls(
            tuple(expired), tuple(drifted), on_way, max(0, spare - standing_in), cap, now, current
        )


def _gentle_retires(
    inp: PlanInput, workers: tuple[Worker, ...], reason: str, notes: list[str]
) -> list[Action]:
    """Lifetime and drift retires never evict: a drain where it is safe, else peaceful, even
    in a queue whose ``retire_mode`` is kill."""
    if not workers:
        return []
    s = inp.settings
    mode = RetireMode.PEACEFUL if s.retire_mode is RetireMode.PEACEFUL else RetireMode.DRAIN
    return _retire_actions(
        replace(inp, settings=replace(s, retire_mode=mode)), workers, notes, reason
    )


def _vacates(inp: PlanInput) -> list[Action]:
    """Interrupted VMs not vacated yet: their payload goes back to the queue now, while the
    provider's notice lasts."""
    if inp.worker_kind is not WorkerKind.VM:
        return []
    todo = tuple(w for w in inp.workers.in_states(WorkerState.INTERRUPTED) if not w.vacated)
    if not todo:
        return []
    return [Action(ActionKind.VACATE, todo, reason="spot interruption: the provider's notice")]


def _replacements(inp: PlanInput, actions: Sequence[Action], n: int) -> int:
    """One new VM per VM vacated this cycle with payload on it, within the chain's maximum."""
    busy = sum(
        1 for a in actions if a.kind is ActionKind.VACATE for w in a.workers if w.slots_busy > 0
    )
    if busy == 0 or n < 0:
        return 0
    if inp.maximum is not None:
        room = inp.maximum - inp.workers.count(*SUPPLY) - n
        busy = min(busy, max(0, room))
    return busy


def _reaps(inp: PlanInput) -> list[Action]:
    s = inp.settings
    retired: list[Worker] = []
    lost: list[Worker] = []
    held: list[Worker] = []
    stuck: list[Worker] = []
    ended: list[Worker] = []
    states = [WorkerState.RETIRED, WorkerState.LOST, WorkerState.BOOTING, WorkerState.HELD]
    vms = inp.worker_kind is WorkerKind.VM  # an idle pilot waits for a slot: not stuck
    if vms:
        states += [WorkerState.PENDING, WorkerState.INTERRUPTED]
    for w in inp.workers.in_states(*states):
        if w.state is WorkerState.INTERRUPTED:
            if w.vacated and inp.now - (w.interruption or w.since) > INTERRUPT_REAP_AFTER:
                ended.append(w)
        elif w.state is WorkerState.RETIRED:
            retired.append(w)
        elif w.state is WorkerState.LOST or (
            w.state is WorkerState.BOOTING and inp.now - w.since > s.boot_timeout
        ):
            lost.append(w)
        elif w.state is WorkerState.HELD and inp.now - w.since > s.held_timeout:
            held.append(w)
        elif w.state is WorkerState.PENDING and inp.now - w.since > s.pending_timeout:
            stuck.append(w)
    out: list[Action] = []
    if retired:
        out.append(Action(ActionKind.REAP, tuple(retired), reason="retired"))
    if ended:
        out.append(
            Action(
                ActionKind.REAP,
                tuple(ended),
                reason=f"spot interruption: still there {INTERRUPT_REAP_AFTER:g}s past the "
                "provider's time",
            )
        )
    if lost:
        out.append(
            Action(
                ActionKind.REAP,
                tuple(lost),
                reason=f"lost: never joined within boot_timeout={s.boot_timeout:g}s or vanished",
                failure=True,
            )
        )
    if held:
        first = next((w.hold_reason for w in held if w.hold_reason), None) or "no reason given"
        out.append(
            Action(
                ActionKind.REAP,
                tuple(held),
                reason=f"held longer than held_timeout={s.held_timeout:g}s: {first}",
                failure=True,
            )
        )
    if stuck:
        cause = next((w.hold_reason for w in stuck if w.hold_reason), None)
        out.append(
            Action(
                ActionKind.REAP,
                tuple(stuck),
                reason=f"not fulfilled within pending_timeout={s.pending_timeout:g}s: "
                + (cause or "no cause reported"),
                failure=True,
            )
        )
    return out


RETIRE_RESEND_AFTER = 600.0
"""Seconds a recorded retire may go unseen on the startd (slot ads lag by up to an update
interval) before it is sent again."""


def _resend_retires(inp: PlanInput, acted: set[str]) -> list[Action]:
    """RETIRING VMs whose startd shows no retire under way long after it was recorded: the
    factory died between recording and sending it (or the command was lost), and without a
    second send the VM would stay RETIRING, and paid for, for ever."""
    if inp.worker_kind is not WorkerKind.VM:
        return []
    by_mode: dict[RetireMode, list[Worker]] = {}
    for w in inp.workers.in_states(WorkerState.RETIRING):
        asked = w.retire_requested_at
        if w.id in acted or w.retire_visible is not False or not asked:
            continue
        if inp.now - asked > RETIRE_RESEND_AFTER:
            mode = w.retire_mode or DEFAULT_RETIRE_MODE[inp.worker_kind]
            by_mode.setdefault(mode, []).append(w)
    return [
        Action(
            ActionKind.RETIRE,
            tuple(ws),
            mode=mode,
            reason=f"retire recorded over {RETIRE_RESEND_AFTER:g}s ago but not under way "
            "on the startd: sent again",
        )
        for mode, ws in by_mode.items()
    ]


def stuck_notes(inp: PlanInput) -> list[str]:
    """Pending VM requests whose status plugin reports a cause (a spot request the provider
    cannot fulfil, a grid resource the gridmanager cannot use): said every cycle, before
    ``pending_timeout`` cancels them."""
    if inp.worker_kind is not WorkerKind.VM:
        return []
    causes: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for w in inp.workers.in_states(WorkerState.PENDING):
        if w.hold_reason:
            causes[w.hold_reason] = causes.get(w.hold_reason, 0) + 1
            oldest[w.hold_reason] = min(oldest.get(w.hold_reason, w.since), w.since)
    left = inp.settings.pending_timeout
    return [
        f"{k} request(s) pending: {cause} (cancelled after pending_timeout="
        f"{left:g}s, {max(0.0, left - (inp.now - oldest[cause])):.0f}s to go)"
        for cause, k in sorted(causes.items())
    ]


def _submit_count(inp: PlanInput, want: int) -> tuple[int, str | None]:
    s = inp.settings
    if inp.submit_blocked:
        return 0, f"submit {want} blocked: {inp.submit_blocked}"
    if s.max_booting is not None:
        on_way = inp.workers.count(WorkerState.PENDING, WorkerState.BOOTING)
        room = max(0, s.max_booting - on_way)
        if room < want:
            return room, f"submit capped {want}->{room}: max_booting={s.max_booting}"
    return want, None


def _scale_down(
    inp: PlanInput,
    memory: PlannerMemory,
    reaped: set[str],
    held_back: list[HeldBack],
    life: Life | None = None,
    cap_left: int | None = None,
) -> tuple[list[Action], dict[str, int], list[str]]:
    s = inp.settings
    notes: list[str] = []
    kill_mode = s.retire_mode is RetireMode.KILL
    held = list(inp.workers.in_states(WorkerState.HELD))
    pending = list(inp.workers.in_states(WorkerState.PENDING))
    held.sort(key=_newest_first)
    # Newest pending first: the oldest request is the closest to being fulfilled.
    pending.sort(key=_newest_first)
    ordered: list[tuple[Worker, ActionKind]] = [(w, ActionKind.CANCEL) for w in held + pending]
    cancellable = sum(1 for w in held + pending if w.id not in reaped)
    # Pilots in kill mode: the running ones (most of a site's jobs, built only when read) are
    # needed only when cancelling every held and pending one is not enough.
    if inp.worker_kind is WorkerKind.VM or (kill_mode and cancellable < -inp.n):
        leaving = {w.id for w in life.drifted} if life else set()
        idle = list(inp.workers.in_states(WorkerState.IDLE))
        # drifted VMs first (they are to be replaced anyway), then longest idle first
        idle.sort(key=lambda w: (w.id not in leaving, w.since))
        busy = list(inp.workers.in_states(WorkerState.BUSY))
        if inp.worker_kind is WorkerKind.VM:
            busy.sort(key=lambda w: (w.id not in leaving, w.slots_busy, w.since))
        else:
            busy.sort(key=_newest_first)  # pilots in kill mode: newest first
        spared = {w.id for w in idle + busy if w.keep and inp.now - w.since < s.keep_max}
        if spared:
            notes.append(
                f"{len(spared)} worker(s) kept from retire by {KEEP_ATTR} "
                f"(for at most keep_max={s.keep_max:g}s)"
            )
            held_back.append(
                HeldBack(
                    "retire",
                    f"protected: {KEEP_ATTR} (honoured for keep_max={s.keep_max:g}s)",
                    len(spared),
                    tuple(sorted(spared)),
                )
            )
            idle = [w for w in idle if w.id not in spared]
            busy = [w for w in busy if w.id not in spared]
        if leaving:  # a roll under way: drifted VMs go first, busy ones before idle current
            first = [w for w in idle + busy if w.id in leaving]
            idle = [w for w in idle if w.id not in leaving]
            busy = [w for w in busy if w.id not in leaving]
            idle = first + idle
        ordered += [(w, ActionKind.RETIRE) for w in idle + busy]
    ordered = [(w, k) for w, k in ordered if w.id not in reaped]
    take = ordered[: -inp.n]
    counters = {w.id: memory.candidate_cycles.get(w.id, 0) + 1 for w, _ in take}
    confirmed = [(w, k) for w, k in take if counters[w.id] >= s.retire_confirm_cycles]
    waiting = len(take) - len(confirmed)
    if waiting:
        notes.append(
            f"{waiting} candidate(s) wait for retire_confirm_cycles={s.retire_confirm_cycles}"
        )
        by_count: dict[tuple[int, str], list[str]] = {}
        for w, kind in take:
            if counters[w.id] < s.retire_confirm_cycles:
                by_count.setdefault((counters[w.id], kind.value), []).append(w.id)
        held_back.extend(
            HeldBack(what, f"confirmation {k}/{s.retire_confirm_cycles}", len(ids), tuple(ids))
            for (k, what), ids in sorted(by_count.items())
        )
    if len(ordered) < -inp.n:
        notes.append(f"n={inp.n} but only {len(ordered)} worker(s) may be taken away")
        held_back.append(
            HeldBack(
                "retire" if inp.worker_kind is WorkerKind.VM else "cancel",
                f"n={inp.n} but only {len(ordered)} worker(s) may be taken away "
                "(the others are booting, being reaped, protected or already retiring)",
                -inp.n - len(ordered),
            )
        )
    cap = retire_cap(s.max_retire_per_cycle, len(inp.workers))
    if cap is not None and cap_left is not None and life is not None and life.expired:
        cap = max(0, min(cap, cap_left))  # the lifetime retires of this cycle spent the rest
    if cap is not None and len(confirmed) > cap:
        notes.append(f"disruption budget: {len(confirmed)}->{cap} (max_retire_per_cycle)")
        over = [w.id for w, _ in confirmed[cap:]]
        kinds = {k.value for _, k in confirmed[cap:]}
        held_back.append(
            HeldBack(
                " or ".join(sorted(kinds)),
                f"disruption budget: max_retire_per_cycle={s.max_retire_per_cycle} "
                f"({cap} this cycle)",
                len(over),
                tuple(over),
            )
        )
        confirmed = confirmed[:cap]
    cancel = tuple(w for w, k in confirmed if k is ActionKind.CANCEL)
    retire = tuple(w for w, k in confirmed if k is ActionKind.RETIRE)
    actions: list[Action] = []
    if cancel:
        actions.append(Action(ActionKind.CANCEL, cancel, reason=f"n={inp.n}: not running yet"))
    if retire:
        reason = None
        if life is not None and any(life.is_leaving(w) for w in retire):
            reason = f"n={inp.n}; drift: drifted VMs go first"
        actions.extend(_retire_actions(inp, retire, notes, reason))
    # Counters survive only for workers still candidates and not acted on.
    acted = {w.id for w, _ in confirmed}
    kept = {k: v for k, v in counters.items() if k not in acted}
    return actions, kept, notes


def _retire_actions(
    inp: PlanInput, workers: tuple[Worker, ...], notes: list[str], reason: str | None = None
) -> list[Action]:
    """The mode actually sent, per worker: a drain where the startd's MaxJobRetirementTime
    covers ``expected_job_length``, else peaceful (a graceful drain on a startd whose retirement
    time is 0 evicts its jobs at once). Decided here, so the trace records what was sent."""
    s = inp.settings
    mode = s.retire_mode or DEFAULT_RETIRE_MODE[inp.worker_kind]
    reason = reason or f"n={inp.n}"
    if mode is not RetireMode.DRAIN or inp.worker_kind is not WorkerKind.VM:
        return [Action(ActionKind.RETIRE, workers, mode=mode, reason=reason)]
    need = s.expected_job_length
    safe = tuple(w for w in workers if w.retirement_time is not None and w.retirement_time >= need)
    unsafe = tuple(w for w in workers if w not in safe)
    out = []
    if safe:
        out.append(Action(ActionKind.RETIRE, safe, mode=RetireMode.DRAIN, reason=reason))
    if unsafe:
        times = sorted(
            {"unknown" if w.retirement_time is None else f"{w.retirement_time:g}s" for w in unsafe}
        )
        why = (
            f"MaxJobRetirementTime {', '.join(times)} < expected_job_length={need:g}s, "
            "a drain would evict"
        )
        notes.append(f"{len(unsafe)} worker(s) retire peacefully instead of drain: {why}")
        out.append(
            Action(ActionKind.RETIRE, unsafe, mode=RetireMode.PEACEFUL, reason=f"{reason}; {why}")
        )
    return out


def _newest_first(w: Worker) -> tuple[float, tuple[int, ...], str]:
    """Submission time, then the job id (QDate has whole seconds; one cluster shares it)."""
    cluster, _, proc = w.id.partition(".")
    num = (int(cluster), int(proc)) if cluster.isdigit() and proc.isdigit() else ()
    return (-(w.submitted_at or w.since), tuple(-x for x in num), w.id)


def summarize(actions: Sequence[Action]) -> str:
    return ", ".join(a.describe() for a in actions) or "nothing"
