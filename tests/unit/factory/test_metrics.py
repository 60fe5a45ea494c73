"""Prometheus metrics from cycle traces, each test on its own CollectorRegistry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pilotfactory.factory.info import (
    BatchQueueInfo,
    RetireMode,
    WMSQueueInfo,
    Worker,
    WorkerState,
)
from pilotfactory.factory.metrics import FactoryMetrics
from pilotfactory.factory.planner import Action, ActionKind
from pilotfactory.factory.trace import CycleTrace

S = WorkerState
T0 = 1_700_000_000.0


def w(wid: str, state: WorkerState, queue: str = "A") -> Worker:
    return Worker(wid, queue, state, T0)


def batch(queue: str, *states: WorkerState) -> BatchQueueInfo:
    return BatchQueueInfo(queue, T0, tuple(w(f"{k}.0", s, queue) for k, s in enumerate(states)))


def wms(queue: str, **counts: int) -> WMSQueueInfo:
    return WMSQueueInfo(queue, T0, **counts)


@pytest.fixture
def metrics() -> FactoryMetrics:
    return FactoryMetrics(CollectorRegistry())


def value(m: FactoryMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_uses_the_registry_it_is_given() -> None:
    reg = CollectorRegistry()
    m = FactoryMetrics(reg)
    assert m.registry is reg
    m.observe([CycleTrace("A", T0, n=4)])
    assert reg.get_sample_value("pilotfactory_decision_n", {"queue": "A"}) == 4


def test_each_factory_gets_a_private_registry() -> None:
    one, two = FactoryMetrics(), FactoryMetrics()  # no "duplicated timeseries" error
    assert one.registry is not two.registry
    one.observe([CycleTrace("A", T0, n=3)])
    assert value(one, "pilotfactory_decision_n", queue="A") == 3
    assert value(two, "pilotfactory_decision_n", queue="A") is None


def test_nothing_before_a_cycle(metrics: FactoryMetrics) -> None:
    metrics.observe([])
    text = generate_latest(metrics.registry).decode()
    assert "pilotfactory_decision_n{" not in text
    assert "pilotfactory_workers{" not in text


def test_a_full_cycle(metrics: FactoryMetrics) -> None:
    b = batch("A", S.PENDING, S.PENDING, S.BUSY, S.IDLE, S.HELD, S.RETIRED)
    trace = CycleTrace(
        "A",
        T0,
        wms=wms("A", ready=7, notready=1, running=5, done=9, failed=2, unknown=3),
        batch=b,
        n=-2,
        planned=[
            Action(ActionKind.SUBMIT, count=3),
            Action(ActionKind.CANCEL, b.workers[:2]),
            Action(ActionKind.RETIRE, b.workers[3:4], mode=RetireMode.KILL),
            Action(ActionKind.REAP, b.workers[4:6]),
        ],
        results=["submitted 3", "cancelled 2", "retired 1 (kill)", "reaped 2"],
    )
    metrics.observe([trace])
    workers = {s.value: value(metrics, "pilotfactory_workers", queue="A", state=s.value) for s in S}
    assert workers == {
        "pending": 2,
        "booting": 0,
        "idle": 1,
        "busy": 1,
        "retiring": 0,
        "retired": 1,
        "held": 1,
        "lost": 0,
        "done": 0,
        "unknown": 0,
        "interrupted": 0,
    }
    jobs = {
        k: value(metrics, "pilotfactory_wms_jobs", queue="A", state=k)
        for k in ("ready", "notready", "running", "done", "failed", "unknown")
    }
    assert jobs == {"ready": 7, "notready": 1, "running": 5, "done": 9, "failed": 2, "unknown": 3}
    assert value(metrics, "pilotfactory_decision_n", queue="A") == -2
    planned = {
        k.value: value(metrics, "pilotfactory_planned_actions_total", queue="A", action=k.value)
        for k in ActionKind
    }
    assert planned == {
        "submit": 3,
        "cancel": 2,
        "retire": 1,
        "reap": 2,
        "unretire": None,
        "vacate": None,
    }
    assert value(metrics, "pilotfactory_queue_errors_total", queue="A") is None
    for source in ("batch", "wms"):
        assert value(metrics, "pilotfactory_failclosed_cycles_total", queue="A", source=source) is (
            None
        )


def test_gauges_follow_the_last_cycle_and_counters_add_up(metrics: FactoryMetrics) -> None:
    first = CycleTrace(
        "A",
        T0,
        wms=wms("A", ready=5),
        batch=batch("A", S.PENDING),
        n=4,
        planned=[Action(ActionKind.SUBMIT, count=4)],
    )
    second = CycleTrace(
        "A",
        T0 + 60,
        wms=wms("A", ready=1),
        batch=batch("A", S.BUSY, S.BUSY, S.PENDING),
        n=1,
        planned=[Action(ActionKind.SUBMIT, count=1)],
    )
    metrics.observe([first])
    metrics.observe([second])
    assert value(metrics, "pilotfactory_decision_n", queue="A") == 1
    assert value(metrics, "pilotfactory_wms_jobs", queue="A", state="ready") == 1
    assert value(metrics, "pilotfactory_workers", queue="A", state="busy") == 2
    assert value(metrics, "pilotfactory_workers", queue="A", state="pending") == 1
    assert value(metrics, "pilotfactory_planned_actions_total", queue="A", action="submit") == 5


def test_queues_are_labelled_apart(metrics: FactoryMetrics) -> None:
    metrics.observe(
        [
            CycleTrace("A", T0, wms=wms("LA", ready=2), batch=batch("A", S.IDLE), n=2),
            CycleTrace("B", T0, wms=wms("LB", ready=9), batch=batch("B"), n=0),
        ]
    )
    assert value(metrics, "pilotfactory_decision_n", queue="A") == 2
    assert value(metrics, "pilotfactory_decision_n", queue="B") == 0
    assert value(metrics, "pilotfactory_wms_jobs", queue="B", state="ready") == 9
    assert value(metrics, "pilotfactory_workers", queue="A", state="idle") == 1
    assert value(metrics, "pilotfactory_workers", queue="B", state="idle") == 0


def test_a_dry_run_plans_nothing_for_the_counter(metrics: FactoryMetrics) -> None:
    trace = CycleTrace(
        "A",
        T0,
        wms=wms("A", ready=3),
        batch=batch("A"),
        n=3,
        planned=[Action(ActionKind.SUBMIT, count=3)],
        dry_run=True,
    )
    metrics.observe([trace])
    assert value(metrics, "pilotfactory_decision_n", queue="A") == 3
    assert value(metrics, "pilotfactory_planned_actions_total", queue="A", action="submit") is None


@pytest.mark.parametrize(
    ("has_wms", "has_batch", "batch_count", "wms_count"),
    [
        (True, False, 1, None),  # no batch: the whole cycle failed closed
        (False, False, 1, None),  # both gone: counted once, as batch
        (False, True, None, 1),  # no wms: n = 0, reaping goes on
        (True, True, None, None),
    ],
)
def test_fail_closed_cycles_by_source(
    metrics: FactoryMetrics,
    has_wms: bool,
    has_batch: bool,
    batch_count: float | None,
    wms_count: float | None,
) -> None:
    trace = CycleTrace(
        "A",
        T0,
        wms=wms("A", ready=3) if has_wms else None,
        batch=batch("A", S.BUSY) if has_batch else None,
    )
    metrics.observe([trace])
    got = (
        value(metrics, "pilotfactory_failclosed_cycles_total", queue="A", source="batch"),
        value(metrics, "pilotfactory_failclosed_cycles_total", queue="A", source="wms"),
    )
    assert got == (batch_count, wms_count)
    assert value(metrics, "pilotfactory_decision_n", queue="A") == 0


def test_fail_closed_cycles_add_up(metrics: FactoryMetrics) -> None:
    for _ in range(3):
        metrics.observe([CycleTrace("A", T0)])
    metrics.observe([CycleTrace("A", T0, batch=batch("A"))])
    assert value(metrics, "pilotfactory_failclosed_cycles_total", queue="A", source="batch") == 3
    assert value(metrics, "pilotfactory_failclosed_cycles_total", queue="A", source="wms") == 1


@pytest.mark.parametrize(
    ("error", "results", "counted"),
    [
        ("scheduler plugin Boom failed: RuntimeError: bug", [], 1),
        (None, ["submit failed: SubmitError: quota exceeded"], 1),
        (None, ["submitted 2", "reap failed: PluginError: x", "retire failed: y: z"], 1),
        ("boom", ["cancel failed: PluginError: x"], 1),  # one cycle counts once
        (None, ["submitted 2", "reaped 1"], None),
        (None, ["failed to parse"], None),  # only "<action> failed:" is an action failure
    ],
)
def test_queue_errors(
    metrics: FactoryMetrics, error: str | None, results: list[str], counted: float | None
) -> None:
    metrics.observe([CycleTrace("A", T0, batch=batch("A"), error=error, results=results)])
    assert value(metrics, "pilotfactory_queue_errors_total", queue="A") == counted


def test_source_failures(metrics: FactoryMetrics) -> None:
    condor = metrics.source_labels("k1", "batchstatus", "Condor", "schedd s1")
    panda = metrics.source_labels("k2", "wmsstatus", "Panda", "https://panda.test/server")
    quiet = metrics.source_labels("k3", "wmsstatus", "Condor", "local schedd")
    metrics.source_failed(condor)
    metrics.source_failed(condor)
    metrics.source_failed(panda)
    got = {
        labels: value(metrics, "pilotfactory_source_failures_total", kind=k, plugin=p, source=s)
        for labels in (condor, panda, quiet)
        for k, p, s in [labels]
    }
    # A source is exported from its first use, at 0: rate() sees its first failure.
    assert got == {condor: 2, panda: 1, quiet: 0}


def test_source_labels_are_stable_and_never_shared(metrics: FactoryMetrics) -> None:
    one = metrics.source_labels(("Panda", "token-a"), "wmsstatus", "Panda", "https://p.test/")
    two = metrics.source_labels(("Panda", "token-b"), "wmsstatus", "Panda", "https://p.test/")
    assert one == ("wmsstatus", "Panda", "https://p.test/")
    assert two == ("wmsstatus", "Panda", "https://p.test/ #2")  # same words, another source
    # The same key (a reload builds the source again) keeps its labels.
    assert metrics.source_labels(("Panda", "token-b"), "wmsstatus", "Panda", "x") == two


def test_source_labels_are_bounded_and_printable(metrics: FactoryMetrics) -> None:
    source = metrics.source_labels("k", "batchstatus", "X", "s\x1b[2J" + "a" * 900)[2]
    assert len(source) < 260 and "\x1b" not in source and source.isprintable()


def test_histograms_count_cycles_and_queues(metrics: FactoryMetrics) -> None:
    metrics.observe([CycleTrace("A", T0, seconds=0.003), CycleTrace("B", T0, seconds=42.0)])
    metrics.observe([CycleTrace("A", T0, seconds=0.2)])
    metrics.cycle_took(1.5)
    metrics.cycle_took(400.0)
    q = "pilotfactory_queue_cycle_seconds"
    assert value(metrics, f"{q}_count", queue="A") == 2
    assert value(metrics, f"{q}_sum", queue="A") == pytest.approx(0.203)
    assert value(metrics, f"{q}_bucket", queue="A", le="0.01") == 1
    assert value(metrics, f"{q}_bucket", queue="B", le="30.0") == 0
    assert value(metrics, f"{q}_bucket", queue="B", le="300.0") == 1
    c = "pilotfactory_cycle_seconds"
    assert value(metrics, f"{c}_count") == 2
    assert value(metrics, f"{c}_bucket", le="2.5") == 1
    assert value(metrics, f"{c}_bucket", le="300.0") == 1  # the 5 min cycle is past every bucket
    assert value(metrics, f"{c}_bucket", le="+Inf") == 2


def test_snapshot_ages_are_computed_when_scraped() -> None:
    now = [T0]
    times: list[tuple[tuple[str, str, str], float | None]] = [
        (("batchstatus", "Condor", "schedd s1"), T0 - 5),
        (("wmsstatus", "Panda", "https://p.test/"), None),
    ]
    m = FactoryMetrics(CollectorRegistry(), now=lambda: now[0], snapshots=lambda: times)
    name = "pilotfactory_status_snapshot_age_seconds"
    b = {"kind": "batchstatus", "plugin": "Condor", "source": "schedd s1"}
    w = {"kind": "wmsstatus", "plugin": "Panda", "source": "https://p.test/"}
    assert m.registry.get_sample_value(name, b) == 5
    assert m.registry.get_sample_value(name, w) == float("inf")  # never read: past any threshold
    now[0] += 30  # no cycle in between: the age still moves
    assert m.registry.get_sample_value(name, b) == 35
    times.pop()  # a source not tried yet is absent
    assert m.registry.get_sample_value(name, w) is None


def test_exposition_text_carries_help_and_labels(metrics: FactoryMetrics) -> None:
    metrics.observe([CycleTrace("A", T0, wms=wms("A", ready=1), batch=batch("A"), n=1)])
    text = generate_latest(metrics.registry).decode()
    assert "# HELP pilotfactory_decision_n Chain output n" in text
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if "# TYPE" in line}
    assert types["pilotfactory_decision_n"] == "gauge"
    # The exposition name of a counter carries _total or not, depending on the client version.
    assert {
        types.get(n) for n in ("pilotfactory_planned_actions", "pilotfactory_planned_actions_total")
    } >= {"counter"}
    assert 'pilotfactory_decision_n{queue="A"} 1.0' in text
    assert 'pilotfactory_wms_jobs{queue="A",state="ready"} 1.0' in text
