"""Safety rails: the circuit breaker and the two back-offs, each a small object with its state.

They are the parts of a queue that remember across cycles (DESIGN "Safety rails"). Kept apart
from ``Queue`` so each can be tested as a table of cycles, and so a reload can carry a queue's
rails over whole. The retire-confirmation counters are the planner's (``PlannerMemory``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pilotfactory.factory.info import BatchQueueInfo, Worker, WorkerSet, WorkerState
from pilotfactory.factory.text import clip

log = logging.getLogger(__name__)

JOINED = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.RETIRING)
NOT_JOINED = tuple(s for s in WorkerState if s not in JOINED)


@dataclass
class CircuitBreaker:
    """A missing ad is not an empty worker: freeze retire and reap when joined workers vanish
    en masse, or when the collector returns far fewer slot ads than last cycle.

    A worker that retires legitimately loses its startd but keeps its master (the VM is up until
    reaped), or, under the worker contract, powers itself off, and then the request side (its
    job, its instance) says it ended; a collector that lost ads loses startd and master of VMs
    still running. So "vanished" counts workers that were joined last cycle and now show
    neither, and the gauge leaves out the ads of VMs that left on purpose or ended
    (``BatchQueueInfo.pool_left``). A freeze keeps the old reference, so a lasting outage stays
    frozen; after ``accept_after`` frozen cycles the new picture is accepted (and said so), since
    real mass deaths also happen.
    """

    ratio: float = 0.5
    accept_after: int = 3
    vms: bool = True
    """Watch joined workers (VMs). A pilot has no startd or master of its own to lose: one that
    was running and is gone has ended, so pilot queues keep only the pool-wide gauge."""
    joined_ids: set[str] = field(default_factory=set)
    pool_startds: int | None = None
    frozen_cycles: int = 0

    def check(self, batch: BatchQueueInfo, queue: str = "") -> str | None:
        """Why retire and reap freeze this cycle, or None; updates the reference."""
        joined_now = batch.workers.ids_in(*JOINED) if self.vms else set()
        reference = self.joined_ids
        vanished: list[str] = []
        # Ids first: most cycles no worker that was joined is still listed but not joined,
        # and then no worker need be built to look at its master (nor, when none left the
        # joined states at all, a pilot queue's thousands of pending ids named).
        gone = reference - joined_now
        if gone and gone & batch.workers.ids_in(*NOT_JOINED):
            vanished = [
                w.id
                for w in batch.workers.in_states(*NOT_JOINED)
                if w.id in reference
                and w.master_seen is not True
                and w.state is not WorkerState.INTERRUPTED  # the provider's word, not lost ads
            ]
        why = None
        if len(reference) >= 2 and len(vanished) >= max(2, len(reference) * self.ratio):
            why = (
                f"{len(vanished)} of {len(reference)} joined workers lost their startd and "
                "master ads in one cycle"
            )
        # The factory's own retires since last cycle leave the gauge on purpose: without taking
        # them off, one cycle that retired most VMs froze every queue of the pool for 3 cycles.
        ads, last_ads = batch.pool_startds, self.pool_startds
        if last_ads is not None:
            last_ads = max(0, last_ads - batch.pool_left)
        if (
            ads is not None
            and last_ads is not None
            and last_ads >= 2
            and ads < last_ads * self.ratio
        ):
            why = (
                f"the collector returned {ads} partitionable/static slot ads of workers not "
                f"being retired, {last_ads} last cycle (less those retired since)"
            )
        if why:
            self.frozen_cycles += 1
            if self.frozen_cycles <= self.accept_after:
                return (
                    f"{why}; suspect a partial collector answer "
                    f"({self.frozen_cycles}/{self.accept_after})"
                )
            log.warning(
                "queue %s: still so after %d frozen cycles, accepting it: %s",
                queue,
                self.accept_after,
                why,
            )
        self.frozen_cycles = 0
        self.joined_ids = joined_now
        self.pool_startds = ads
        return None


def next_delay(delay: float, initial: float, maximum: float) -> float:
    """Exponential back-off: ``initial``, doubling, capped at ``maximum``."""
    return min(maximum, max(initial, delay * 2))


@dataclass
class Backoff:
    """Submit back-off and the failure-rate stop, which grow separately.

    A submit that succeeds resets the submit back-off (``delay``), but only a worker submitted
    since the failure stop that actually joins resets the failure one (``failure_delay``): a
    successful submit of VMs that never boot is no recovery. Reaping goes on regardless.
    """

    initial: float = 60.0
    maximum: float = 1800.0
    failure_limit: int = 5
    until: float = 0.0
    reason: str = ""
    delay: float = 0.0
    failure_delay: float = 0.0
    failed_since: float | None = None
    endings: deque[tuple[bool, str]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.endings = deque(self.endings, maxlen=max(1, self.failure_limit))

    def blocked(self, now: float, workers: Sequence[Worker], queue: str = "") -> str | None:
        """Why no new workers may be submitted this cycle, or None."""
        if not isinstance(workers, WorkerSet):
            workers = WorkerSet(workers)
        if self.failed_since is not None and workers.submitted_since(self.failed_since, *JOINED):
            self.failure_delay = 0.0
            self.failed_since = None
        if now < self.until:
            until = time.strftime("%H:%M:%SZ", time.gmtime(self.until))
            return f"backing off {self.until - now:.0f}s more (until {until}): {self.reason}"
        limit = self.failure_limit
        if len(self.endings) >= limit and all(fail for fail, _ in self.endings):
            reasons = sorted({why for _, why in self.endings})
            self.failure_delay = next_delay(self.failure_delay, self.initial, self.maximum)
            self.failed_since = now
            self.back_off(
                now,
                f"last {limit} workers all failed: " + "; ".join(reasons),
                queue,
                self.failure_delay,
            )
            self.endings.clear()
            return f"backing off: {self.reason}"
        return None

    def back_off(
        self, now: float, reason: str, queue: str = "", delay: float | None = None
    ) -> None:
        """A submit failed (or the failure stop tripped): no submits until ``now + delay``."""
        if delay is None:
            self.delay = next_delay(self.delay, self.initial, self.maximum)
            delay = self.delay
        self.until = now + delay
        self.reason = clip(reason)
        log.warning("queue %s: backing off %.0fs: %s", queue, delay, self.reason)

    def submitted(self) -> None:
        """A submit succeeded: the submit back-off starts again from ``initial``."""
        self.delay = 0.0

    def ended(self, failure: bool, why: str) -> None:
        """A worker was reaped: a failure (LOST / HELD) or on purpose (retired)."""
        self.endings.append((failure, clip(why, 160)))
