"""One queue: its plugins, one cycle (status -> chain -> planner -> actions), and its trace.

Safety rails live here because they need memory across cycles: the circuit breaker (a
snapshot that shrank suspiciously freezes retire and reap), re-checking candidates right before
an irreversible step, submit back-off, and the failure-rate stop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pilotfactory.factory.chain import ChainError, ChainResult, run_chain
from pilotfactory.factory.config import QueueConfig
from pilotfactory.factory.info import (
    BatchQueueInfo,
    FactoryTotals,
    WMSQueueInfo,
    Worker,
    WorkerState,
)
from pilotfactory.factory.planner import (
    Action,
    ActionKind,
    PlanInput,
    PlannerMemory,
    plan,
    summarize,
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
from pilotfactory.secretfiles import clip

log = logging.getLogger(__name__)

JOINED = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.RETIRING)


bounded = clip
"""Head and tail of an outside world's message: enough to act on, never a log flood."""


@dataclass
class CycleTrace:
    """Everything one cycle saw and decided: logged, shown by ``status``, exported."""

    queue: str
    time: float
    wms: WMSQueueInfo | None = None
    batch: BatchQueueInfo | None = None
    wms_error: str | None = None
    batch_error: str | None = None
    chain: ChainResult | None = None
    n: int = 0
    planned: list[Action] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    dry_run: bool = False

    def decision(self) -> str:
        if self.error:
            return f"error: {self.error}"
        return summarize(self.planned)

    def to_dict(self) -> dict[str, Any]:
        batch = self.batch
        wms = self.wms
        return {
            "queue": self.queue,
            "time": self.time,
            "wms": None
            if wms is None
            else {
                "ready": wms.ready,
                "notready": wms.notready,
                "running": wms.running,
                "done": wms.done,
                "failed": wms.failed,
                "unknown": wms.unknown,
                "site_status": wms.site_status.value,
            },
            "wms_error": self.wms_error,
            "batch": None
            if batch is None
            else {
                "pending": batch.pending,
                "running": batch.running,
                "states": batch.by_state(),
                "unmatched_startds": list(batch.unmatched_startds),
            },
            "batch_error": self.batch_error,
            "chain": None
            if self.chain is None
            else [
                {"plugin": s.plugin, "in": s.n_in, "out": s.n_out, "reason": s.reason}
                for s in self.chain.steps
            ],
            "n": self.n,
            "actions": [
                {
                    "kind": a.kind.value,
                    "count": a.size(),
                    "mode": a.mode,
                    "workers": [w.id for w in a.workers],
                    "reason": a.reason,
                }
                for a in self.planned
            ],
            "results": self.results,
            "notes": self.notes,
            "error": self.error,
            "dry_run": self.dry_run,
        }


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
        self.worker_kind = getattr(submit_cls, "WORKERS", "pilot")
        for plugin in self.sched:
            if plugin.NEEDS_HISTORY:
                batch_source.want_history(cfg.name, plugin.history_window())
        self.memory = PlannerMemory()
        self.next_run = 0.0
        self.busy = False
        self.joined_ids: set[str] = set()
        self.frozen_cycles = 0
        self.pool_startds: int | None = None
        self.backoff_until = 0.0
        self.backoff_delay = 0.0
        self.failure_delay = 0.0
        self.failed_since: float | None = None
        self.backoff_reason = ""
        self.endings: deque[tuple[bool, str]] = deque(maxlen=max(1, cfg.planner.failure_limit))
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
        freeze = self._circuit_breaker(batch)
        blocked = self._submit_blocked(now, batch)
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

    # ------------------------------------------------------------------ safety rails

    def _circuit_breaker(self, batch: BatchQueueInfo) -> str | None:
        """A missing ad is not an empty worker: freeze when joined workers vanish en masse.

        A worker that retires legitimately loses its startd but keeps its master (the VM is
        up until reaped); a collector that lost ads loses both. So "vanished" counts workers
        that were joined last cycle and now show neither. A freeze keeps the old reference,
        so a lasting outage stays frozen; after ``FREEZE_ACCEPT`` cycles the new picture is
        accepted (and said so), since real mass deaths also happen.
        """
        joined_now = {w.id for w in batch.workers if w.state in JOINED}
        reference = self.joined_ids
        vanished = [
            w.id
            for w in batch.workers
            if w.id in reference and w.id not in joined_now and w.extra.get("master") is not True
        ]
        ratio = self.cfg.planner.shrink_freeze_ratio
        why = None
        if len(reference) >= 4 and len(vanished) >= max(2, len(reference) * ratio):
            why = (
                f"{len(vanished)} of {len(reference)} joined workers lost their startd and "
                "master ads in one cycle"
            )
        ads, last_ads = batch.pool_startds, self.pool_startds
        if ads is not None and last_ads is not None and last_ads >= 4 and ads < last_ads * ratio:
            why = f"the collector returned {ads} slot ads, {last_ads} last cycle"
        if why:
            self.frozen_cycles += 1
            if self.frozen_cycles <= self.FREEZE_ACCEPT:
                return (
                    f"{why}; suspect a partial collector answer "
                    f"({self.frozen_cycles}/{self.FREEZE_ACCEPT})"
                )
            log.warning(
                "queue %s: %d workers still vanished after %d frozen cycles; accepting it",
                self.name,
                len(vanished),
                self.FREEZE_ACCEPT,
            )
        self.frozen_cycles = 0
        self.joined_ids = joined_now
        self.pool_startds = ads
        return None

    def _submit_blocked(self, now: float, batch: BatchQueueInfo) -> str | None:
        """Submit errors and dead workers back the queue off; reaping goes on regardless.

        The two back-offs grow separately: a submit that succeeds resets the submit back-off,
        but only a worker submitted since the failure stop that actually joins resets the
        failure one (a successful submit of VMs that never boot is no recovery).
        """
        if self.failed_since is not None and any(
            w.state in JOINED and (w.submitted_at or 0.0) >= self.failed_since
            for w in batch.workers
        ):
            self.failure_delay = 0.0
            self.failed_since = None
        if now < self.backoff_until:
            return f"backing off {self.backoff_until - now:.0f}s more: {self.backoff_reason}"
        limit = self.cfg.planner.failure_limit
        if len(self.endings) >= limit and all(fail for fail, _ in self.endings):
            reasons = sorted({why for _, why in self.endings})
            self.failure_delay = self._next_delay(self.failure_delay)
            self.failed_since = now
            self._back_off(
                now, f"last {limit} workers all failed: " + "; ".join(reasons), self.failure_delay
            )
            self.endings.clear()
            return f"backing off: {self.backoff_reason}"
        return None

    def _next_delay(self, delay: float) -> float:
        p = self.cfg.planner
        return min(p.backoff_max, max(p.backoff_initial, delay * 2))

    def _back_off(self, now: float, reason: str, delay: float | None = None) -> None:
        if delay is None:
            self.backoff_delay = self._next_delay(self.backoff_delay)
            delay = self.backoff_delay
        self.backoff_until = now + delay
        self.backoff_reason = bounded(reason)
        log.warning("queue %s: backing off %.0fs: %s", self.name, delay, self.backoff_reason)

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
                    self._back_off(now, msg)

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
            self.backoff_delay = 0.0
        elif action.kind is ActionKind.UNRETIRE:
            sub.unretire(action.workers)
            self.counters["unretired"] += len(action.workers)
            trace.results.append(f"unretired {len(action.workers)}")
        elif action.kind is ActionKind.CANCEL:
            sub.cancel(action.workers)
            self.counters["cancelled"] += len(action.workers)
            trace.results.append(f"cancelled {len(action.workers)}")
        elif action.kind is ActionKind.RETIRE:
            mode = action.mode or "drain"
            sub.retire(action.workers, mode)
            self.counters["retired"] += len(action.workers)
            if mode == "kill":
                self.counters["killed"] += sum(
                    1 for w in action.workers if w.state is WorkerState.BUSY
                )
            trace.results.append(f"retired {len(action.workers)} ({mode})")
        elif action.kind is ActionKind.REAP:
            sub.reap(action.workers)
            self.counters["reaped"] += len(action.workers)
            for w in action.workers:
                why = (w.hold_reason or action.reason) if action.failure else "retired"
                self.endings.append((action.failure, bounded(why, 160)))
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
