"""One cycle's trace: what a queue saw and decided (DESIGN principle 6, "explain every decision").

Its own module because the log, ``status``, the status file and the metrics all read it, and none
of them should need the queue that wrote it.
"""

from __future__ import annotations

import json
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.chain import ChainResult
from pilotfactory.factory.info import BatchQueueInfo, WMSQueueInfo, Worker, WorkerState
from pilotfactory.factory.planner import Action, ActionKind, HeldBack, summarize

CURRENT_QUEUE: ContextVar[str | None] = ContextVar("pilotfactory_queue", default=None)
"""The queue whose cycle the running code belongs to (set by ``Queue`` around ``decide`` and
``act``): the log handlers tag a record with it, so a plugin's or backend's line lands in that
queue's log file without every log call naming the queue. Shared work (refreshes, re-checks,
lane threads) runs outside any queue and is untagged."""
LOG_IDS = 100
"""Worker ids the cycle log line lists per action (its count says how many there were)."""


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
    held_back: list[HeldBack] = field(default_factory=list)
    seconds: float = 0.0
    """Time spent in ``decide`` and ``act`` (``Clock.monotonic``): the per-queue histogram."""
    cycle: int | None = None
    """The factory's cycle number (``Factory.cycles_run`` + 1 while it runs); None when the
    queue ran on its own."""
    submitted: list[str] = field(default_factory=list)
    """Ids the submit plugin returned this cycle (planned submits carry only a count)."""

    @property
    def failed(self) -> bool:
        """The cycle did not do its job: an error, or a status source it needed was unavailable
        (it failed closed). ``run --once`` and ``status`` exit 3 on it."""
        return bool(self.error or self.wms_error or self.batch_error)

    def why_nothing_bought(self) -> str | None:
        """One line: why this cycle bought no worker (None when it bought or un-retired one).

        With n <= 0 the answer is the chain step that took n there; with n > 0 it is what
        held the submit back (back-off, failure stop, max_booting)."""
        if any(a.kind in (ActionKind.SUBMIT, ActionKind.UNRETIRE) for a in self.planned):
            return None
        if self.error:
            return f"the cycle failed: {self.error}"
        if self.batch is None:
            return f"fail closed: batch status unavailable: {self.batch_error}"
        if self.wms is None:
            return f"fail closed: wms status unavailable: {self.wms_error}"
        for held in self.held_back:
            if held.what == "buy":
                return held.reason
        if self.n > 0:
            return "dry run" if self.dry_run else None
        steps = self.chain.steps if self.chain is not None else ()
        if not steps:
            return f"n={self.n}: no scheduler plugin"
        decisive = steps[0]
        for step in steps:
            if step.n_out <= 0 < step.n_in:
                decisive = step
        reason = decisive.reason
        if not reason.startswith(decisive.plugin):
            reason = f"{decisive.plugin}: {reason}"
        return f"n={self.n}: {reason}"

    def why_not(self, max_ids: int | None = None) -> dict[str, Any]:
        """Plain data: why nothing was bought and what was held back from retire (and why),
        with at most ``max_ids`` worker ids a reason."""
        return {
            "buy": self.why_nothing_bought(),
            "held": [
                {
                    "what": h.what,
                    "reason": h.reason,
                    "count": h.count,
                    "workers": list(h.workers[:max_ids]),
                }
                for h in self.held_back
            ],
        }

    def decision(self) -> str:
        if self.error:
            return f"error: {self.error}"
        return summarize(self.planned)

    def log_fields(self) -> dict[str, Any]:
        """The cycle log line's structured part (``extra={"trace": ...}``; the JSON log format
        writes its keys beside ``message``): the chain step by step, each action with the ids
        known (planned workers; for a submit, the ids it returned), what was done, the notes
        and every error, so one line per queue per cycle explains the cycle."""
        actions = []
        for a in self.planned:
            ids = self.submitted if a.kind is ActionKind.SUBMIT else [w.id for w in a.workers]
            actions.append(
                {
                    "kind": a.kind.value,
                    "count": a.size(),
                    "mode": None if a.mode is None else a.mode.value,
                    "ids": ids[:LOG_IDS],
                    "reason": a.reason,
                }
            )
        errors = {"error": self.error, "wms": self.wms_error, "batch": self.batch_error}
        return {
            "cycle": self.cycle,
            "n": self.n,
            "chain": None
            if self.chain is None
            else [
                {"plugin": s.plugin, "in": s.n_in, "out": s.n_out, "reason": s.reason}
                for s in self.chain.steps
            ],
            "actions": actions,
            "results": list(self.results),
            "notes": list(self.notes),
            "errors": {k: v for k, v in errors.items() if v},
            "dry_run": self.dry_run,
        }

    def to_dict(self, max_ids: int | None = None) -> dict[str, Any]:
        """Plain data (JSON-ready); ``max_ids`` bounds each action's worker id list (the
        ``count`` keeps the size), so a kept record never holds a whole snapshot."""
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
                    "workers": [w.id for w in a.workers[:max_ids]],
                    "reason": a.reason,
                }
                for a in self.planned
            ],
            "results": self.results,
            "notes": self.notes,
            "error": self.error,
            "dry_run": self.dry_run,
            "why_not": self.why_not(max_ids),
        }


