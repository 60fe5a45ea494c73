"""One cycle's trace: what a queue saw and decided (DESIGN principle 6, "explain every decision").

Its own module because the log, ``status``, the status file and the metrics all read it, and none
of them should need the queue that wrote it.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.chain import ChainResult
from pilotfactory.factory.info import BatchQueueInfo, WMSQueueInfo
from pilotfactory.factory.planner import Action, summarize


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

    @property
    def failed(self) -> bool:
        """The cycle did not do its job: an error, or a status source it needed was unavailable
        (it failed closed). ``run --once`` and ``status`` exit 3 on it."""
        return bool(self.error or self.wms_error or self.batch_error)

    def decision(self) -> str:
        if self.error:
            return f"error: {self.error}"
        return summarize(self.planned)

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
