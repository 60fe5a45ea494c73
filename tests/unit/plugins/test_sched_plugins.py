"""Scheduler plugins against the APF formulas (docs: reference/apf-semantics.md).

Every row is ``plugin, params, n, context -> expected n``; the expected numbers are worked out by
hand from the formulas, not from the code.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest

from pilotfactory.factory.info import (
    BatchQueueInfo,
    FactoryTotals,
    JobRecord,
    SiteStatus,
    WMSQueueInfo,
    Worker,
    WorkerState,
)
from pilotfactory.factory.params import ParamValueError, merged
from pilotfactory.factory.plugin import SchedContext, SchedPlugin
from pilotfactory.plugins.sched.activated import Activated
from pilotfactory.plugins.sched.basic import Fixed, KeepNRunning, Null, Scale
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
Q = "q1"
S = WorkerState


def batch(
    pending: int = 0,
    running: int = 0,
    *,
    extra: tuple[WorkerState, ...] = (),
    history: tuple[JobRecord, ...] | None = None,
) -> BatchQueueInfo:
    states = [S.PENDING] * pending + [S.BUSY] * running + list(extra)
    workers = tuple(Worker(id=f"1.{i}", queue=Q, state=s, since=0.0) for i, s in enumerate(states))
    return BatchQueueInfo(queue=Q, time=NOW, workers=workers, history=history)


def wms(ready: int = 0, status: SiteStatus = SiteStatus.ONLINE) -> WMSQueueInfo:
    return WMSQueueInfo(queue=Q, time=NOW, ready=ready, site_status=status)


def ctx(
    w: WMSQueueInfo | None = None,
    b: BatchQueueInfo | None = None,
    factory: FactoryTotals | None = None,
) -> SchedContext:
    return SchedContext(queue=Q, now=NOW, wms=w, batch=b, factory=factory)


def job(age: float, wall: float | None) -> JobRecord:
    """A job that started ``age`` s before NOW and ran ``wall`` s (None: still running)."""
    started = NOW - age
    return JobRecord(
        id=f"j{age}-{wall}", started=started, ended=None if wall is None else started + wall
    )


def make(cls: type[SchedPlugin], params: dict[str, Any]) -> SchedPlugin:
    return cls(merged(cls.PARAMS, params))


def hist(*jobs: JobRecord) -> BatchQueueInfo:
    return batch(history=jobs)


ONLINE = wms()
OFFLINE, TEST = SiteStatus.OFFLINE, SiteStatus.TEST
SHORT, LONG = 5.0, 1000.0
TM = {"testmode.allowed": True, "testmode.pilots": 3}
R = pytest.param

# fmt: off
ROWS = [
    # ---- Ready: max(0, (ready - offset) - pending), ignores n; missing info -> 0
    R(Ready, {}, 99, ctx(wms(10), batch(3, 7)), 7, id="ready"),
    R(Ready, {"offset": 2}, 0, ctx(wms(10), batch(3)), 5, id="ready-offset"),
    R(Ready, {}, 5, ctx(wms(2), batch(5)), 0, id="ready-pending>ready"),
    R(Ready, {}, -4, ctx(wms(3), batch()), 3, id="ready-ignores-n"),
    R(Ready, {}, 0, ctx(wms(10), batch(1, 4, extra=(S.HELD, S.BOOTING))), 7, id="ready-held"),
    R(Ready, {}, 5, ctx(None, batch()), 0, id="ready-no-wms"),
    R(Ready, {}, 5, ctx(wms(10), None), 0, id="ready-no-batch"),
    # ---- Activated: max(0, activated - pending), then each limit only if set, in APF order
    R(Activated, {}, 5, ctx(None, batch()), 0, id="act-no-wms"),
    R(Activated, {"default": 7}, 5, ctx(None, batch()), 7, id="act-no-wms-default"),
    R(Activated, {"default": 3}, 5, ctx(wms(20), None), 3, id="act-no-batch-default"),
    R(Activated, {}, 99, ctx(wms(20), batch(5)), 15, id="act-unset-skipped"),
    R(Activated, {}, 0, ctx(wms(3), batch(5)), 0, id="act-floor-0"),
    R(Activated, {"max_jobs_torun": 30}, 0, ctx(wms(20), batch(5, 20)), 5, id="act-torun"),
    R(Activated, {"max_jobs_torun": 0}, 0, ctx(wms(20), batch()), 0, id="act-torun-0"),
    R(Activated, {"max_jobs_torun": 10}, 0, ctx(wms(20), batch(5, 10)), 0, id="act-torun-over"),
    R(Activated, {"min_pilots_pending": 8}, 0, ctx(wms(0), batch(3)), 5, id="act-minpend"),
    R(Activated, {"max_pilots_per_cycle": 4}, 0, ctx(wms(20), batch()), 4, id="act-maxcyc"),
    R(Activated, {"max_pilots_per_cycle": 0}, 0, ctx(wms(20), batch()), 0, id="act-maxcyc-0"),
    R(Activated, {"min_pilots_per_cycle": 2}, 0, ctx(wms(0), batch()), 2, id="act-mincyc"),
    R(Activated, {"max_pilots_pending": 6}, 0, ctx(wms(20), batch(4)), 2, id="act-maxpend"),
    R(Activated, {"max_pilots_pending": 2}, 0, ctx(wms(20), batch(4)), 0, id="act-maxpend-0"),
    # order: max_jobs_torun, min_pilots_pending, max_per_cycle, min_per_cycle, max_pending
    R(Activated, {"max_jobs_torun": 10, "min_pilots_pending": 4}, 0,
      ctx(wms(50), batch(1, 9)), 3, id="act-order-torun-minpend"),
    R(Activated, {"min_pilots_pending": 10, "max_pilots_per_cycle": 3}, 0,
      ctx(wms(0), batch(2)), 3, id="act-order-minpend-maxcyc"),
    R(Activated, {"max_pilots_per_cycle": 3, "min_pilots_per_cycle": 5}, 0,
      ctx(wms(20), batch()), 5, id="act-order-maxcyc-mincyc"),
    R(Activated, {"min_pilots_per_cycle": 5, "max_pilots_pending": 6}, 0,
      ctx(wms(0), batch(4)), 2, id="act-order-mincyc-maxpend"),
    R(Activated, {"min_pilots_per_cycle": 3}, 5, ctx(wms(20, OFFLINE), batch()), 0, id="act-off"),
    R(Activated, {"testmode.pilots": 3}, 0, ctx(wms(20, TEST), batch(5)), 15, id="act-test-off"),
    R(Activated, TM, 0, ctx(wms(20, TEST), batch(4)), 3, id="act-test"),
    R(Activated, {**TM, "testmode.max_pending": 4}, 0, ctx(wms(20, TEST), batch(5)), 0,
      id="act-test-pending>max"),
    R(Activated, {**TM, "testmode.max_pending": 4}, 0, ctx(wms(20, TEST), batch(4)), 3,
      id="act-test-pending=max"),
    R(Activated, {"testmode.allowed": True}, 9, ctx(wms(20, TEST), batch()), 0, id="act-test-0"),
    R(Activated, {}, 0, ctx(wms(6, SiteStatus.BROKEROFF), batch(1)), 5, id="act-brokeroff"),
    R(Activated, {}, 0, ctx(wms(6, SiteStatus.UNKNOWN), batch(1)), 5, id="act-unknown"),
    # ---- Fixed / Null
    R(Fixed, {"pilotspercycle": 5}, -3, ctx(), 5, id="fixed"),
    R(Fixed, {}, 8, ctx(), 0, id="fixed-default-0"),
    R(Null, {}, 10, ctx(ONLINE, batch()), 0, id="null"),
    R(Null, {}, -10, ctx(), 0, id="null-negative"),
    # ---- KeepNRunning: (keep or n) - (running + pending); batch missing -> 0
    R(KeepNRunning, {"keep_running": 10}, 99, ctx(b=batch(2, 4)), 4, id="keep-grow"),
    R(KeepNRunning, {"keep_running": 3}, 0, ctx(b=batch(2, 4)), -3, id="keep-shrink"),
    R(KeepNRunning, {"keep_running": 0}, 5, ctx(b=batch(2, 4)), -6, id="keep-0-retires-all"),
    R(KeepNRunning, {}, 8, ctx(b=batch(1, 3)), 4, id="keep-unset-uses-n"),
    R(KeepNRunning, {}, 0, ctx(b=batch(0, 3)), -3, id="keep-unset-n-0"),
    R(KeepNRunning, {"keep_running": 5}, 9, ctx(), 0, id="keep-no-batch"),
    R(KeepNRunning, {"keep_running": 5}, 0,
      ctx(b=batch(0, 2, extra=(S.RETIRING, S.IDLE, S.UNKNOWN, S.DONE, S.LOST, S.RETIRED))), 0,
      id="keep-counts-present-not-gone"),
    # ---- Scale: ceil for n > 0, toward zero for n < 0
    R(Scale, {"factor": 0.5}, 3, ctx(), 2, id="scale-ceil"),
    R(Scale, {"factor": 0.5}, 1, ctx(), 1, id="scale-small-not-0"),
    R(Scale, {"factor": 0.1}, 1, ctx(), 1, id="scale-tiny-factor"),
    R(Scale, {"factor": 0.5}, -3, ctx(), -1, id="scale-negative-toward-0"),
    R(Scale, {"factor": 0.5}, -1, ctx(), 0, id="scale-negative-to-0"),
    R(Scale, {"factor": 2.0}, -3, ctx(), -6, id="scale-negative-up"),
    R(Scale, {"factor": 0.3}, 10, ctx(), 3, id="scale-decimal-0.3"),
    R(Scale, {"factor": 1.1}, 10, ctx(), 11, id="scale-decimal-1.1"),
    R(Scale, {}, 7, ctx(), 7, id="scale-default-1"),
    R(Scale, {"factor": 3.0}, 0, ctx(), 0, id="scale-zero"),
    R(Scale, {"factor": 0.0}, 5, ctx(), 0, id="scale-factor-0"),
    # ---- MaxPerCycle: min(n, maximum); negative n unchanged
    R(MaxPerCycle, {"maximum": 100}, 120, ctx(), 100, id="maxcyc"),
    R(MaxPerCycle, {"maximum": 100}, 50, ctx(), 50, id="maxcyc-under"),
    R(MaxPerCycle, {"maximum": 100}, -130, ctx(), -130, id="maxcyc-negative"),
    R(MaxPerCycle, {"maximum": 0}, 5, ctx(), 0, id="maxcyc-0-is-a-value"),
    R(MaxPerCycle, {}, 500, ctx(), 500, id="maxcyc-unset"),
    # ---- MinPerCycle: max(n, minimum)
    R(MinPerCycle, {"minimum": 5}, 2, ctx(), 5, id="mincyc"),
    R(MinPerCycle, {"minimum": 5}, 9, ctx(), 9, id="mincyc-above"),
    R(MinPerCycle, {"minimum": -2}, -10, ctx(), -2, id="mincyc-retire-at-most-2"),
    R(MinPerCycle, {"minimum": -2}, -1, ctx(), -1, id="mincyc-retire-1"),
    R(MinPerCycle, {"minimum": 0}, -4, ctx(), 0, id="mincyc-0-is-a-value"),
    R(MinPerCycle, {}, -4, ctx(), -4, id="mincyc-unset"),
    # ---- MaxPending: pending == 0 -> n; else min(n, maximum - pending)
    R(MaxPending, {"maximum": 10}, 20, ctx(b=batch(4)), 6, id="maxpend"),
    R(MaxPending, {"maximum": 10}, 3, ctx(b=batch(4)), 3, id="maxpend-under"),
    R(MaxPending, {"maximum": 10}, 20, ctx(b=batch(0, 30)), 20, id="maxpend-none-pending"),
    R(MaxPending, {"maximum": 2}, 20, ctx(b=batch(5)), -3, id="maxpend-negative"),
    R(MaxPending, {"maximum": 2, "allow_negative": False}, 20, ctx(b=batch(5)), 0,
      id="maxpend-clamped"),
    R(MaxPending, {"maximum": 2, "allow_negative": False}, -4, ctx(b=batch(5)), -4,
      id="maxpend-clamp-keeps-negative-n"),
    R(MaxPending, {"maximum": 0}, 5, ctx(b=batch(1)), -1, id="maxpend-0-is-a-value"),
    R(MaxPending, {"maximum": 10}, 20, ctx(b=batch(2, extra=(S.HELD, S.BOOTING))), 6,
      id="maxpend-held-booting"),
    R(MaxPending, {"maximum": 10}, 20, ctx(), 20, id="maxpend-no-batch"),
    R(MaxPending, {}, 20, ctx(b=batch(50)), 20, id="maxpend-unset"),
    # ---- MinPending: max(n, minimum - pending)
    R(MinPending, {"minimum": 5}, 0, ctx(b=batch(2)), 3, id="minpend"),
    R(MinPending, {"minimum": 5}, 10, ctx(b=batch(2)), 10, id="minpend-above"),
    R(MinPending, {"minimum": 5}, 0, ctx(b=batch(7)), 0, id="minpend-enough"),
    R(MinPending, {"minimum": 5}, -4, ctx(b=batch(7)), -2, id="minpend-softens-retire"),
    R(MinPending, {"minimum": 0}, -3, ctx(b=batch()), 0, id="minpend-0-is-a-value"),
    R(MinPending, {"minimum": 5}, 4, ctx(), 4, id="minpend-no-batch"),
    R(MinPending, {}, -4, ctx(b=batch()), -4, id="minpend-unset"),
    # ---- MaxToRun: min(n, maximum - (pending + running)); batch missing -> 0
    R(MaxToRun, {"maximum": 20}, 15, ctx(b=batch(3, 10)), 7, id="maxrun"),
    R(MaxToRun, {"maximum": 20}, 5, ctx(b=batch(3, 10)), 5, id="maxrun-under"),
    R(MaxToRun, {"maximum": 10}, 5, ctx(b=batch(3, 10)), -3, id="maxrun-negative"),
    R(MaxToRun, {"maximum": 0}, 0, ctx(b=batch(0, 2)), -2, id="maxrun-0-retires-all"),
    R(MaxToRun, {"maximum": 20}, 5, ctx(), 0, id="maxrun-no-batch"),
    R(MaxToRun, {}, 5, ctx(), 0, id="maxrun-no-batch-unset"),
    R(MaxToRun, {}, 5, ctx(b=batch(3, 100)), 5, id="maxrun-unset"),
    # ---- MaxPerFactory: FactoryTotals(running, pending, maximum)
    R(MaxPerFactory, {}, 5, ctx(factory=FactoryTotals(80, 10, 100)), 5, id="maxfact-room"),
    R(MaxPerFactory, {}, 20, ctx(factory=FactoryTotals(80, 10, 100)), 10, id="maxfact-fill"),
    R(MaxPerFactory, {}, 5, ctx(factory=FactoryTotals(100, 10, 100)), 0, id="maxfact-over"),
    R(MaxPerFactory, {}, 5, ctx(factory=FactoryTotals(90, 10, 100)), 0, id="maxfact-at"),
    R(MaxPerFactory, {}, 3, ctx(factory=FactoryTotals(0, 0, 0)), 0, id="maxfact-0-is-a-value"),
    # APF: over the cap -> 0, whatever n was (a negative n included)
    R(MaxPerFactory, {}, -5, ctx(factory=FactoryTotals(100, 10, 100)), 0, id="maxfact-negative"),
    R(MaxPerFactory, {}, -5, ctx(factory=FactoryTotals(50, 10, 100)), -5, id="maxfact-neg-under"),
    R(MaxPerFactory, {}, 500, ctx(factory=FactoryTotals(900, 10, None)), 500, id="maxfact-unset"),
    R(MaxPerFactory, {}, 500, ctx(), 500, id="maxfact-no-totals"),
    # ---- StatusOffline / StatusTest: pilots when the site is in that status, else n
    R(StatusOffline, {}, 10, ctx(wms(status=OFFLINE)), 0, id="offline-default-0"),
    R(StatusOffline, {"pilots": 2}, 10, ctx(wms(status=OFFLINE)), 2, id="offline"),
    R(StatusOffline, {"pilots": 2}, 10, ctx(ONLINE), 10, id="offline-online"),
    R(StatusOffline, {"pilots": 2}, -3, ctx(wms(status=TEST)), -3, id="offline-test"),
    R(StatusOffline, {"pilots": 2}, 10, ctx(wms(status=SiteStatus.UNKNOWN)), 10,
      id="offline-unknown"),
    R(StatusOffline, {"pilots": 2}, 10, ctx(None), 0, id="offline-no-wms"),
    R(StatusTest, {"pilots": 3}, 10, ctx(wms(status=TEST)), 3, id="test"),
    R(StatusTest, {}, 10, ctx(wms(status=TEST)), 0, id="test-default-0"),
    R(StatusTest, {"pilots": 3}, 10, ctx(ONLINE), 10, id="test-online"),
    R(StatusTest, {"pilots": 3}, 10, ctx(wms(status=OFFLINE)), 10, id="test-offline"),
    R(StatusTest, {"pilots": 3}, 10, ctx(None), 0, id="test-no-wms"),
    # ---- Throttle (interval 3600, maxtime 10, ratio 0.5, submit 1); job(age, walltime)
    R(Throttle, {}, 50, ctx(b=batch()), 50, id="thr-no-history"),
    R(Throttle, {}, 50, ctx(), 50, id="thr-no-batch"),
    R(Throttle, {}, 50, ctx(b=hist()), 50, id="thr-empty-history"),
    R(Throttle, {}, 50, ctx(b=hist(*[job(60, SHORT)] * 3, job(60, LONG))), 1, id="thr-black-hole"),
    R(Throttle, {}, 50, ctx(b=hist(*[job(60, SHORT)] * 2, *[job(60, LONG)] * 2)), 50,
      id="thr-ratio-not-exceeded"),
    R(Throttle, {}, 50, ctx(b=hist(*[job(4000, SHORT)] * 3, job(60, LONG))), 50, id="thr-old"),
    R(Throttle, {}, 50, ctx(b=hist(job(3600, SHORT))), 1, id="thr-window-inclusive"),
    R(Throttle, {"interval": 600}, 50, ctx(b=hist(*[job(1000, SHORT)] * 3, job(60, LONG))), 50,
      id="thr-interval"),
    R(Throttle, {}, 50, ctx(b=hist(job(60, LONG), *[job(5, None)] * 3)), 50,
      id="thr-young-running-undecided"),
    R(Throttle, {}, 50, ctx(b=hist(*[job(5, None)] * 3)), 50, id="thr-only-undecided"),
    R(Throttle, {}, 50, ctx(b=hist(job(60, SHORT), *[job(60, None)] * 2)), 50,
      id="thr-old-running-is-long"),
    R(Throttle, {}, 50, ctx(b=hist(job(60, 10.0))), 50, id="thr-maxtime-is-not-short"),
    R(Throttle, {"maxtime": 20.0}, 50, ctx(b=hist(job(60, 15.0))), 1, id="thr-maxtime"),
    R(Throttle, {"ratio": 0.0}, 50, ctx(b=hist(job(60, SHORT), *[job(60, LONG)] * 9)), 1,
      id="thr-ratio-0"),
    R(Throttle, {"submit": 4}, 50, ctx(b=hist(job(60, SHORT))), 4, id="thr-submit"),
    # APF: tripped -> submit, replacing n (not capping it)
    R(Throttle, {"submit": 4}, 2, ctx(b=hist(job(60, SHORT))), 4, id="thr-replaces"),
    R(Throttle, {}, -3, ctx(b=hist(job(60, SHORT))), 1, id="thr-replaces-negative"),
]
# fmt: on


@pytest.mark.parametrize(("cls", "params", "n", "context", "expected"), ROWS)
def test_calc(
    cls: type[SchedPlugin], params: dict[str, Any], n: int, context: SchedContext, expected: int
) -> None:
    out, reason = make(cls, params).calc(n, context)
    assert out == expected
    assert type(out) is int
    assert reason.startswith(f"{cls.NAME}: ")
    assert reason.endswith(f"ret={expected}")
    assert "\n" not in reason


def test_reason_apf_style() -> None:
    out, reason = make(MaxPerCycle, {"maximum": 100}).calc(120, ctx())
    assert (out, reason) == (100, "MaxPerCycle: in=120 maximum=100 ret=100")
    assert make(Ready, {}).calc(3, ctx())[1] == "Ready: no wms info, ret=0"


APF_PLUGINS: tuple[type[SchedPlugin], ...] = (
    Ready, Activated, Fixed, Null, KeepNRunning, Scale, MaxPerCycle, MinPerCycle, MaxPending,
    MinPending, MaxToRun, MaxPerFactory, StatusOffline, StatusTest, Throttle,
)  # fmt: skip


def test_every_apf_plugin_registered_and_tested() -> None:
    eps = {ep.name: ep for ep in entry_points(group="pilotfactory.sched")}
    for cls in APF_PLUGINS:
        assert eps[cls.NAME].load() is cls
        assert cls.KIND == "sched"
    assert {row.values[0] for row in ROWS} == set(APF_PLUGINS)


PARAM_DEFAULTS = [
    (Ready, {"offset": 0}),
    (
        Activated,
        {
            "default": 0,
            "max_jobs_torun": None,
            "max_pilots_per_cycle": None,
            "min_pilots_per_cycle": None,
            "min_pilots_pending": None,
            "max_pilots_pending": None,
            "testmode.allowed": False,
            "testmode.pilots": 0,
            "testmode.max_pending": 10,
        },
    ),
    (Fixed, {"pilotspercycle": 0}),
    (Null, {}),
    (KeepNRunning, {"keep_running": None}),
    (Scale, {"factor": 1.0}),
    (MaxPerCycle, {"maximum": None}),
    (MinPerCycle, {"minimum": None}),
    (MaxPending, {"maximum": None, "allow_negative": True}),
    (MinPending, {"minimum": None}),
    (MaxToRun, {"maximum": None}),
    (MaxPerFactory, {}),
    (StatusOffline, {"pilots": 0}),
    (StatusTest, {"pilots": 0}),
    (Throttle, {"interval": 3600, "maxtime": 10, "ratio": 0.5, "submit": 1}),
]


@pytest.mark.parametrize(("cls", "expected"), PARAM_DEFAULTS, ids=lambda v: getattr(v, "NAME", ""))
def test_apf_param_names_and_defaults(cls: type[SchedPlugin], expected: dict[str, Any]) -> None:
    assert {p.name: p.default for p in cls.PARAMS} == expected
    assert cls.namespaces()[0] == f"sched.{cls.NAME.lower()}."


@pytest.mark.parametrize(
    ("cls", "name", "raw", "value"),
    [
        (Activated, "testmode.allowed", "yes", True),
        (MaxPending, "allow_negative", "False", False),
        (Scale, "factor", "0.25", 0.25),
        (Throttle, "interval", "600", 600.0),
        (MinPerCycle, "minimum", "-2", -2),
    ],
)
def test_params_parse(cls: type[SchedPlugin], name: str, raw: str, value: Any) -> None:
    (param,) = [p for p in cls.PARAMS if p.name == name]
    assert param.parse(raw) == value


@pytest.mark.parametrize(
    ("cls", "name", "raw"),
    [(Scale, "factor", "-1"), (MaxPerCycle, "maximum", "-5"), (Throttle, "submit", "-1")],
)
def test_nonsense_params_rejected(cls: type[SchedPlugin], name: str, raw: str) -> None:
    (param,) = [p for p in cls.PARAMS if p.name == name]
    with pytest.raises(ParamValueError):
        param.parse(raw)


def test_throttle_asks_for_its_window_of_history() -> None:
    assert Throttle.NEEDS_HISTORY is True
    assert make(Throttle, {"interval": 900.0}).history_window() == 900.0
    assert make(Throttle, {}).history_window() == 3600.0
    assert MaxPerCycle.NEEDS_HISTORY is False