JOINED_STATES = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.RETIRING)
"""Workers with a startd in the pool: a VM's instance merged with its startd."""


def workers_view(trace: CycleTrace, limit: int = 50) -> dict[str, Any]:
    """A queue's workers as ``status --workers`` shows them: joined ones (instance or grid job
    merged with its startd) apart from those that have not joined (requested, booting, held,
    lost...), each with why the plan held it back, and startds that match no worker; at most
    ``limit`` rows a group (the totals say how many there are)."""
    batch = trace.batch
    if batch is None:
        return {"joined": [], "unjoined": [], "unmatched_startds": [], "totals": {}}
    why: dict[str, str] = {}
    for held in trace.held_back:
        for wid in held.workers:
            why.setdefault(wid, f"{held.what} held back: {held.reason}")
    acting: dict[str, str] = {}
    for action in trace.planned:
        what = action.kind.value + (f" ({action.mode})" if action.mode else "")
        why_word = action.reason.split(":", 1)[0]
        if why_word in ("lifetime", "drift", "spot interruption"):
            what += f": {why_word}"  # the contract's reasons, said on the worker's row
        for w in action.workers:
            acting[w.id] = what

    def row(w: Worker) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": w.id,
            "state": w.state.value,
            "since": w.since,
            "instance": w.instance_id,
        }
        if w.launched_as:
            out["launched_as"] = w.launched_as
        if w.state in JOINED_STATES:
            out["startd"] = w.machine or w.remote_host
            out["slots"] = f"{w.slots_busy}/{w.slots_total}" if w.slots_total else None
            out["protected"] = w.keep
        else:
            out["why"] = w.hold_reason
        if w.state is WorkerState.INTERRUPTED:
            out["startd"] = w.machine
            when = f" at {w.interruption:.0f}" if w.interruption else ""
            done = ", vacated" if w.vacated else ""
            out["why"] = f"spot interruption: the provider ends it{when}{done}"
        if w.retire_requested_at is not None:
            out["retire_requested_at"] = w.retire_requested_at
        out["this_cycle"] = acting.get(w.id) or why.get(w.id)
        return out

    joined = batch.workers.in_states(*JOINED_STATES)
    others = tuple(s for s in WorkerState if s not in JOINED_STATES and s is not WorkerState.DONE)
    unjoined = batch.workers.in_states(*others)
    return {
        "joined": [row(w) for w in joined[:limit]],
        "unjoined": [row(w) for w in unjoined[:limit]],
        "unmatched_startds": list(batch.unmatched_startds[:limit]),
        "totals": {
            "joined": len(joined),
            "unjoined": len(unjoined),
            "unmatched_startds": len(batch.unmatched_startds),
        },
    }


BRIEF = ("queue", "time", "n", "actions", "results", "notes", "error", "dry_run")
"""What an older record keeps in the status file (what ``status --daemon`` prints)."""
RECORD_IDS = 20
"""Worker ids a kept record lists per action (its count says how many there were)."""


class CycleRecords:
    """A queue's last cycles as records (decisions and counts, never whole snapshots), kept
    encoded, in full and brief: the status file carries the newest in full and the older ones
    brief, each as is, and a string is the smallest form a thousand queues' records take."""

    def __init__(self, size: int) -> None:
        self._kept: deque[tuple[str, str]] = deque(maxlen=size)

    def add(self, trace: CycleTrace) -> None:
        record = trace.to_dict(max_ids=RECORD_IDS)
        brief = {k: record[k] for k in BRIEF}
        brief["actions"] = [
            {k: v for k, v in a.items() if k != "workers"} for a in record["actions"]
        ]
        self._kept.append((json.dumps(record), json.dumps(brief)))

    def decoded(self) -> list[dict[str, Any]]:
        """The kept records, whole."""
        return [json.loads(full) for full, _ in self._kept]

    def encoded(self, last: int) -> str:
        """The last ``last`` records as a JSON array's items: the older brief, the newest whole."""
        kept = list(self._kept)[-last:]
        return ", ".join([brief for _, brief in kept[:-1]] + [full for full, _ in kept[-1:]])
