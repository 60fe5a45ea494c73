"""The executor: the re-read check per action kind, and one removal for every reap."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from pilotfactory.factory.executor import Executor, still_valid
from pilotfactory.factory.info import RetireMode, Worker, WorkerKind, WorkerState
from pilotfactory.factory.planner import Action, ActionKind
from pilotfactory.factory.plugin import BatchSubmitPlugin
from pilotfactory.factory.rails import Backoff
from pilotfactory.factory.trace import CycleTrace

S = WorkerState


def w(wid: str, state: WorkerState, **kw: Any) -> Worker:
    return Worker(id=wid, queue="q", state=state, since=0.0, **kw)


class Recorder:
    """A submit plugin that records its calls (the executor's only outside world)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def submit(self, count: int) -> list[str]:
        self.calls.append(("submit", (str(count),)))
        return [f"{k}.0" for k in range(count)]

    def _ids(self, name: str, workers: Sequence[Worker]) -> None:
        self.calls.append((name, tuple(x.id for x in workers)))

    def cancel(self, workers: Sequence[Worker]) -> None:
        self._ids("cancel", workers)

    def reap(self, workers: Sequence[Worker]) -> None:
        self._ids("reap", workers)

    def retire(self, workers: Sequence[Worker], mode: RetireMode) -> None:
        self._ids(f"retire {mode}", workers)

    def unretire(self, workers: Sequence[Worker]) -> None:
        self._ids("unretire", workers)

    def cancel_and_reap(self, cancel: Sequence[Worker], reap: Sequence[Worker]) -> None:
        BatchSubmitPlugin.cancel_and_reap(self, cancel, reap)  # type: ignore[arg-type]


def executor() -> tuple[Executor, Recorder, Backoff, dict[str, int]]:
    sub, backoff = Recorder(), Backoff(failure_limit=3)
    counters = dict.fromkeys(("submitted", "unretired", "cancelled", "retired", "reaped",
                              "killed", "errors"), 0)  # fmt: skip
    return Executor("q", sub, WorkerKind.VM, backoff, counters), sub, backoff, counters  # type: ignore[arg-type]


def test_every_reap_of_a_cycle_is_one_removal() -> None:
    ex, sub, backoff, counters = executor()
    retired, lost, held = w("1.0", S.RETIRED), w("2.0", S.LOST), w("3.0", S.HELD, hold_reason="x")
    trace = CycleTrace(queue="q", time=0.0)
    trace.planned = [
        Action(ActionKind.REAP, (retired,), reason="retired"),
        Action(ActionKind.REAP, (lost,), reason="lost", failure=True),
        Action(ActionKind.REAP, (held,), reason="held", failure=True),
        Action(ActionKind.SUBMIT, count=2, reason="n=2"),
    ]
    current = {x.id: x for x in (retired, lost, held)}
    ex.execute(trace, 0.0, current)
    assert sub.calls == [("reap", ("1.0", "2.0", "3.0")), ("submit", ("2",))]
    assert counters["reaped"] == 3 and trace.results.count("reaped 1") == 3
    assert [fail for fail, _ in backoff.endings] == [False, True, True]


def test_a_failed_reap_is_one_error_and_the_rest_goes_on() -> None:
    ex, sub, _, counters = executor()

    def broken(workers: Sequence[Worker]) -> None:
        raise RuntimeError("schedd said no")

    sub.reap = broken  # type: ignore[method-assign]
    trace = CycleTrace(queue="q", time=0.0)
    gone = (w("1.0", S.RETIRED), w("2.0", S.RETIRED))
    trace.planned = [
        Action(ActionKind.REAP, gone[:1], reason="retired"),
        Action(ActionKind.REAP, gone[1:], reason="retired"),
        Action(ActionKind.SUBMIT, count=1, reason="n=1"),
    ]
    ex.execute(trace, 0.0, {x.id: x for x in gone})
    assert counters["errors"] == 1 and counters["reaped"] == 0
    assert sub.calls == [("submit", ("1",))]


@pytest.mark.parametrize(
    ("kind", "planned", "now", "kept"),
    [
        (ActionKind.CANCEL, S.PENDING, S.PENDING, True),
        (ActionKind.CANCEL, S.PENDING, S.BUSY, False),  # it started
        (ActionKind.RETIRE, S.IDLE, S.IDLE, True),
        (ActionKind.RETIRE, S.IDLE, S.BUSY, False),  # it picked up work
        (ActionKind.RETIRE, S.BUSY, S.BUSY, True),
        (ActionKind.REAP, S.BOOTING, S.LOST, True),
        (ActionKind.REAP, S.RETIRED, S.RETIRING, False),  # un-retired or back
    ],
)
def test_still_valid(kind: ActionKind, planned: WorkerState, now: WorkerState, kept: bool) -> None:
    trace = CycleTrace(queue="q", time=0.0)
    action = Action(kind, (w("1.0", planned),))
    out = still_valid(action, {"1.0": w("1.0", now)}, trace)
    assert bool(out.workers) is kept
    assert bool(trace.notes) is not kept


def test_a_worker_gone_before_the_step_is_skipped_with_a_note() -> None:
    trace = CycleTrace(queue="q", time=0.0)
    out = still_valid(Action(ActionKind.CANCEL, (w("1.0", S.PENDING),)), {}, trace)
    assert out.workers == () and trace.notes == ["1.0: gone before cancel; skipped"]
