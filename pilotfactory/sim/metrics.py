"""What the simulated world measures: cost (VM-hours), work done and lost, and port traffic.

The simulator exists to compare factory policies, so every number a policy is judged by is
counted here, by the world itself, not by the factory: VM-hours per queue, payloads completed
and killed, how long payloads waited, and how many calls each port received (design rule 5:
one query per source per cycle).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    """The world's state at one tick, for plots and tables."""

    t: float
    jobs_idle: int
    jobs_running: int
    jobs_held: int
    pilots_idle: int
    pilots_running: int
    vm_jobs_idle: int
    vm_jobs_running: int
    vm_jobs_held: int
    instances_pending: int
    instances_running: int
    startds: int
    cpus_total: int
    cpus_busy: int
    panda_activated: int
    panda_running: int
    completed: int
    killed: int
    vm_hours: float
    instances_by_queue: dict[str, int] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values): simple and exact for small samples."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


class SimMetrics:
    """Counters and time series filled in by the pool, the cloud and PanDA."""

    def __init__(self) -> None:
        self.queries: Counter[str] = Counter()
        """Port calls by kind (``query_jobs``, ``submit``, ``cloud_list``, ...), failed ones too."""
        self.failures: Counter[str] = Counter()
        """Port calls that raised because of an injected failure."""
        self.instances_launched: Counter[str] = Counter()
        self.instances_terminated: Counter[str] = Counter()
        self.payload_completed: Counter[str] = Counter()
        """By label: ``MATCH_APF_QUEUE`` of a pool payload job, or the PanDA site."""
        self.payload_killed: Counter[str] = Counter()
        self.waits: dict[str, list[float]] = {}
        self.pilots_started = 0
        self.pilots_without_payload = 0
        self.snapshots: list[Snapshot] = []
        self._vm_open: dict[str, tuple[str, float]] = {}
        self._vm_closed: dict[str, float] = {}
        self.first_starts: list[tuple[float, float]] = []
        """(queued at, started at) of every payload's first start: waits and latencies."""
        self.launch_times: list[float] = []
        """When the cloud was asked for capacity (one entry per launch call)."""
        self.last_completion: float | None = None
        self.never_joined = 0
        """VMs whose startd never joined (the ``never_join_fraction`` of the cloud)."""
        self.interrupted = 0
        """VMs the provider ended unasked (spot interruptions)."""
        self.self_shutdowns = 0
        """VMs that powered themselves off once their startd exited (the worker contract)."""
        self.payload_interrupted: Counter[str] = Counter()
        """Payloads killed by an interruption, apart from ``payload_killed`` (the factory's)."""
        self.interrupting = False
        self._busy_open: dict[str, float] = {}
        self._busy_seconds = 0.0

    # ------------------------------------------------------------------ recording

    def count(self, kind: str) -> None:
        self.queries[kind] += 1

    def failed(self, kind: str) -> None:
        self.failures[kind] += 1

    def vm_start(self, instance_id: str, queue: str, t: float) -> None:
        self._vm_open[instance_id] = (queue, t)
        self.instances_launched[queue] += 1

    def vm_stop(self, instance_id: str, t: float) -> None:
        opened = self._vm_open.pop(instance_id, None)
        self.vm_busy(instance_id, t, False)
        if opened is not None:
            queue, start = opened
            self._vm_closed[queue] = self._vm_closed.get(queue, 0.0) + max(0.0, t - start)
            self.instances_terminated[queue] += 1

    def vm_busy(self, instance_id: str, t: float, busy: bool) -> None:
        """A VM began (``busy``) or stopped running any payload: idle VM-hours are the rest."""
        if busy:
            self._busy_open.setdefault(instance_id, t)
        else:
            began = self._busy_open.pop(instance_id, None)
            if began is not None:
                self._busy_seconds += max(0.0, t - began)

    def busy_vm_hours(self, now: float) -> float:
        """Hours VMs spent running at least one payload (VMs still busy counted up to now)."""
        open_s = sum(max(0.0, now - t) for t in self._busy_open.values())
        return (self._busy_seconds + open_s) / 3600.0

    def launched(self, t: float) -> None:
        self.launch_times.append(t)

    def completed(self, label: str, t: float | None = None) -> None:
        self.payload_completed[label] += 1
        if t is not None:
            self.last_completion = (
                t if self.last_completion is None else max(t, self.last_completion)
            )

    def started(self, label: str, wait: float, t: float | None = None) -> None:
        """A payload started for the first time, ``wait`` seconds after it was queued."""
        self.waits.setdefault(label, []).append(max(0.0, wait))
        if t is not None:
            self.first_starts.append((t - max(0.0, wait), t))

    def killed(self, label: str) -> None:
        if self.interrupting:
            self.payload_interrupted[label] += 1
        else:
            self.payload_killed[label] += 1

    # ------------------------------------------------------------------ reading

    def vm_hours(self, now: float) -> dict[str, float]:
        """VM-hours per queue label, counting running instances up to ``now``."""
        seconds = dict(self._vm_closed)
        for queue, start in self._vm_open.values():
            seconds[queue] = seconds.get(queue, 0.0) + max(0.0, now - start)
        return {queue: s / 3600.0 for queue, s in sorted(seconds.items())}

    def wait_stats(self, label: str | None = None) -> dict[str, float]:
        """Mean and p95 payload wait (seconds), for one label or all of them."""
        if label is None:
            values = [w for ws in self.waits.values() for w in ws]
        else:
            values = list(self.waits.get(label, ()))
        mean = sum(values) / len(values) if values else 0.0
        return {"count": float(len(values)), "mean": mean, "p95": percentile(values, 95)}

    def summary(self, now: float) -> dict[str, Any]:
        """One flat dict for tables and reports."""
        hours = self.vm_hours(now)
        waits = self.wait_stats()
        return {
            "vm_hours": round(sum(hours.values()), 3),
            "vm_hours_by_queue": {q: round(h, 3) for q, h in hours.items()},
            "instances_launched": sum(self.instances_launched.values()),
            "instances_terminated": sum(self.instances_terminated.values()),
            "payload_completed": sum(self.payload_completed.values()),
            "payload_killed": sum(self.payload_killed.values()),
            "wait_mean": round(waits["mean"], 1),
            "wait_p95": round(waits["p95"], 1),
            "pilots_started": self.pilots_started,
            "pilots_without_payload": self.pilots_without_payload,
            "queries": dict(sorted(self.queries.items())),
            "failures": dict(sorted(self.failures.items())),
        }
