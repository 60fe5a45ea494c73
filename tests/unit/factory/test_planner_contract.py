"""The planner and the worker VM contract (issue 18): spot interruptions, lifetime, drift.

Table first (one row per rule), then the roll of a drifted pool played cycle by cycle against
a model of the world, checking that supply never falls below the target.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfactory.factory.info import SUPPLY, RetireMode, Worker, WorkerState
from pilotfactory.factory.planner import (
    INTERRUPT_REAP_AFTER,
    ActionKind,
    PlanInput,
    PlannerSettings,
    plan,
)
from tests.unit.factory.test_planner import NOW, S, summary, w

I, U, R, B, P = (
    WorkerState.IDLE,
    WorkerState.BUSY,
    WorkerState.RETIRING,
    WorkerState.BOOTING,
    WorkerState.PENDING,
)
X = WorkerState.INTERRUPTED
OLD, NEW = "0" * 16, "f" * 16


def test_interrupted_is_no_supply_and_no_failure_state() -> None:
    from pilotfactory.factory.info import FAILURE

    assert X not in SUPPLY and X not in FAILURE


CASES = [
    (
        "a notice: vacated at once, even with n=0",
        0,
        [w("x", X, interruption=NOW + 90, machine="vm1"), w("a", U, busy=1)],
        {"vacate": ["x"]},
        {},
    ),
    (
        "vacated once: not again, not reaped before the provider's time has long passed",
        1,
        [w("x", X, interruption=NOW - 10, vacated=True)],
        {"submit": 1},
        {},
    ),
    (
        "still there well past the provider's time: reaped, and not as a failure",
        0,
        [w("x", X, interruption=NOW - INTERRUPT_REAP_AFTER - 1, vacated=True)],
        {"reap": ["x"]},
        {},
    ),
    (
        "past its deadline: retired (drain where safe), reason lifetime",
        0,
        [w("old", U, busy=1, deadline=NOW - 1), w("young", U, busy=1, deadline=NOW + 99)],
        {"retire:drain": ["old"]},
        {},
    ),
    (
        "past its deadline with drain unsafe and retire_mode=kill: peaceful, never killed",
        0,
        [w("old", U, busy=1, deadline=NOW - 1, retirement_time=0.0)],
        {"retire:peaceful": ["old"]},
        {"retire_mode": RetireMode.KILL},
    ),
    (
        "lifetime retires keep to max_retire_per_cycle, most overdue first",
        0,
        [w(f"o{k}", I, deadline=NOW - k) for k in range(1, 5)],
        {"retire:drain": ["o4", "o3"]},
        {"max_retire_per_cycle": "2"},
    ),
    (
        "a PilotFactoryKeep VM past its deadline is spared (within keep_max)",
        0,
        [w("k", U, busy=1, deadline=NOW - 1, keep=True)],
        {},
        {},
    ),
    (
        "drifted and no replacement yet: buy one first, retire nothing",
        0,
        [w("d1", U, busy=1, fingerprint=OLD), w("d2", U, busy=1, fingerprint=OLD)],
        {"submit": 1},  # 10% of 2 workers, at least one
        {},
    ),
    (
        "drifted, a replacement booting: nothing more bought, nothing retired",
        0,
        [w("d1", U, busy=1, fingerprint=OLD), w("new", B)],
        {},
        {},
    ),
    (
        "drifted, an idle current VM there: the drifted one retires (idle drifted first)",
        0,
        [
            w("d1", U, busy=1, fingerprint=OLD),
            w("d2", I, fingerprint=OLD),
            w("c", I, fingerprint=NEW),
        ],
        {"retire:drain": ["d2"], "submit": 1},
        {},
    ),
    (
        "an idle current VM already stands in for a retiring drifted one: no second retire",
        0,
        [
            w("d1", U, busy=1, fingerprint=OLD),
            w("gone", R, fingerprint=OLD),
            w("c", I, fingerprint=NEW),
        ],
        {"submit": 1},
        {},
    ),
    (
        "the chain calls the replacement on its way excess: not acted on",
        -1,
        [w("d1", U, busy=1, fingerprint=OLD), w("new", B)],
        {},
        {},
    ),
    (
        "a real scale-down takes drifted VMs first",
        -1,
        [w("c", I, fingerprint=NEW, since=NOW - 900), w("d", I, fingerprint=OLD)],
        {"retire:drain": ["d"]},
        {},
    ),
    (
        "a VM without a fingerprint (launched before the contract) is not drifted",
        0,
        [w("legacy", U, busy=1)],
        {},
        {},
    ),
    (
        "a drifted retiring VM is not un-retired for new demand: a new VM is bought",
        1,
        [w("d", R, fingerprint=OLD), w("c", U, busy=1, fingerprint=NEW)],
        {"submit": 1},
        {},
    ),
    (
        "frozen: vacates still happen, lifetime and drift wait",
        0,
        [w("x", X, interruption=NOW + 90), w("old", U, busy=1, deadline=NOW - 1)],
        {"vacate": ["x"]},
        {"freeze": "collector lost ads"},
    ),
]


@pytest.mark.parametrize(
    ("name", "n", "workers", "expected", "extra"), CASES, ids=[c[0] for c in CASES]
)
def test_contract_table(
    name: str, n: int, workers: list[Worker], expected: dict[str, object], extra: dict[str, object]
) -> None:
    settings = S
    kw: dict[str, object] = {"fingerprint": NEW}
    for key, value in extra.items():
        if key == "freeze":
            kw["freeze"] = value
        else:
            settings = replace(settings, **{key: value})
    assert summary(n, workers, settings, **kw) == expected


def test_reasons_say_why() -> None:
    """The trace says "spot interruption", "lifetime", "drift"; an interrupted VM's reap is no
    failure (the failure window never sees it)."""
    workers = (
        w("x", X, interruption=NOW + 90),
        w("y", X, interruption=NOW - INTERRUPT_REAP_AFTER - 5, vacated=True),
        w("old", U, busy=1, deadline=NOW - 1),
        w("d", I, fingerprint=OLD),
        w("c", I, fingerprint=NEW),
    )
    settings = replace(S, max_retire_per_cycle="5")  # the default budget, 10%, is one VM
    result = plan(PlanInput(0, workers, NOW, settings, fingerprint=NEW))
    by_reason = {a.reason.split(":")[0]: a for a in result.actions if a.kind is not a.kind.REAP}
    assert by_reason["spot interruption"].kind is ActionKind.VACATE
    assert [a.failure for a in result.actions if a.kind is ActionKind.REAP] == [False]
    assert by_reason["lifetime"].kind is ActionKind.RETIRE
    assert by_reason["drift"].kind is ActionKind.RETIRE
    assert [x.id for x in by_reason["drift"].workers] == ["d"]
    # with the default budget the lifetime retire spends this cycle's one disruption
    kinds = [a.kind for a in plan(PlanInput(0, workers, NOW, S, fingerprint=NEW)).actions]
    assert kinds.count(ActionKind.RETIRE) == 1


def test_the_roll_never_drops_supply_below_the_target() -> None:
    """A pool of 20 busy drifted VMs with a steady target of 20 (a chain like MinVMs+MaxVMs:
    n = target - staying), rolled with max_retire_per_cycle=3. A model world: a bought VM
    boots in one cycle and joins idle the next; a retired VM finishes its job within two
    cycles; an idle current VM picks up the job a retired one gave back. Every cycle the
    joined, staying VMs are at least the target, and the roll ends with every VM current."""
    target, settings = 20, PlannerSettings(retire_confirm_cycles=1, max_retire_per_cycle="3")
    workers = [w(f"d{k}", U, busy=1, fingerprint=OLD) for k in range(target)]
    seq = 0
    age: dict[str, int] = {}
    for cycle in range(60):
        staying = sum(1 for x in workers if x.state in SUPPLY and x.state is not R)
        n = target - staying
        result = plan(PlanInput(n, tuple(workers), NOW + cycle, settings, fingerprint=NEW))
        retired: set[str] = set()
        for a in result.actions:
            assert a.kind is not ActionKind.UNRETIRE
            if a.kind is ActionKind.SUBMIT:
                for _ in range(a.count):
                    seq += 1
                    workers.append(w(f"c{seq}", B, fingerprint=NEW))
            elif a.kind is ActionKind.RETIRE:
                assert a.mode is RetireMode.DRAIN and "drift" in a.reason
                retired |= {x.id for x in a.workers}
        # the world moves on
        nxt = []
        freed = 0
        for x in workers:
            age[x.id] = age.get(x.id, 0) + 1
            if x.id in retired:
                nxt.append(replace(x, state=R))
                age[x.id] = 0
            elif x.state is R:
                if age[x.id] >= 2:
                    freed += 1  # its job done, it leaves
                else:
                    nxt.append(x)
            elif x.state is B:
                nxt.append(replace(x, state=I))
            else:
                nxt.append(x)
        for k, x in enumerate(nxt):  # the jobs the leaving VMs finished come back to idle VMs
            if freed and x.state is I and x.fingerprint == NEW:
                nxt[k] = replace(x, state=U, slots_busy=1)
                freed -= 1
        workers = nxt
        joined = sum(1 for x in workers if x.state in (I, U))
        assert joined >= target, f"cycle {cycle}: {joined} joined and staying < {target}"
    assert all(x.fingerprint == NEW for x in workers)
    assert sum(1 for x in workers if x.state in (I, U)) == target
    assert len(workers) == target


def test_status_workers_says_spot_interruption_lifetime_and_drift() -> None:
    from pilotfactory.cli import format_workers
    from pilotfactory.factory.info import BatchQueueInfo
    from pilotfactory.factory.trace import CycleTrace, workers_view

    workers = (
        w("x", X, interruption=NOW + 90, machine="vm9"),
        w("old", U, busy=1, deadline=NOW - 1, machine="vm1"),
        w("d", I, fingerprint=OLD, machine="vm2"),
        w("c", I, fingerprint=NEW, machine="vm3"),
    )
    settings = replace(S, max_retire_per_cycle="5")
    result = plan(PlanInput(0, workers, NOW, settings, fingerprint=NEW))
    trace = CycleTrace(queue="q", time=NOW, batch=BatchQueueInfo("q", NOW, workers))
    trace.planned = list(result.actions)
    view = workers_view(trace)
    rows = {r["id"]: r for r in view["joined"] + view["unjoined"]}
    assert rows["x"]["why"].startswith("spot interruption: the provider ends it at")
    assert rows["x"]["this_cycle"] == "vacate: spot interruption"
    assert rows["old"]["this_cycle"] == "retire (drain): lifetime"
    assert rows["d"]["this_cycle"] == "retire (drain): drift"
    text = format_workers(view)
    assert "spot interruption" in text and ": drift" in text and ": lifetime" in text


contract_picks = st.lists(
    st.tuples(
        st.sampled_from(list(WorkerState)),
        st.integers(0, 3),  # busy slots
        st.sampled_from([None, NOW - 5, NOW + 500]),  # deadline
        st.sampled_from([None, OLD, NEW]),  # fingerprint
        st.sampled_from([None, NOW + 60, NOW - 1000]),  # interruption
        st.booleans(),  # vacated
    ),
    max_size=25,
)


@given(n=st.integers(-20, 20), picks=contract_picks, budget=st.sampled_from([None, "1", "3"]))
@settings(max_examples=300, deadline=None)
def test_contract_invariants(n: int, picks: list[tuple], budget: str | None) -> None:
    workers = [
        w(f"w{k}", s_, busy=b, deadline=d, fingerprint=f, interruption=i, vacated=v)
        for k, (s_, b, d, f, i, v) in enumerate(picks)
    ]
    settings_ = replace(S, max_retire_per_cycle=budget, retire_mode=RetireMode.KILL)
    res = plan(PlanInput(n, tuple(workers), NOW, settings_, fingerprint=NEW))
    touched = [x.id for a in res.actions for x in a.workers]
    assert len(touched) == len(set(touched)), "at most one action per worker per cycle"
    cap = max(1, -(-len(workers) // 10)) if budget is None else int(budget)
    gentle = 0
    for a in res.actions:
        for x in a.workers:
            if a.kind is ActionKind.VACATE:
                assert x.state is X and not x.vacated
            if a.kind is ActionKind.REAP and x.state is X:
                assert not a.failure and x.vacated
            if a.kind is ActionKind.UNRETIRE:
                leaving = (x.deadline is not None and x.deadline <= NOW) or x.fingerprint == OLD
                assert not leaving, "a VM that must go is never brought back"
        if a.kind is ActionKind.RETIRE and a.reason.startswith(("lifetime", "drift")):
            assert a.mode is not RetireMode.KILL, "lifetime and drift never evict"
            gentle += len(a.workers)
    assert gentle <= cap
    bought = sum(a.count for a in res.actions if a.kind is ActionKind.SUBMIT)
    replaced = sum(
        1 for a in res.actions if a.kind is ActionKind.VACATE for x in a.workers if x.slots_busy
    )  # a VM vacated with payload on it is replaced in the same cycle
    assert bought <= max(0, n) + cap + replaced


def test_a_vacated_busy_vm_is_replaced_in_the_same_cycle() -> None:
    """Found on real daemons: the chain counts demand from idle jobs, and the vacated payload
    is still running when the notice is seen, so n was 0 and the replacement came a cycle or
    more later. A VM vacated with payload on it is replaced at once, within the chain's
    maximum; an idle one needs no replacement."""
    busy_x = w("x", X, interruption=NOW + 90, machine="vm1", busy=1)
    idle_x = w("y", X, interruption=NOW + 90, machine="vm2")
    other = w("a", U, busy=1)
    assert summary(0, [busy_x, other]) == {"vacate": ["x"], "submit": 1}
    assert summary(0, [idle_x, other]) == {"vacate": ["y"]}
    assert summary(0, [busy_x, other], maximum=2) == {"vacate": ["x"], "submit": 1}
    assert summary(0, [busy_x, other], maximum=1) == {"vacate": ["x"]}  # no room
    assert summary(1, [busy_x, other], maximum=3) == {"vacate": ["x"], "submit": 2}
    assert summary(1, [busy_x, other], maximum=2) == {"vacate": ["x"], "submit": 1}
