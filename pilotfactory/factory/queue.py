"""One queue: its plugins, one cycle (status -> chain -> planner -> actions), and its trace.

Safety rails live here because they need memory across cycles: the circuit breaker (a
snapshot that shrank suspiciously freezes retire and reap), re-checking candidates right before
an irreversible step, submit back-off, and the failure-rate stop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import cast

from pilotfactory.factory.chain import ChainError, run_chain
from pilotfactory.factory.config import QueueConfig
from pilotfactory.factory.info import (
    DEFAULT_RETIRE_MODE,
    FactoryTotals,
    RetireMode,
    Worker,
    WorkerState,
)
from pilotfactory.factory.planner import (
    Action,
    ActionKind,
    PlanInput,
    PlannerMemory,
    plan,
)
from pilotfactory.factory.plugin import (
    BatchStatusPlugin,
    BatchSubmitPlugin,
    Env,
    QueueEnv,
    SchedContext,
    SchedPlugin,
    WMSStatusPlugin,
)
from pilotfactory.factory.rails import Backoff, CircuitBreaker
from pilotfactory.factory.text import clip
from pilotfactory.factory.trace import CycleTrace

log = logging.getLogger(__name__)

bounded = clip
"""Head and tail of an outside world's message: enough to act on, never a log flood."""


