"""Acting on a plan: the last look before an irreversible step, then the submit plugin's calls.

The planner decides on a snapshot that may be a cycle old. Right before cancel, retire or reap,
every candidate is re-read (``BatchStatusPlugin.recheck``, one batched query for all queues of
a source) and ``still_valid`` drops the ones whose state moved: a pending pilot that started,
an idle VM that picked up a job, a worker that is gone. Submit and un-retire are not re-checked
(they take nothing away).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence

from pilotfactory.factory.info import (
    DEFAULT_RETIRE_MODE,
    RetireMode,
    Worker,
    WorkerKind,
    WorkerState,
)
from pilotfactory.factory.planner import Action, ActionKind
from pilotfactory.factory.plugin import BatchSubmitPlugin
from pilotfactory.factory.rails import Backoff
from pilotfactory.factory.text import clip
from pilotfactory.factory.trace import CycleTrace

log = logging.getLogger(__name__)

IRREVERSIBLE = (ActionKind.CANCEL, ActionKind.RETIRE, ActionKind.REAP)
S = WorkerState


def recheck_candidates(actions: Sequence[Action]) -> list[Worker]:
    """The workers an irreversible action of this plan would take away."""
    return [w for a in actions if a.kind in IRREVERSIBLE for w in a.workers]


def _still_ok(kind: ActionKind, planned: Worker, now: Worker) -> bool:
    if kind is ActionKind.CANCEL:
        return now.state in (S.PENDING, S.HELD)
    if kind is ActionKind.RETIRE:
        # An idle candidate that picked up work since the plan is no longer idle.
        return now.state in (S.IDLE, S.BUSY) and not (
            planned.state is S.IDLE and now.state is S.BUSY
        )
    if kind is ActionKind.REAP:
        return now.state is planned.state or (planned.state is S.BOOTING and now.state is S.LOST)
    return True


def still_valid(action: Action, current: Mapping[str, Worker], trace: CycleTrace) -> Action:
    """The action narrowed to the workers whose re-read state still allows it; each one
    dropped leaves a note in the trace."""
    keep: list[Worker] = []
    for w in action.workers:
        now_w = current.get(w.id)
        if now_w is None:
            trace.notes.append(f"{w.id}: gone before {action.kind.value}; skipped")
        elif _still_ok(action.kind, w, now_w):
            keep.append(w)
        else:
            trace.notes.append(
                f"{w.id}: now {now_w.state.value}, was {w.state.value}; {action.kind.value} dropped"
            )
    return Action(
        action.kind, tuple(keep), action.count, action.mode, action.reason, action.failure
    )


class Executor:
    """One queue's hands: applies its planned actions through its submit plugin, counting what
    was done and feeding the submit back-off."""

    def __init__(
        self,
        queue: str,
        submitter: BatchSubmitPlugin,
        worker_kind: WorkerKind,
        backoff: Backoff,
        counters: MutableMapping[str, int],
    ) -> None:
        self.queue = queue
        self.submitter = submitter
        self.worker_kind = worker_kind
        self.backoff = backoff
        self.counters = counters

    def execute(self, trace: CycleTrace, now: float, current: Mapping[str, Worker] | None) -> None:
        """Apply ``trace.planned``; ``current`` is the re-read of the candidates (None: the
        re-read failed, so nothing irreversible happens this cycle). Every reap of the cycle
        (retired, lost, held) goes to the batch system as one removal."""
        valid: list[Action] = []
        for action in trace.planned:
            if action.kind in IRREVERSIBLE:
                if current is None:
                    continue
                action = still_valid(action, current, trace)
                if not action.workers:
                    continue
            valid.append(action)
        removals = [a for a in valid if a.kind in (ActionKind.CANCEL, ActionKind.REAP)]
        retires = [a for a in valid if a.kind is ActionKind.RETIRE]
        for action in valid:
            batch = {ActionKind.CANCEL: removals, ActionKind.REAP: removals}.get(
                action.kind, retires if action.kind is ActionKind.RETIRE else None
            )
            if batch is None:
                self._attempt(action, trace, now, [action])
            elif action is batch[0]:
                self._attempt(action, trace, now, batch)

    def _attempt(
        self, action: Action, trace: CycleTrace, now: float, batch: Sequence[Action]
    ) -> None:
        """Apply one action (or the cycle's cancels and reaps together, or its retires); a
        failure is that step's result, never the cycle's end."""
        what = action.kind.value
        try:
            if action.kind in (ActionKind.CANCEL, ActionKind.REAP):
                what = " and ".join(sorted({a.kind.value for a in batch}))
                self.take_away(batch, trace)
            elif action.kind is ActionKind.RETIRE:
                self.retire(batch, trace)
            else:
                self.apply(action, trace)
        except Exception as exc:
            msg = f"{what} failed: {type(exc).__name__}: {clip(str(exc))}"
            trace.results.append(msg)
            self.counters["errors"] += 1
            log.error("queue %s: %s", self.queue, msg)
            if action.kind is ActionKind.SUBMIT:
                self.backoff.back_off(now, msg, self.queue)

    def maintain(self, trace: CycleTrace, now: float) -> None:
        """The submit plugin's upkeep of the queue's workers (lease renewals); a failure is
        a result line, never the cycle's end."""
        if trace.batch is None:
            return
        try:
            trace.results.extend(self.submitter.maintain(trace.batch.workers, now))
        except Exception as exc:
            msg = f"maintain failed: {type(exc).__name__}: {clip(str(exc))}"
            trace.results.append(msg)
            self.counters["errors"] += 1
            log.error("queue %s: %s", self.queue, msg)

    def retire(self, actions: Sequence[Action], trace: CycleTrace) -> None:
        """One ``retire_groups`` call for the cycle's retires (drain and peaceful ones), so
        the plugin can record them in one write."""
        default = DEFAULT_RETIRE_MODE[self.worker_kind]
        groups = [(a.workers, a.mode or default) for a in actions]
        self.submitter.retire_groups(groups)
        for workers, mode in groups:
            self.counters["retired"] += len(workers)
            if mode is RetireMode.KILL:
                self.counters["killed"] += sum(1 for w in workers if w.state is S.BUSY)
            trace.results.append(f"retired {len(workers)} ({mode})")

    def take_away(self, actions: Sequence[Action], trace: CycleTrace) -> None:
        """The cycle's cancels and reaps in one ``cancel_and_reap`` call (one removal on a
        schedd); each still counts, and each reap feeds the back-off as what it was (a
        retired worker is no failure, a lost or held one is)."""
        cancels = [a for a in actions if a.kind is ActionKind.CANCEL]
        reaps = [a for a in actions if a.kind is ActionKind.REAP]
        self.submitter.cancel_and_reap(
            [w for a in cancels for w in a.workers], [w for a in reaps for w in a.workers]
        )
        for action in cancels:
            self.counters["cancelled"] += len(action.workers)
            trace.results.append(f"cancelled {len(action.workers)}")
        self._reaped(reaps, trace)

    def reap(self, actions: Sequence[Action], trace: CycleTrace) -> None:
        """One ``reap`` call for all of them (see ``take_away``)."""
        self.submitter.reap([w for a in actions for w in a.workers])
        self._reaped(actions, trace)

    def _reaped(self, actions: Sequence[Action], trace: CycleTrace) -> None:
        for action in actions:
            self.counters["reaped"] += len(action.workers)
            for w in action.workers:
                why = (w.hold_reason or action.reason) if action.failure else "retired"
                self.backoff.ended(action.failure, why)
            trace.results.append(f"reaped {len(action.workers)}")

    def apply(self, action: Action, trace: CycleTrace) -> None:
        sub, n = self.submitter, len(action.workers)
        if action.kind is ActionKind.SUBMIT:
            ids = sub.submit(action.count)
            trace.submitted.extend(ids)
            self.counters["submitted"] += len(ids)
            trace.results.append(f"submitted {len(ids)}")
            self.backoff.submitted()
        elif action.kind is ActionKind.UNRETIRE:
            sub.unretire(action.workers)
            self.counters["unretired"] += n
            trace.results.append(f"unretired {n}")
        elif action.kind is ActionKind.VACATE:
            sub.vacate(action.workers)
            self.counters["vacated"] = self.counters.get("vacated", 0) + n
            trace.results.append(f"vacated {n} (spot interruption)")
        elif action.kind is ActionKind.CANCEL:
            sub.cancel(action.workers)
            self.counters["cancelled"] += n
            trace.results.append(f"cancelled {n}")
        elif action.kind is ActionKind.RETIRE:
            self.retire([action], trace)
        elif action.kind is ActionKind.REAP:
            self.reap([action], trace)
