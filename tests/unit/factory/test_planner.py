"""The planner: n + workers -> actions. Table-driven; one row per rule of DESIGN.md."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfactory.factory.info import RetireMode, Worker, WorkerKind, WorkerState
from pilotfactory.factory.planner import (
    ActionKind,
    Plan,
    PlanInput,
    PlannerMemory,
    PlannerSettings,
    plan,
    retire_cap,
)

NOW = 10_000.0
S = PlannerSettings(retire_confirm_cycles=1, boot_timeout=600, held_timeout=300)

P, B, I, U, R, RD, H, L = (
    WorkerState.PENDING,
    WorkerState.BOOTING,
    WorkerState.IDLE,
    WorkerState.BUSY,
    WorkerState.RETIRING,
    WorkerState.RETIRED,
    WorkerState.HELD,
    WorkerState.LOST,
)


def w(
    wid: str, state: WorkerState, since: float = NOW - 100, busy: int = 0, **kw: object
) -> Worker:
    kw.setdefault("retirement_time", 86400.0)  # drain-safe unless a case says otherwise
    return Worker(id=wid, queue="q", state=state, since=since, slots_busy=busy, **kw)  # type: ignore[arg-type]


def summary(
    n: int, workers: list[Worker], settings: PlannerSettings = S, kind: str = "vm", **kw: object
) -> dict[str, list[str] | int]:
    result = plan(
        PlanInput(
            n=n,
            workers=tuple(workers),
            now=NOW,
            settings=settings,
            worker_kind=WorkerKind(kind),
            **kw,  # type: ignore[arg-type]
        )
    )
    out: dict[str, list[str] | int] = {}
    for a in result.actions:
        if a.kind is ActionKind.SUBMIT:
            out["submit"] = a.count
        else:
            key = a.kind.value + (f":{a.mode}" if a.mode else "")
            out.setdefault(key, [])
            out[key] += [x.id for x in a.workers]  # type: ignore[operator]
    return out


CASES = [
    # (name, n, workers, expected)
    ("nothing to do", 0, [w("a", I)], {}),
    ("submit when nothing retiring", 3, [w("a", U, busy=1)], {"submit": 3}),
    (
        "unretire before submit",
        3,
        [w("r1", R), w("r2", R)],
        {"unretire": ["r1", "r2"], "submit": 1},
    ),
    (
        "unretire only as many as needed",
        1,
        [w("r1", R, retire_requested_at=1.0), w("r2", R, retire_requested_at=2.0)],
        {"unretire": ["r2"]},
    ),
    ("cancel pending before idle", -1, [w("i", I), w("p", P)], {"cancel": ["p"]}),
    ("held before pending", -1, [w("p", P), w("h", H, since=NOW - 10)], {"cancel": ["h"]}),
    (
        "newest pending first",
        -1,
        [w("old", P, since=NOW - 20), w("new", P, since=NOW - 10)],
        {"cancel": ["new"]},
    ),
    (
        "idle before busy",
        -2,
        [w("b", U, busy=1), w("i1", I), w("i2", I)],
        {"retire:drain": ["i1", "i2"]},
    ),
    (
        "longest idle first",
        -1,
        [w("short", I, since=NOW - 10), w("long", I, since=NOW - 900)],
        {"retire:drain": ["long"]},
    ),
    (
        "fewest busy slots first",
        -1,
        [w("b3", U, busy=3), w("b1", U, busy=1)],
        {"retire:drain": ["b1"]},
    ),
    ("booting is never taken away", -2, [w("boot", B)], {}),
    ("reap retired every cycle", 0, [w("gone", RD)], {"reap": ["gone"]}),
    (
        "reap booting past boot_timeout",
        0,
        [w("slow", B, since=NOW - 601), w("ok", B)],
        {"reap": ["slow"]},
    ),
    (
        "reap held past held_timeout",
        0,
        [w("h", H, since=NOW - 301), w("h2", H, since=NOW - 5)],
        {"reap": ["h"]},
    ),
    ("reap lost", 2, [w("l", L)], {"reap": ["l"], "submit": 2}),
    (
        "pilots: running ones are never removed by default",
        -3,
        [w("p", P), w("run", U, busy=1), w("idle", I)],
        {"cancel": ["p"]},
    ),
]


@pytest.mark.parametrize(("name", "n", "workers", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan_table(name: str, n: int, workers: list[Worker], expected: dict[str, object]) -> None:
    kind = "pilot" if name.startswith("pilots") else "vm"
    assert summary(n, workers, kind=kind) == expected


DRAIN_CASES = [
    # (name, retirement times of the workers, expected)
    (
        "drain where the retirement time covers a job",
        [7200.0, 3600.0],
        {"retire:drain": ["v0", "v1"]},
    ),
    ("peaceful where it does not", [3599.0, 0.0], {"retire:peaceful": ["v0", "v1"]}),
    ("peaceful where it is not advertised", [None], {"retire:peaceful": ["v0"]}),
    ("split per worker", [0.0, 86400.0], {"retire:drain": ["v1"], "retire:peaceful": ["v0"]}),
]


@pytest.mark.parametrize(
    ("name", "times", "expected"), DRAIN_CASES, ids=[c[0] for c in DRAIN_CASES]
)
def test_drain_falls_back_to_peaceful_per_worker(
    name: str, times: list[float | None], expected: dict[str, object]
) -> None:
    """A graceful drain on a startd whose MaxJobRetirementTime is below the queue's
    expected_job_length evicts its jobs at once; the planner decides, so the trace says it."""
    s = replace(S, expected_job_length=3600.0)
    workers = [w(f"v{i}", I, since=NOW - 100 + i, retirement_time=t) for i, t in enumerate(times)]
    assert summary(-len(times), workers, settings=s) == expected
    notes = plan(PlanInput(-len(times), tuple(workers), NOW, s)).notes
    assert any("instead of drain" in x for x in notes) == ("retire:peaceful" in expected)


def test_explicit_peaceful_and_pilots_never_drain() -> None:
    workers = [w("v", I, retirement_time=None)]
    assert summary(-1, workers, settings=replace(S, retire_mode=RetireMode.PEACEFUL)) == {
        "retire:peaceful": ["v"]
    }
    assert summary(
        -1, [w("p", U)], settings=replace(S, retire_mode=RetireMode.KILL), kind="pilot"
    ) == {"retire:kill": ["p"]}


def test_pilots_kill_mode_newest_first() -> None:
    s = replace(S, retire_mode=RetireMode.KILL)
    workers = [w("old", U, since=1.0), w("new", U, since=5.0), w("p", P)]
    assert summary(-2, workers, settings=s, kind="pilot") == {
        "cancel": ["p"],
        "retire:kill": ["new"],
    }


def test_pilots_kill_mode_builds_running_pilots_only_when_cancels_fall_short() -> None:
    """A site's running pilots are most of its jobs and stay raw until a decision reads them:
    cancelling pending ones that suffice must not build them; falling short, it does."""
    from pilotfactory.factory.info import WorkerSet

    s = replace(S, retire_mode=RetireMode.KILL)
    built: list[str] = []

    def build(wid: str) -> Worker:
        built.append(wid)
        return w(wid, U if wid.startswith("run") else P, since=float(len(wid)))

    def workers() -> WorkerSet:
        return WorkerSet(
            lazy={P: ["pend1", "pend2"], U: ["run1", "run2", "run3"]}, build=build, id_of=str
        )

    inp = PlanInput(n=-2, workers=workers(), now=NOW, settings=s, worker_kind=WorkerKind.PILOT)
    assert [x.id for a in plan(inp).actions for x in a.workers] == ["pend1", "pend2"]
    assert sorted(built) == ["pend1", "pend2"]
    built.clear()
    inp = replace(inp, n=-3, workers=workers())
    kinds = [a.kind for a in plan(inp).actions]
    assert kinds == [ActionKind.CANCEL, ActionKind.RETIRE]
    assert sorted(built) == ["pend1", "pend2", "run1", "run2", "run3"]


def test_retire_needs_confirmation_cycles() -> None:
    s = replace(S, retire_confirm_cycles=2)
    inp = PlanInput(n=-1, workers=(w("i", I),), now=NOW, settings=s)
    first = plan(inp)
    assert first.actions == ()
    assert "wait for retire_confirm_cycles=2" in first.notes[0]
    second = plan(inp, first.memory)
    assert [a.kind for a in second.actions] == [ActionKind.RETIRE]


def test_scale_up_resets_confirmation() -> None:
    s = replace(S, retire_confirm_cycles=2)
    workers = (w("i", I),)
    m1 = plan(PlanInput(n=-1, workers=workers, now=NOW, settings=s)).memory
    m2 = plan(PlanInput(n=1, workers=workers, now=NOW, settings=s), m1).memory
    third = plan(PlanInput(n=-1, workers=workers, now=NOW, settings=s), m2)
    assert third.actions == ()  # one idle gap after new demand must not retire


def test_scale_down_delay_after_scale_up() -> None:
    s = replace(S, scale_down_delay=600)
    up = plan(PlanInput(n=1, workers=(), now=NOW, settings=s))
    down = plan(PlanInput(n=-1, workers=(w("i", I),), now=NOW + 60, settings=s), up.memory)
    assert down.actions == ()
    assert "scale_down_delay" in down.notes[0]
    later = plan(PlanInput(n=-1, workers=(w("i", I),), now=NOW + 601, settings=s), up.memory)
    assert [a.kind for a in later.actions] == [ActionKind.RETIRE]


def test_freeze_blocks_retire_and_reap_but_not_submit() -> None:
    out = summary(2, [w("gone", RD)], freeze="collector shrank")
    assert out == {"submit": 2}
    assert summary(-1, [w("i", I)], freeze="x") == {}


def test_submit_blocked_by_backoff() -> None:
    res = plan(PlanInput(n=4, workers=(), now=NOW, settings=S, submit_blocked="quota"))
    assert res.actions == ()
    assert "blocked: quota" in res.notes[0]


def test_max_booting_caps_submits() -> None:
    s = replace(S, max_booting=3)
    assert summary(5, [w("p", P), w("b", B)], settings=s) == {"submit": 1}


@pytest.mark.parametrize(
    ("setting", "workers", "cap"),
    [(None, 10, None), ("3", 10, 3), ("10%", 50, 5), ("10%", 3, 1), ("0", 5, 0)],
)
def test_retire_cap(setting: str | None, workers: int, cap: int | None) -> None:
    assert retire_cap(setting, workers) == cap


def test_disruption_budget() -> None:
    s = replace(S, max_retire_per_cycle="2")
    out = summary(-5, [w(f"i{k}", I, since=float(k)) for k in range(5)], settings=s)
    assert out == {"retire:drain": ["i0", "i1"]}


states = st.sampled_from(list(WorkerState))


@given(
    n=st.integers(-50, 50),
    picks=st.lists(st.tuples(states, st.integers(0, 4), st.floats(0, NOW)), max_size=30),
)
def test_planner_invariants(n: int, picks: list[tuple[WorkerState, int, float]]) -> None:
    workers = [w(f"w{k}", s_, since=t, busy=b) for k, (s_, b, t) in enumerate(picks)]
    res = plan(PlanInput(n=n, workers=tuple(workers), now=NOW, settings=S))
    # A VM vacated with payload on it is replaced in the same cycle (n grows by one for each).
    replaced = sum(
        1 for a in res.actions if a.kind is ActionKind.VACATE for x in a.workers if x.slots_busy
    )
    up = n + replaced if n >= 0 else n
    touched: list[str] = []
    for a in res.actions:
        if a.kind is ActionKind.SUBMIT:
            assert up > 0 and 0 < a.count <= up
            continue
        touched += [x.id for x in a.workers]
        for x in a.workers:
            if a.kind is ActionKind.CANCEL:
                assert x.state in (WorkerState.PENDING, WorkerState.HELD)
            if a.kind is ActionKind.RETIRE and x.state is WorkerState.RETIRING:
                assert a.reason.endswith("sent again")  # a recorded retire never sent
            elif a.kind is ActionKind.RETIRE:
                assert n < 0 and x.state in (WorkerState.IDLE, WorkerState.BUSY)
            if a.kind is ActionKind.UNRETIRE:
                assert up > 0 and x.state is WorkerState.RETIRING
            if a.kind is ActionKind.REAP:
                assert x.state in (
                    WorkerState.RETIRED,
                    WorkerState.LOST,
                    WorkerState.BOOTING,
                    WorkerState.HELD,
                    WorkerState.PENDING,  # a VM request past pending_timeout
                )
    assert len(touched) == len(set(touched)), "a worker gets at most one action per cycle"
    taken = sum(
        len(a.workers) for a in res.actions if a.kind in (ActionKind.CANCEL, ActionKind.RETIRE)
    )
    assert taken <= max(0, -n)
    added = sum(a.size() for a in res.actions if a.kind in (ActionKind.SUBMIT, ActionKind.UNRETIRE))
    assert added <= max(0, up)


def test_memory_is_bounded_to_current_candidates() -> None:
    s = replace(S, retire_confirm_cycles=3)
    mem = PlannerMemory(candidate_cycles={"ghost": 2})
    res = plan(PlanInput(n=-1, workers=(w("i", I),), now=NOW, settings=s), mem)
    assert dict(res.memory.candidate_cycles) == {"i": 1}


def test_newest_pending_first_within_one_cluster() -> None:
    # QDate has whole seconds: one cluster's jobs tie on time, the highest proc is newest.
    workers = [w(f"15.{p}", P, since=NOW - 50, submitted_at=NOW - 50) for p in range(3)]
    assert summary(-2, workers) == {"cancel": ["15.2", "15.1"]}


def test_vm_request_never_fulfilled_is_cancelled_with_its_cause() -> None:
    """An open spot request or a grid job the gridmanager cannot act on stays PENDING: its
    cause is a note every cycle, and past pending_timeout it is cancelled as a failure."""
    s = replace(S, pending_timeout=900)
    cause = "capacity-not-available: no m5 in us-east-1a"
    young = w("young", P, since=NOW - 100, hold_reason=cause)
    old = w("old", P, since=NOW - 1000, hold_reason=cause)
    res = plan(PlanInput(n=0, workers=(young, old), now=NOW, settings=s))
    [reap] = [a for a in res.actions if a.kind is ActionKind.REAP]
    assert [x.id for x in reap.workers] == ["old"] and reap.failure
    assert "pending_timeout=900s" in reap.reason and cause in reap.reason
    [note] = [n for n in res.notes if "pending" in n]
    assert note.startswith(f"2 request(s) pending: {cause}") and "0s to go" in note


def test_pending_pilots_wait_for_slots_without_a_deadline() -> None:
    s = replace(S, pending_timeout=60)
    res = plan(
        PlanInput(
            n=0, workers=(w("p", P, since=0.0),), now=NOW, settings=s, worker_kind=WorkerKind.PILOT
        )
    )
    assert res.actions == () and res.notes == ()


def test_a_kept_vm_is_not_retired_until_keep_max() -> None:
    """PilotFactoryKeep on a slot (or its job) spares the VM, for keep_max at most."""
    s = replace(S, keep_max=3600)
    kept = w("kept", I, since=NOW - 100, keep=True)
    old = w("old-kept", I, since=NOW - 7200, keep=True)
    res = plan(PlanInput(n=-3, workers=(kept, old, w("plain", U, busy=1)), now=NOW, settings=s))
    retired = {x.id for a in res.actions if a.kind is ActionKind.RETIRE for x in a.workers}
    assert retired == {"old-kept", "plain"}
    assert any("1 worker(s) kept from retire by PilotFactoryKeep" in n for n in res.notes)


def test_a_recorded_retire_the_startd_does_not_show_is_sent_again() -> None:
    """The factory died between recording a retire and sending it: the VM is RETIRING by its
    record but its startd runs on; after RETIRE_RESEND_AFTER the retire goes out again."""
    lost = w(
        "lost", R, retire_requested_at=NOW - 900, retire_visible=False, retire_mode=RetireMode.DRAIN
    )
    fresh = w("fresh", R, retire_requested_at=NOW - 10, retire_visible=False)
    under_way = w("ok", R, retire_requested_at=NOW - 600, retire_visible=True)
    res = plan(PlanInput(n=0, workers=(lost, fresh, under_way), now=NOW, settings=S))
    [again] = [a for a in res.actions if a.kind is ActionKind.RETIRE]
    assert [x.id for x in again.workers] == ["lost"] and again.mode is RetireMode.DRAIN
    frozen = plan(PlanInput(n=0, workers=(lost,), now=NOW, settings=S, freeze="collector"))
    assert not frozen.actions


def test_work_coming_back_unretires_rather_than_resends() -> None:
    lost = w("lost", R, retire_requested_at=NOW - 900, retire_visible=False)
    res = plan(PlanInput(n=1, workers=(lost,), now=NOW, settings=S))
    assert [a.kind for a in res.actions] == [ActionKind.UNRETIRE]


# ---------------------------------------------------------------------------- why not


def held(res: Plan) -> list[tuple[str, str, int, tuple[str, ...]]]:
    return [(h.what, h.reason, h.count, h.workers) for h in res.held_back]


def test_why_not_names_each_worker_held_from_retire_and_why() -> None:
    s = replace(S, retire_confirm_cycles=3, max_retire_per_cycle="1", keep_max=3600)
    workers = (
        w("k", I, since=NOW - 500, keep=True),
        w("a", I, since=NOW - 400),
        w("b", I, since=NOW - 300),
        w("c", U, busy=1),
    )
    memory = PlannerMemory(candidate_cycles={"a": 2, "b": 2})
    res = plan(PlanInput(n=-3, workers=workers, now=NOW, settings=s), memory)
    assert [x.id for a in res.actions for x in a.workers] == ["a"]
    assert held(res) == [
        ("retire", "protected: PilotFactoryKeep (honoured for keep_max=3600s)", 1, ("k",)),
        ("retire", "confirmation 1/3", 1, ("c",)),
        ("retire", "disruption budget: max_retire_per_cycle=1 (1 this cycle)", 1, ("b",)),
    ]


def test_why_not_for_a_whole_surplus_and_for_buying() -> None:
    frozen = plan(PlanInput(n=-2, workers=(w("i", I),), now=NOW, settings=S, freeze="ads gone"))
    assert held(frozen) == [("retire", "circuit breaker: ads gone", 2, ())]
    short = plan(PlanInput(n=-3, workers=(w("i", I),), now=NOW, settings=S))
    assert short.held_back[-1].count == 2 and "only 1 worker(s)" in short.held_back[-1].reason
    s = replace(S, scale_down_delay=600)
    up = plan(PlanInput(n=1, workers=(), now=NOW, settings=s))
    down = plan(PlanInput(n=-1, workers=(w("i", I),), now=NOW + 60, settings=s), up.memory)
    assert held(down) == [
        ("retire", "scale_down_delay=600s since the last scale-up, 540s to go", 1, ())
    ]
    blocked = plan(PlanInput(n=4, workers=(), now=NOW, settings=S, submit_blocked="quota"))
    assert held(blocked) == [("buy", "submit 4 blocked: quota", 4, ())]
    capped = plan(PlanInput(n=5, workers=(w("p", P),), now=NOW, settings=replace(S, max_booting=3)))
    assert held(capped) == [("buy", "submit capped 5->2: max_booting=3", 3, ())]
    assert plan(PlanInput(n=-1, workers=(w("i", I),), now=NOW, settings=S)).held_back == ()


def test_why_not_says_cancel_for_pilots() -> None:
    s = replace(S, retire_confirm_cycles=2)
    res = plan(PlanInput(n=-2, workers=(w("p1", P), w("p2", P)), now=NOW, settings=s,
                         worker_kind=WorkerKind.PILOT))  # fmt: skip
    assert held(res) == [("cancel", "confirmation 1/2", 2, ("p1", "p2"))]
    frozen = plan(PlanInput(n=-1, workers=(w("p", P),), now=NOW, settings=S, freeze="x",
                            worker_kind=WorkerKind.PILOT))  # fmt: skip
    assert held(frozen)[0][0] == "cancel"