class Queue:
    FREEZE_ACCEPT = 3

    def __init__(
        self,
        cfg: QueueConfig,
        env: Env,
        wms_source: WMSStatusPlugin,
        batch_source: BatchStatusPlugin,
        history_size: int = 50,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.env = env
        self.wms_source = wms_source
        self.batch_source = batch_source
        self.sched: list[SchedPlugin] = [
            cast(SchedPlugin, spec.cls(spec.params))  # type: ignore[call-arg]
            for spec in cfg.sched
        ]
        submit_cls = cast(type[BatchSubmitPlugin], cfg.batchsubmit.cls)
        self.submitter: BatchSubmitPlugin = submit_cls(
            cfg.batchsubmit.params,
            env,
            QueueEnv(queue=cfg.name, wmsqueue=cfg.wmsqueue, generic=cfg.generic),
        )
        self.worker_kind = submit_cls.WORKERS
        for plugin in self.sched:
            if plugin.NEEDS_HISTORY:
                batch_source.want_history(cfg.name, plugin.history_window())
        self.memory = PlannerMemory()
        self.next_run = 0.0
        self.busy = False
        p = cfg.planner
        self.breaker = CircuitBreaker(ratio=p.shrink_freeze_ratio, accept_after=self.FREEZE_ACCEPT)
        self.backoff = Backoff(
            initial=p.backoff_initial, maximum=p.backoff_max, failure_limit=p.failure_limit
        )
        self.history: deque[CycleTrace] = deque(maxlen=history_size)
        self.counters: dict[str, int] = {
            "cycles": 0,
            "submitted": 0,
            "unretired": 0,
            "cancelled": 0,
            "retired": 0,
            "reaped": 0,
            "killed": 0,
            "errors": 0,
            "failclosed": 0,
        }

    def carry_over(self, old: Queue) -> None:
        """Keep what an unchanged queue remembers across a reload: planner memory, rails,
        counters and history (a queue in back-off must not resubmit because of a SIGHUP)."""
        self.memory = old.memory
        self.next_run = old.next_run
        self.breaker = old.breaker
        self.backoff = old.backoff
        self.counters = old.counters
        self.history = old.history

    # ------------------------------------------------------------------ one cycle

    def cycle(
        self,
        wms_error: str | None,
        batch_error: str | None,
        totals: FactoryTotals | None,
        dry_run: bool = False,
    ) -> CycleTrace:
        now = self.env.clock.now()
        trace = CycleTrace(queue=self.name, time=now, dry_run=dry_run)
        if self.busy:  # a cycle that overran: never two planners on one snapshot
            trace.error = "previous cycle still running; skipped"
            return trace
        self.busy = True
        try:
            self._cycle(trace, now, wms_error, batch_error, totals, dry_run)
        except Exception as exc:  # one queue's failure never stops the factory
            trace.error = f"{type(exc).__name__}: {bounded(str(exc))}"
            self.counters["errors"] += 1
            log.exception("queue %s: cycle failed", self.name)
        finally:
            self.busy = False
            self.counters["cycles"] += 1
            self.history.append(trace)
        self._log(trace)
        return trace

    def _cycle(
        self,
        trace: CycleTrace,
        now: float,
        wms_error: str | None,
        batch_error: str | None,
        totals: FactoryTotals | None,
        dry_run: bool,
    ) -> None:
        cfg = self.cfg
        wms = None
        if wms_error is None:
            wms = self.wms_source.info(cfg.wmsqueue, cfg.wmsstatus.params)
            if wms is None:
                wms_error = "stale or missing snapshot (older than maxage)"
        batch = None
        if batch_error is None:
            batch = self.batch_source.info(cfg.name)
            if batch is None:
                batch_error = "stale or missing snapshot (older than maxage)"
        trace.wms, trace.batch = wms, batch
        trace.wms_error, trace.batch_error = wms_error, batch_error
        if batch is None:
            # Fail closed: without our own workers we can decide nothing safely.
            trace.notes.append(f"fail closed: batch status unavailable: {batch_error}")
            self.counters["failclosed"] += 1
            return
        if batch.unmatched_startds:
            trace.notes.append(
                f"{len(batch.unmatched_startds)} startd(s) match no worker: "
                + ", ".join(batch.unmatched_startds[:5])
            )
        n = 0
        if wms is None:
            trace.notes.append(f"fail closed: wms status unavailable: {wms_error}; n=0")
            self.counters["failclosed"] += 1
        else:
            ctx = SchedContext(queue=cfg.name, now=now, wms=wms, batch=batch, factory=totals)
            try:
                trace.chain = run_chain(self.sched, ctx)
            except ChainError as exc:
                trace.error = str(exc)
                self.counters["errors"] += 1
                log.error("queue %s: %s", self.name, exc)
                return
            n = trace.chain.n
        trace.n = n
        freeze = self.breaker.check(batch, self.name)
        blocked = self.backoff.blocked(now, batch.workers, self.name)
        result = plan(
            PlanInput(
                n=n,
                workers=batch.workers,
                now=now,
                settings=cfg.planner,
                worker_kind=self.worker_kind,
                freeze=freeze,
                submit_blocked=blocked,
            ),
            self.memory,
        )
        self.memory = result.memory
        trace.planned = list(result.actions)
        trace.notes.extend(result.notes)
        if dry_run:
            trace.notes.append("dry run: nothing done")
            return
        self._execute(trace, now)

    # ------------------------------------------------------------------ acting

    def _recheck(self, actions: Sequence[Action]) -> dict[str, Worker] | None:
        workers = [w for a in actions if a.kind is not ActionKind.SUBMIT for w in a.workers]
        if not workers:
            return {}
        return self.batch_source.recheck(workers)

    def _execute(self, trace: CycleTrace, now: float) -> None:
        irreversible = [
            a
            for a in trace.planned
            if a.kind in (ActionKind.CANCEL, ActionKind.RETIRE, ActionKind.REAP)
        ]
        current: dict[str, Worker] | None = {}
        if irreversible:
            try:
                current = self._recheck(irreversible)
            except Exception as exc:
                trace.notes.append(
                    f"re-check failed, no retire/reap this cycle: {bounded(str(exc))}"
                )
                current = None
        for action in trace.planned:
            if action.kind is not ActionKind.SUBMIT and action.kind is not ActionKind.UNRETIRE:
                if current is None:
                    continue
                action = self._still_valid(action, current, trace)
                if not action.workers:
                    continue
            try:
                self._apply(action, trace, now)
            except Exception as exc:
                msg = f"{action.kind.value} failed: {type(exc).__name__}: {bounded(str(exc))}"
                trace.results.append(msg)
                self.counters["errors"] += 1
                log.error("queue %s: %s", self.name, msg)
                if action.kind is ActionKind.SUBMIT:
                    self.backoff.back_off(now, msg, self.name)

    def _still_valid(self, action: Action, current: dict[str, Worker], trace: CycleTrace) -> Action:
        keep: list[Worker] = []
        for w in action.workers:
            now_w = current.get(w.id)
            if now_w is None:
                trace.notes.append(f"{w.id}: gone before {action.kind.value}; skipped")
                continue
            ok = True
            if action.kind is ActionKind.CANCEL:
                ok = now_w.state in (WorkerState.PENDING, WorkerState.HELD)
            elif action.kind is ActionKind.RETIRE:
                # An idle candidate that picked up work since the plan is no longer idle.
                ok = now_w.state in (WorkerState.IDLE, WorkerState.BUSY) and not (
                    w.state is WorkerState.IDLE and now_w.state is WorkerState.BUSY
                )
            elif action.kind is ActionKind.REAP:
                ok = now_w.state is w.state or (
                    w.state is WorkerState.BOOTING and now_w.state is WorkerState.LOST
                )
            if ok:
                keep.append(w)
            else:
                trace.notes.append(
                    f"{w.id}: now {now_w.state.value}, was {w.state.value}; "
                    f"{action.kind.value} dropped"
                )
        return Action(
            action.kind, tuple(keep), action.count, action.mode, action.reason, action.failure
        )

    def _apply(self, action: Action, trace: CycleTrace, now: float) -> None:
        sub = self.submitter
        if action.kind is ActionKind.SUBMIT:
            ids = sub.submit(action.count)
            self.counters["submitted"] += len(ids)
            trace.results.append(f"submitted {len(ids)}")
            self.backoff.submitted()
        elif action.kind is ActionKind.UNRETIRE:
            sub.unretire(action.workers)
            self.counters["unretired"] += len(action.workers)
            trace.results.append(f"unretired {len(action.workers)}")
        elif action.kind is ActionKind.CANCEL:
            sub.cancel(action.workers)
            self.counters["cancelled"] += len(action.workers)
            trace.results.append(f"cancelled {len(action.workers)}")
        elif action.kind is ActionKind.RETIRE:
            mode = action.mode or DEFAULT_RETIRE_MODE[self.worker_kind]
            sub.retire(action.workers, mode)
            self.counters["retired"] += len(action.workers)
            if mode is RetireMode.KILL:
                self.counters["killed"] += sum(
                    1 for w in action.workers if w.state is WorkerState.BUSY
                )
            trace.results.append(f"retired {len(action.workers)} ({mode})")
        elif action.kind is ActionKind.REAP:
            sub.reap(action.workers)
            self.counters["reaped"] += len(action.workers)
            for w in action.workers:
                why = (w.hold_reason or action.reason) if action.failure else "retired"
                self.backoff.ended(action.failure, why)
            trace.results.append(f"reaped {len(action.workers)}")

    def _log(self, trace: CycleTrace) -> None:
        chain = trace.chain.summary() if trace.chain else "-"
        log.info(
            "queue %s: n=%d chain=[%s] actions=[%s]%s",
            self.name,
            trace.n,
            chain,
            trace.decision(),
            (" notes=[" + "; ".join(trace.notes) + "]") if trace.notes else "",
        )
