"""Prometheus metrics: what each queue saw, decided and did (from the cycle traces), how long
cycles take, and how old each status source's snapshot is.

A private registry per factory keeps tests and several factories in one process apart. The
metric list, with labels, is in the README ("Metrics").
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.text import printable
from pilotfactory.factory.trace import CycleTrace

WMS_KEYS = ("ready", "notready", "running", "done", "failed", "unknown")

CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""10 ms (a small factory) to 5 min (past any sane tick: a cycle that long is the news)."""
QUEUE_BUCKETS = (0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 300.0)
"""The same span, coarser (x5 steps): each of a thousand queues exports every bucket."""
LABEL_MAX = 200
"""Characters of a source label (a schedd name, a URL) kept: a series name stays bounded."""

SourceLabels = tuple[str, str, str]
"""One status source's ``(kind, plugin, source)``: ``wmsstatus`` / ``batchstatus``, the plugin's
name, and ``StatusSource.source_label()`` (a schedd, a redacted URL)."""
SnapshotTimes = Callable[[], Iterable[tuple[SourceLabels, float | None]]]
"""Each status source tried so far, and when its newest snapshot was read (None: never)."""


class _SnapshotAges:
    """``pilotfactory_status_snapshot_age_seconds``, computed when scraped (so it is right
    between cycles too, and keeps growing while a source fails). A source tried but never read
    successfully is +Inf: older than any alert threshold, where NaN would compare false and an
    absent series would hide it. A source not tried yet (before its first cycle) is absent."""

    NAME = "pilotfactory_status_snapshot_age_seconds"
    HELP = "Seconds since each status source's newest snapshot was read (+Inf: never)"

    def __init__(self, now: Callable[[], float], snapshots: SnapshotTimes) -> None:
        self._now = now
        self._snapshots = snapshots

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.NAME, self.HELP, labels=("kind", "plugin", "source"))

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        now = self._now()
        for labels, taken in self._snapshots():
            family.add_metric(labels, math.inf if taken is None else max(0.0, now - taken))
        return [family]


class _QueueSeconds:
    """``pilotfactory_queue_cycle_seconds{queue}``: one histogram per queue, kept as plain
    counts. prometheus-client's ``Histogram`` takes a lock for its sum and for a bucket on
    every observation and exports a ``_created`` series per queue: at a thousand queues that
    made ``observe`` a quarter slower and a scrape twice as long. One lock is held per cycle
    (and per scrape, to copy), so a scrape never sees a cycle half counted."""

    NAME = "pilotfactory_queue_cycle_seconds"
    HELP = "Duration of one queue's decide and act in a cycle"

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self._les = [repr(float(b)) for b in buckets] + ["+Inf"]  # as the client writes le
        self.lock = threading.Lock()
        self.rows: dict[str, list[float]] = {}
        """Per queue: the count in each bucket (not cumulative; +Inf last), then the sum."""

    def row(self, queue: str) -> list[float]:
        return self.rows.setdefault(queue, [0.0] * (len(self.bounds) + 2))

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.NAME, self.HELP, labels=("queue",))

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        with self.lock:
            rows = [(q, list(r)) for q, r in self.rows.items()]
        family = self._family()
        les = self._les
        for queue, row in rows:
            total = 0.0
            buckets = []
            for le, n in zip(les, row, strict=False):
                total += n
                buckets.append((le, total))
            family.add_metric((queue,), buckets, row[-1])
        return [family]


class FactoryMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        now: Callable[[], float] = time.time,
        snapshots: SnapshotTimes = lambda: (),
    ) -> None:
        """``now`` is the factory clock's; ``snapshots`` is read at each scrape, on the HTTP
        server's thread."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.workers = Gauge(
            "pilotfactory_workers", "Workers per queue and state", ["queue", "state"], registry=r
        )
        self.wms = Gauge(
            "pilotfactory_wms_jobs", "Work per queue and WMS state", ["queue", "state"], registry=r
        )
        self.decision = Gauge("pilotfactory_decision_n", "Chain output n", ["queue"], registry=r)
        self.actions = Counter(
            "pilotfactory_planned_actions",
            "Workers the planner chose per action (before the re-check)",
            ["queue", "action"],
            registry=r,
        )
        self.failclosed = Counter(
            "pilotfactory_failclosed_cycles",
            "Cycles that acted on nothing because a status source failed or was stale",
            ["queue", "source"],
            registry=r,
        )
        self.errors = Counter(
            "pilotfactory_queue_errors", "Cycles or actions that failed", ["queue"], registry=r
        )
        self.source_failures = Counter(
            "pilotfactory_source_failures",
            "Status source refreshes that failed",
            ["kind", "plugin", "source"],
            registry=r,
        )
        self.cycle_seconds = Histogram(
            "pilotfactory_cycle_seconds",
            "Duration of factory cycles that ran queues (refresh, decide, act, status file)",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.queue_seconds = _QueueSeconds(QUEUE_BUCKETS)
        r.register(self.queue_seconds)
        r.register(_SnapshotAges(now, snapshots))
        self._by_queue: dict[
            str, tuple[dict[str, Gauge], dict[str, Gauge], Gauge, list[float]]
        ] = {}
        self._last: dict[str, dict[str, int]] = {}
        """What each queue's worker gauges were last set to."""
        self._labels: dict[Hashable, SourceLabels] = {}
        self._labels_taken: set[SourceLabels] = set()
        self._server: Any = None

    def _children(self, q: str) -> tuple[dict[str, Gauge], dict[str, Gauge], Gauge, list[float]]:
        """A queue's labelled series, looked up once (``labels()`` costs more than ``set``)."""
        hit = self._by_queue.get(q)
        if hit is None:
            hit = (
                {s.value: self.workers.labels(q, s.value) for s in WorkerState},
                {k: self.wms.labels(q, k) for k in WMS_KEYS},
                self.decision.labels(q),
                self.queue_seconds.row(q),
            )
            self._by_queue[q] = hit
        return hit

    def observe(self, traces: Iterable[CycleTrace]) -> None:
        with self.queue_seconds.lock:
            self._observe(traces, self.queue_seconds.bounds)

    def _observe(self, traces: Iterable[CycleTrace], bounds: tuple[float, ...]) -> None:
        for t in traces:
            q = t.queue
            workers, wms, decision, seconds = self._children(q)
            if t.batch is not None:
                last = self._last.setdefault(q, {})
                for state, count in t.batch.by_state().items():
                    if last.get(state) != count:  # a gauge's set takes a lock: only changes
                        workers[state].set(count)
                        last[state] = count
            else:
                self.failclosed.labels(q, "batch").inc()
            if t.wms is not None:
                for key, gauge in wms.items():
                    gauge.set(getattr(t.wms, key))
            elif t.batch is not None:
                self.failclosed.labels(q, "wms").inc()
            decision.set(t.n)
            seconds[bisect_left(bounds, t.seconds)] += 1  # le is inclusive: v <= bound
            seconds[-1] += t.seconds
            if t.error or any(" failed:" in r for r in t.results):
                self.errors.labels(q).inc()
            if not t.dry_run:
                for a in t.planned:
                    self.actions.labels(q, a.kind.value).inc(a.size())

    def cycle_took(self, seconds: float) -> None:
        self.cycle_seconds.observe(seconds)

    def source_labels(self, key: Hashable, kind: str, plugin: str, label: str) -> SourceLabels:
        """The labels of the status source with this ``key`` (its sharing key): fixed at its
        first use for the process's life, so a reload keeps its series; a second key with the
        same words gets `` #2``, so two sources never write one series. Its failure counter
        is exported from here on (at 0), so ``rate()`` sees the first failure."""
        hit = self._labels.get(key)
        if hit is None:
            text = printable(label, LABEL_MAX)
            hit = (kind, plugin, text)
            n = 1
            while hit in self._labels_taken:
                n += 1
                hit = (kind, plugin, f"{text} #{n}")
            self._labels_taken.add(hit)
            self._labels[key] = hit
            self.source_failures.labels(*hit)
        return hit

    def source_failed(self, labels: SourceLabels) -> None:
        self.source_failures.labels(*labels).inc()

    def serve(self, port: int, addr: str = "127.0.0.1") -> tuple[str, int]:
        """Serve the registry over HTTP on a daemon thread; the address and port it is bound
        to (port 0 picks a free one). Raises ``OSError`` when it cannot bind (a busy port, an
        address this host does not have, a name that does not resolve)."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        host, bound = server.server_address[:2]
        return str(host), int(bound)

    def close(self) -> None:
        """Stop serving (tests; the daemon serves until it exits)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
