"""Property tests for the scheduler limiters: the bounds each one promises hold for any input."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pilotfactory.factory.info import (
    BatchQueueInfo,
    FactoryTotals,
    JobRecord,
    SiteStatus,
    WMSQueueInfo,
    Worker,
    WorkerState,
)
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import SchedContext, SchedPlugin
from pilotfactory.plugins.sched.activated import Activated
from pilotfactory.plugins.sched.basic import KeepNRunning, Scale
from pilotfactory.plugins.sched.limits import (
    MaxPending,
    MaxPerCycle,
    MaxPerFactory,
    MaxToRun,
    MinPending,
    MinPerCycle,
)
from pilotfactory.plugins.sched.ready import Ready
from pilotfactory.plugins.sched.status import StatusOffline, StatusTest
from pilotfactory.plugins.sched.throttle import Throttle

NOW = 1_000_000.0
ns = st.integers(min_value=-1000, max_value=1000)
counts = st.integers(min_value=0, max_value=40)
bounds = st.integers(min_value=0, max_value=200)
statuses = st.sampled_from(list(SiteStatus))


def run(cls: type[SchedPlugin], params: dict[str, Any], n: int, **ctx: Any) -> int:
    context = SchedContext(queue="q", now=NOW, **{"wms": None, "batch": None, **ctx})
    out, reason = cls(merged(cls.PARAMS, params)).calc(n, context)
    assert reason.startswith(f"{cls.NAME}: ") and reason.endswith(f"ret={out}")
    return out


def batch(pending: int, running: int, history: tuple[JobRecord, ...] | None = None) -> Any:
    states = [WorkerState.PENDING] * pending + [WorkerState.BUSY] * running
    workers = tuple(Worker(id=str(i), queue="q", state=s, since=0.0) for i, s in enumerate(states))
    return BatchQueueInfo(queue="q", time=NOW, workers=workers, history=history)


@given(n=ns, maximum=bounds)
def test_max_per_cycle(n: int, maximum: int) -> None:
    out = run(MaxPerCycle, {"maximum": maximum}, n)
    if n > 0:
        assert out <= maximum
        assert out == min(n, maximum)
    else:
        assert out == n


@given(n=ns, minimum=st.integers(-100, 100))
def test_min_per_cycle(n: int, minimum: int) -> None:
    out = run(MinPerCycle, {"minimum": minimum}, n)
    assert out >= minimum and out >= n
    assert out in (n, minimum)


@given(n=ns, maximum=bounds, pending=counts, running=counts, allow_negative=st.booleans())
def test_max_pending(
    n: int, maximum: int, pending: int, running: int, allow_negative: bool
) -> None:
    params = {"maximum": maximum, "allow_negative": allow_negative}
    out = run(MaxPending, params, n, batch=batch(pending, running))
    assert out <= n
    if pending == 0:
        assert out == n
    elif allow_negative:
        assert out <= maximum - pending
    else:
        assert out <= max(0, maximum - pending)
        assert out >= min(n, 0)  # never asks for retirements of its own


@given(n=ns, minimum=bounds, pending=counts)
def test_min_pending(n: int, minimum: int, pending: int) -> None:
    out = run(MinPending, {"minimum": minimum}, n, batch=batch(pending, 0))
    assert out >= n and out >= minimum - pending
    assert out in (n, minimum - pending)


@given(n=ns, maximum=bounds, pending=counts, running=counts)
def test_max_to_run(n: int, maximum: int, pending: int, running: int) -> None:
    out = run(MaxToRun, {"maximum": maximum}, n, batch=batch(pending, running))
    assert pending + running + out <= maximum
    assert out <= n


@given(n=ns, maximum=st.integers(0, 500), running=st.integers(0, 400), pending=st.integers(0, 400))
def test_max_per_factory(n: int, maximum: int, running: int, pending: int) -> None:
    """apf-semantics.md: total > max -> 0; n + total > max -> max - total; else n."""
    out = run(MaxPerFactory, {}, n, factory=FactoryTotals(running, pending, maximum))
    total = running + pending
    if total > maximum:
        assert out == 0
    elif n + total > maximum:
        assert out == maximum - total and 0 <= out <= n
    else:
        assert out == n


@given(n=ns, factor=st.floats(min_value=1e-6, max_value=1000.0))
def test_scale_keeps_sign(n: int, factor: float) -> None:
    out = run(Scale, {"factor": factor}, n)
    if n > 0:
        assert out >= 1
    elif n < 0:
        assert n * factor - 1 < out <= 0
    else:
        assert out == 0


@given(n=ns, factor=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10), places=2))
def test_scale_rounds_decimal_factor_exactly(n: int, factor: Decimal) -> None:
    out = run(Scale, {"factor": float(factor)}, n)
    exact = n * Fraction(factor)
    assert (out >= exact and out - exact < 1) if n > 0 else (out <= 0 and 0 <= out - exact < 1)


@given(n=ns, factor=st.floats(min_value=1e-6, max_value=1.0))
def test_scale_down_never_grows(n: int, factor: float) -> None:
    assert abs(run(Scale, {"factor": factor}, n)) <= abs(n)


@given(n=ns, ready=counts, offset=st.integers(0, 10), pending=counts, running=counts)
def test_ready(n: int, ready: int, offset: int, pending: int, running: int) -> None:
    info = WMSQueueInfo(queue="q", time=NOW, ready=ready)
    out = run(Ready, {"offset": offset}, n, wms=info, batch=batch(pending, running))
    assert 0 <= out <= ready
    assert out + pending >= ready - offset
    assert out == run(Ready, {"offset": offset}, 0, wms=info, batch=batch(pending, running))


limit_keys = st.fixed_dictionaries(
    {},
    optional={
        k: st.integers(0, 60)
        for k in (
            "max_jobs_torun",
            "max_pilots_per_cycle",
            "min_pilots_per_cycle",
            "min_pilots_pending",
            "max_pilots_pending",
        )
    },
)


@given(n=ns, params=limit_keys, ready=counts, pending=counts, running=counts, status=statuses)
def test_activated(
    n: int, params: dict[str, int], ready: int, pending: int, running: int, status: SiteStatus
) -> None:
    info = WMSQueueInfo(queue="q", time=NOW, ready=ready, site_status=status)
    out = run(Activated, params, n, wms=info, batch=batch(pending, running))
    assert out >= 0
    if status is SiteStatus.OFFLINE:
        assert out == 0
        return
    if "max_pilots_pending" in params:  # applied last, then only the floor at 0
        assert out <= max(0, params["max_pilots_pending"] - pending)
    if not params:
        assert out == max(0, ready - pending)


@given(n=ns, keep=st.integers(0, 100), pending=counts, running=counts)
def test_keep_n_running_reaches_target(n: int, keep: int, pending: int, running: int) -> None:
    out = run(KeepNRunning, {"keep_running": keep}, n, batch=batch(pending, running))
    assert running + pending + out == keep


@given(n=ns, pilots=st.integers(0, 10), status=statuses)
def test_status_overrides(n: int, pilots: int, status: SiteStatus) -> None:
    info = WMSQueueInfo(queue="q", time=NOW, site_status=status)
    offline = run(StatusOffline, {"pilots": pilots}, n, wms=info)
    test = run(StatusTest, {"pilots": pilots}, n, wms=info)
    assert offline == (pilots if status is SiteStatus.OFFLINE else n)
    assert test == (pilots if status is SiteStatus.TEST else n)


jobs = st.builds(
    lambda age, wall: JobRecord(
        id="j", started=NOW - age, ended=None if wall is None else NOW - age + wall
    ),
    st.floats(0, 10_000),
    st.none() | st.floats(0, 100),
)


@given(n=ns, history=st.lists(jobs, max_size=30), submit=st.integers(0, 5))
def test_throttle_replaces_n_when_tripped(n: int, history: list[JobRecord], submit: int) -> None:
    """apf-semantics.md: tripped -> ``submit`` (replacing n); else n."""
    out = run(Throttle, {"submit": submit}, n, batch=batch(0, 0, tuple(history)))
    assert out in (n, submit)
