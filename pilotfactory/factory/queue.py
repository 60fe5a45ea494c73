"""One queue: its plugins, one cycle (status -> chain -> planner -> actions), and its trace.

A cycle has two halves so the factory can batch between them: ``decide`` reads the snapshot,
runs the chain and the pure planner (nothing touches the world), and ``act`` applies the plan
through the ``Executor`` once the irreversible candidates of every queue on a status source
have been re-read in one query. ``cycle`` does both for one queue on its own. The rails with
memory across cycles (circuit breaker, submit back-off, failure-rate stop) are objects
(``rails.py``) a reload carries over whole.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

from pilotfactory.factory.chain import ChainError, run_chain
from pilotfactory.factory.config import QueueConfig
from pilotfactory.factory.executor import Executor, recheck_candidates
from pilotfactory.factory.info import BatchQueueInfo, FactoryTotals, Worker, WorkerKind, WorkerState
from pilotfactory.factory.planner import ActionKind, PlanInput, PlannerMemory, plan
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
from pilotfactory.factory.trace import CURRENT_QUEUE, CycleRecords, CycleTrace

log = logging.getLogger(__name__)

bounded = clip
"""Head and tail of an outside world's message: enough to act on, never a log flood."""
STALE = "stale or missing snapshot (older than maxage)"


