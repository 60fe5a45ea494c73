"""Prometheus metrics from the cycle traces: what each queue saw, decided and did.

A private registry per factory keeps tests and several factories in one process apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.trace import CycleTrace

WMS_KEYS = ("ready", "notready", "running", "done", "failed", "unknown")


class FactoryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
            ["kind", "plugin"],
            registry=r,
        )
        self._by_queue: dict[str, tuple[dict[str, Gauge], dict[str, Gauge], Gauge]] = {}

    def _children(self, q: str) -> tuple[dict[str, Gauge], dict[str, Gauge], Gauge]:
        """A queue's labelled gauges, looked up once (``labels()`` costs more than ``set``)."""
        hit = self._by_queue.get(q)
        if hit is None:
            hit = (
                {s.value: self.workers.labels(q, s.value) for s in WorkerState},
                {k: self.wms.labels(q, k) for k in WMS_KEYS},
                self.decision.labels(q),
            )
            self._by_queue[q] = hit
        return hit

    def observe(self, traces: Iterable[CycleTrace]) -> None:
        for t in traces:
            q = t.queue
            workers, wms, decision = self._children(q)
            if t.batch is not None:
                for state, count in t.batch.by_state().items():
                    workers[state].set(count)
            else:
                self.failclosed.labels(q, "batch").inc()
            if t.wms is not None:
                for key, gauge in wms.items():
                    gauge.set(getattr(t.wms, key))
            elif t.batch is not None:
                self.failclosed.labels(q, "wms").inc()
            decision.set(t.n)
            if t.error or any(" failed:" in r for r in t.results):
                self.errors.labels(q).inc()
            if not t.dry_run:
                for a in t.planned:
                    self.actions.labels(q, a.kind.value).inc(a.size())

    def source_failed(self, kind: str, plugin: str) -> None:
        self.source_failures.labels(kind, plugin).inc()

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
