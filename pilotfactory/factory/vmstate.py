"""The VM state table: what one VM's observations this cycle mean (DESIGN "Joining VMs").

Status plugins turn what they read (a grid job ad, a cloud instance, the startd and master ads)
into one typed ``VMObservation`` with a small adapter each; ``derive_state`` then reads the
table below, first matching row wins. The table is the documentation, and the tests run it as
a matrix. It is what closes APF's boot race: a VM without startd ads is RETIRED only if the
factory recorded a retire; otherwise it is BOOTING (LOST past ``boot_timeout``), or RETIRING
for ``unretire_grace`` after an un-retire while its startd restarts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

from pilotfactory.factory.info import WorkerState


class Phase(enum.Enum):
    """Where the request for the VM stands (grid job status, or cloud instance state)."""

    QUEUED = "queued"
    """Job idle / instance or spot request pending."""
    RUNNING = "running"
    """Job running / instance running."""
    HELD = "held"
    """Job held / instance in error."""
    GONE = "gone"
    """Job removed or completed / instance stopping or terminated: not a worker."""
    ENDED_UNASKED = "ended unasked"
    """Instance terminated or stopped although the factory recorded neither an end nor a
    retire (someone else, or the provider, ended it): its capacity is lost."""
    UNKNOWN = "unknown"
    """A status the factory does not know (a suspended job): still a worker, never dropped."""


class VMObservation(NamedTuple):
    """Everything the state of one VM depends on, read this cycle.

    A named tuple, not a frozen dataclass: immutable just the same, and built once per VM per
    cycle, where a frozen dataclass's per-field ``object.__setattr__`` costs several times as
    much (benchmarks/scale.py, ~25,000 VMs)."""

    phase: Phase
    entered: float
    """When the job / instance entered its phase."""
    started: float | None = None
    """When the VM started running (JobStartDate / launch time)."""
    instance_known: bool = False
    """The instance id is known (grid jobs learn it from the gridmanager)."""
    slots_total: int = 0
    slots_busy: int = 0
    slot_ads: int = 0
    """How many startd slot ads joined this VM (0: its startd is not in the collector)."""
    first_activity: float | None = None
    last_activity: float | None = None
    master_seen: bool = False
    retire_requested_at: float | None = None
    """A retire the factory recorded and has not un-retired since."""
    unretired_at: float | None = None
    last_joined: float | None = None
    """The last time this factory saw the VM's slots (for the un-retire grace)."""
    interrupted: bool = False
    """The provider announced an interruption (a notice on its slots, or one the factory
    recorded when it vacated the VM)."""

    @property
    def joined(self) -> bool:
        return self.slot_ads > 0


Rule = Callable[[VMObservation, float, float], bool]
Since = Callable[[VMObservation], float]


def _recent_unretire(o: VMObservation, now: float, grace: float) -> bool:
    return o.unretired_at is not None and now - max(o.unretired_at, o.last_joined or 0.0) <= grace


# (what the row says, condition(observation, now, grace), state, since)
STATE_TABLE: tuple[tuple[str, Rule, WorkerState | None, Since], ...] = (
    ("held job / instance in error", lambda o, n, g: o.phase is Phase.HELD,
     WorkerState.HELD, lambda o: o.entered),
    ("queued job / pending instance", lambda o, n, g: o.phase is Phase.QUEUED,
     WorkerState.PENDING, lambda o: o.entered),
    ("removed, completed, stopping or terminated: not a worker",
     lambda o, n, g: o.phase is Phase.GONE, None, lambda o: o.entered),
    ("ended without the factory asking: lost (reaped once, which records the end)",
     lambda o, n, g: o.phase is Phase.ENDED_UNASKED, WorkerState.LOST, lambda o: o.entered),
    ("a status the factory does not know: counted as supply, never acted on",
     lambda o, n, g: o.phase is Phase.UNKNOWN, WorkerState.UNKNOWN, lambda o: o.entered),
    ("running, the provider announced an interruption: no supply, vacated, never a failure",
     lambda o, n, g: o.interrupted, WorkerState.INTERRUPTED, lambda o: o.entered),
    ("running job, no instance, startd or master yet (gridmanager still launching)",
     lambda o, n, g: not (o.instance_known or o.joined or o.master_seen),
     WorkerState.PENDING, lambda o: o.entered),
    ("joined, retire recorded", lambda o, n, g: o.joined and o.retire_requested_at is not None,
     WorkerState.RETIRING, lambda o: o.retire_requested_at or o.entered),
    ("joined, a slot claimed", lambda o, n, g: o.joined and o.slots_busy > 0,
     WorkerState.BUSY, lambda o: o.first_activity or o.entered),
    ("joined, every slot idle", lambda o, n, g: o.joined,
     WorkerState.IDLE, lambda o: o.last_activity or o.entered),
    ("startd gone after a recorded retire", lambda o, n, g: o.retire_requested_at is not None,
     WorkerState.RETIRED, lambda o: o.retire_requested_at or o.entered),
    ("startd absent within unretire_grace of an un-retire (restarting)", _recent_unretire,
     WorkerState.RETIRING, lambda o: o.unretired_at or o.entered),
    # boot_timeout counts from the last sighting: a VM whose ads a restarted collector lost
    # is not "never joined" (counted from launch, every VM older than boot_timeout was LOST
    # and reaped with its payload the moment the collector came back empty)
    ("running, startd never seen (since launch) or vanished unasked (since last seen)",
     lambda o, n, g: True,
     WorkerState.BOOTING, lambda o: o.last_joined or o.started or o.entered),
)  # fmt: skip


def derive_state(obs: VMObservation, now: float, grace: float) -> tuple[WorkerState, float] | None:
    """(state, since) by the first row of ``STATE_TABLE`` that matches; None: not a worker."""
    for _, rule, state, since in STATE_TABLE:
        if rule(obs, now, grace):
            return None if state is None else (state, since(obs))
    raise AssertionError("STATE_TABLE ends with a catch-all row")  # pragma: no cover