class Queue:
    FREEZE_ACCEPT = 3

    def __init__(
        self,
        cfg: QueueConfig,
        env: Env,
        wms_source: WMSStatusPlugin,
        batch_source: BatchStatusPlugin,
        history_size: int = 5,
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
        caps = [
            c
            for spec in cfg.sched
            if (c := cast(type[SchedPlugin], spec.cls).cap(spec.params)) is not None
        ]
        self._maximum: int | None = min(caps) if caps else None
        for plugin in self.sched:
            if plugin.NEEDS_HISTORY:
                batch_source.want_history(cfg.name, plugin.history_window())
        self.memory = PlannerMemory()
        self.next_run = 0.0
        self._followup = False
        """The last tick retired idle VMs: the next runs after ``reap_followup``, to reap them."""
        self._open: CycleTrace | None = None  # the cycle between decide() and act()
        p = cfg.planner
        self.breaker = CircuitBreaker(
            ratio=p.shrink_freeze_ratio,
            accept_after=self.FREEZE_ACCEPT,
            vms=self.worker_kind is WorkerKind.VM,
        )
        self.backoff = Backoff(
            initial=p.backoff_initial, maximum=p.backoff_max, failure_limit=p.failure_limit
        )
        self.records = CycleRecords(history_size)
        self._status_cache: str | None = None
        self.state_text: str | None = None
        """This queue's entry of the state file, encoded once per run (statefile.py)."""
        self.counters: dict[str, int] = dict.fromkeys(
            ("cycles", "submitted", "unretired", "cancelled", "retired", "reaped", "killed",
             "errors", "failclosed", "skipped", "vacated"), 0,
        )  # fmt: skip
        self.executor = self._executor()

    @property
    def history(self) -> list[dict[str, Any]]:
        """The kept records, decoded."""
        return self.records.decoded()

    def status_json(self, last: int) -> str:
        """This queue's entry of the status file, encoded once per cycle of the queue (the
        factory writes the file every tick; most queues did not run in most ticks)."""
        if self._status_cache is None:
            head = json.dumps(
                {
                    "counters": self.counters,
                    "next_run": self.next_run,
                    "backoff_until": self.backoff.until,
                    "backoff_reason": self.backoff.reason or None,
                }
            )
            records = self.records.encoded(last)
            self._status_cache = f'{head[:-1]}, "history": [{records}]}}'
        return self._status_cache

    def _executor(self) -> Executor:
        return Executor(self.name, self.submitter, self.worker_kind, self.backoff, self.counters)

    def carry_over(self, old: Queue, now: float | None = None) -> list[str]:
        """Keep what this queue remembered before a reload and still applies; return what was
        started afresh, and why (a queue in back-off must not resubmit because of a SIGHUP).

        Counters, history and the planner's memory (confirmation counts by worker id) always
        carry over: the queue's workers are the same ones. The breaker's reference counts the
        workers its status and submit sections see, so it is kept only while both are the same.
        The back-off is about the submit target: kept, with the new delays and failure limit,
        while the submit section is the same, since failures of the old target say nothing
        about a new one. A shorter interval takes effect at once."""
        self.memory = old.memory
        self.counters = old.counters
        self.records = old.records
        self.next_run = old.next_run if now is None else min(old.next_run, now + self.cfg.sleep)
        fresh: list[str] = []
        same_submit = old.cfg.batchsubmit == self.cfg.batchsubmit
        if same_submit and old.cfg.batchstatus == self.cfg.batchstatus:
            self.breaker = old.breaker
            self.breaker.ratio = self.cfg.planner.shrink_freeze_ratio
        else:
            fresh.append("circuit breaker reference (its batch status or submit section changed)")
        if same_submit:
            kept, new = old.backoff, self.backoff
            kept.initial, kept.maximum = new.initial, new.maximum
            if kept.failure_limit != new.failure_limit:
                kept.failure_limit = new.failure_limit
                kept.endings = deque(kept.endings, maxlen=max(1, new.failure_limit))
            self.backoff = kept
            self.submitter.restore_state(old.submitter.saved_state() or {})
        elif old.backoff.until > (now or 0.0) or old.backoff.endings:
            fresh.append("submit back-off and failure window (its submit section changed)")
        self.executor = self._executor()
        return fresh

    def schedule(self, start: float, end: float) -> int:
        """Set the next run after a tick that began at ``start`` and ended at ``end``; return
        the ticks skipped. A tick longer than this queue's interval skips the runs that fell
        inside it rather than running them back to back (they would only stack up behind a
        slow schedd), and says so."""
        interval = self.cfg.sleep
        nxt = start + interval
        followup, self._followup = self._followup, False
        skipped = 0
        if interval > 0 and nxt <= end:
            skipped = int((end - start) // interval)
            nxt = start + (skipped + 1) * interval
            self.counters["skipped"] += skipped
            log.warning(
                "queue %s: the cycle took %.1fs, longer than its %gs interval; skipped %d "
                "tick(s), next in %.1fs",
                self.name,
                end - start,
                interval,
                skipped,
                nxt - end,
            )
        if followup and 0 < self.cfg.planner.reap_followup < nxt - end:
            nxt = end + self.cfg.planner.reap_followup
        self.next_run = nxt
        self._status_cache = None
        self.state_text = None
        return skipped

    # ------------------------------------------------------------------ one cycle

    def cycle(
        self,
        wms_error: str | None,
        batch_error: str | None,
        totals: FactoryTotals | None,
        dry_run: bool = False,
    ) -> CycleTrace:
        """Both halves for this queue alone, re-reading its own candidates."""
        trace = self.decide(wms_error, batch_error, totals, dry_run)
        current: Mapping[str, Worker] | None = {}
        recheck_error = None
        if candidates := self.candidates(trace):
            try:
                current = self.batch_source.recheck(candidates)
            except Exception as exc:
                current, recheck_error = None, str(exc)
        return self.act(trace, current, recheck_error)

    def decide(
        self,
        wms_error: str | None,
        batch_error: str | None,
        totals: FactoryTotals | None,
        dry_run: bool = False,
    ) -> CycleTrace:
        """The first half: snapshot -> chain -> planner, nothing done to the world yet."""
        started = self.env.clock.monotonic()
        now = self.env.clock.now()
        trace = CycleTrace(queue=self.name, time=now, dry_run=dry_run)
        if self._open is not None:  # a cycle that overran: never two planners on one snapshot
            trace.error = "previous cycle still running; skipped"
            return trace
        self._open = trace
        tag = CURRENT_QUEUE.set(self.name)
        try:
            self._decide(trace, now, wms_error, batch_error, totals)
        except Exception as exc:  # one queue's failure never stops the factory
            self._failed(trace, exc)
        finally:
            CURRENT_QUEUE.reset(tag)
        trace.seconds = self.env.clock.monotonic() - started
        return trace

    def candidates(self, trace: CycleTrace) -> list[Worker]:
        """Workers this cycle would cancel, retire or reap: to re-read before acting."""
        if trace.error or trace.dry_run or trace is not self._open:
            return []
        return recheck_candidates(trace.planned)

    def act(
        self,
        trace: CycleTrace,
        current: Mapping[str, Worker] | None,
        recheck_error: str | None = None,
    ) -> CycleTrace:
        """The second half: apply the plan against the re-read ``current`` (None: the re-read
        failed, so only submit and un-retire happen), then record the cycle."""
        tag = CURRENT_QUEUE.set(self.name)
        try:
            if trace is not self._open:  # the skipped overrun of decide(): still one line
                self._log(trace)
                return trace
            started = self.env.clock.monotonic()
            try:
                if not trace.error and not trace.dry_run:
                    if recheck_error is not None:
                        trace.notes.append(
                            f"re-check failed, no retire/reap this cycle: {bounded(recheck_error)}"
                        )
                    retired = self.counters["retired"]
                    self.executor.execute(trace, trace.time, current)
                    self._followup = self.worker_kind is WorkerKind.VM and (
                        self.counters["retired"] > retired
                        and any(
                            w.state is WorkerState.IDLE
                            for a in trace.planned
                            if a.kind is ActionKind.RETIRE
                            for w in a.workers
                        )
                    )
                    self.executor.maintain(trace, trace.time)
            except Exception as exc:
                self._failed(trace, exc)
            finally:
                self._open = None
                self.counters["cycles"] += 1
                self.records.add(trace)
                self._status_cache = None
            self._log(trace)
            trace.seconds += self.env.clock.monotonic() - started
            return trace
        finally:
            CURRENT_QUEUE.reset(tag)

    def _failed(self, trace: CycleTrace, exc: Exception) -> None:
        trace.error = f"{type(exc).__name__}: {bounded(str(exc))}"
        self.counters["errors"] += 1
        log.exception("queue %s: cycle failed", self.name)

    def _status(
        self, trace: CycleTrace, wms_error: str | None, batch_error: str | None
    ) -> BatchQueueInfo | None:
        """This queue's slice of both snapshots, recorded in the trace; None: fail closed."""
        cfg = self.cfg
        wms = (
            None
            if wms_error
            else self.wms_source.info_for(cfg.name, cfg.wmsqueue, cfg.wmsstatus.params)
        )
        batch = None if batch_error else self.batch_source.info(cfg.name)
        trace.wms, trace.batch = wms, batch
        trace.wms_error = wms_error or (STALE if wms is None else None)
        trace.batch_error = batch_error or (STALE if batch is None else None)
        if batch is None:
            # Without our own workers we can decide nothing safely.
            trace.notes.append(f"fail closed: batch status unavailable: {trace.batch_error}")
            self.counters["failclosed"] += 1
        elif batch.unmatched_startds:
            trace.notes.append(
                f"{len(batch.unmatched_startds)} startd(s) match no worker: "
                + ", ".join(batch.unmatched_startds[:5])
            )
        return batch

    def _decide(
        self,
        trace: CycleTrace,
        now: float,
        wms_error: str | None,
        batch_error: str | None,
        totals: FactoryTotals | None,
    ) -> None:
        cfg = self.cfg
        batch = self._status(trace, wms_error, batch_error)
        if batch is None:
            return
        wms = trace.wms
        if wms is None:
            trace.notes.append(f"fail closed: wms status unavailable: {trace.wms_error}; n=0")
            self.counters["failclosed"] += 1
        else:
            ctx = SchedContext(queue=cfg.name, now=now, wms=wms, batch=batch, factory=totals)
            try:
                trace.chain = run_chain(self.sched, ctx)
            except ChainError as exc:
                trace.error = bounded(str(exc))
                self.counters["errors"] += 1
                log.error("queue %s: %s", self.name, exc)
                return
            trace.n = trace.chain.n
        result = plan(
            PlanInput(
                n=trace.n,
                workers=batch.workers,
                now=now,
                settings=cfg.planner,
                worker_kind=self.worker_kind,
                freeze=self.breaker.check(batch, self.name),
                submit_blocked=self.backoff.blocked(now, batch.workers, self.name),
                fingerprint=self._fingerprint(),
                maximum=self._maximum,
            ),
            self.memory,
        )
        self.memory = result.memory
        trace.planned = list(result.actions)
        trace.held_back = list(result.held_back)
        trace.notes.extend(result.notes)
        if trace.dry_run:
            trace.notes.append("dry run: nothing done")

    def _fingerprint(self) -> str | None:
        """The queue's current VM fingerprint; one that cannot be made (a template file gone)
        judges nothing drifted this cycle (the submit says why)."""
        if self.worker_kind is not WorkerKind.VM:
            return None
        try:
            return self.submitter.fingerprint()
        except Exception as exc:
            log.debug("queue %s: no fingerprint: %s", self.name, exc)
            return None

    def _log(self, trace: CycleTrace) -> None:
        """The queue's one INFO line of the cycle (everything else a cycle says is DEBUG, or a
        warning or error): what it saw, decided and did; its structured form rides in
        ``extra`` for the JSON log format and the per-queue log file."""
        if not log.isEnabledFor(logging.INFO):
            return
        chain = trace.chain.summary() if trace.chain else "-"
        cycle = "" if trace.cycle is None else f" cycle={trace.cycle}"
        log.info(
            "queue %s:%s n=%d chain=[%s] actions=[%s]%s%s",
            self.name,
            cycle,
            trace.n,
            chain,
            trace.decision(),
            (" done=[" + "; ".join(trace.results) + "]") if trace.results else "",
            (" notes=[" + "; ".join(trace.notes) + "]") if trace.notes else "",
            extra={"queue": self.name, "trace": trace.log_fields()},
        )
