"""The safety rails as tables of cycles: what each sees, what it answers, what it remembers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pilotfactory.factory.info import BatchQueueInfo, Worker, WorkerState
from pilotfactory.factory.rails import Backoff, CircuitBreaker, next_delay

S = WorkerState


def vm(wid: str, state: WorkerState, master: bool | None = True, submitted: float = 0.0) -> Worker:
    return Worker(wid, "q", state, 0.0, master_seen=master, submitted_at=submitted)


def snap(workers: list[Worker], ads: int | None = None) -> BatchQueueInfo:
    return BatchQueueInfo("q", 0.0, tuple(workers), pool_startds=ads)


JOINED4 = [vm(f"w{i}", S.BUSY) for i in range(4)]

BREAKER_CASES = [
    # (name, cycles: list of (workers, slot ads), expected answers: frozen or not)
    ("steady pool", [(JOINED4, 8), (JOINED4, 8)], [False, False]),
    (
        "retiring VMs keep their master: not a vanish",
        [(JOINED4, 8), ([vm(f"w{i}", S.RETIRED, master=True) for i in range(4)], 8)],
        [False, False],
    ),
    (
        "joined workers lose startd and master at once: freeze",
        [(JOINED4, 8), ([vm(f"w{i}", S.BOOTING, master=False) for i in range(4)], 8)],
        [False, True],
    ),
    ("collector returns far fewer slot ads: freeze", [(JOINED4, 8), (JOINED4, 3)], [False, True]),
    (
        "a lasting outage stays frozen, then is accepted after accept_after cycles",
        [(JOINED4, 8)] + [(JOINED4, 2)] * 4 + [(JOINED4, 2)],
        [False, True, True, True, False, False],
    ),
    ("too small a pool to judge", [(JOINED4[:1], 1), ([], 0)], [False, False]),
    # two VMs whose ads a restarted collector lost (real pool): frozen
    ("two of two vanish", [(JOINED4[:2], 2), ([], 0)], [False, True]),
    (
        "a mass spot reclaim is the provider's word, not lost ads (issue 18)",
        [(JOINED4, None), ([vm(f"w{i}", S.INTERRUPTED, master=False) for i in range(4)], None)],
        [False, False],
    ),
]


@pytest.mark.parametrize(
    ("name", "cycles", "frozen"), BREAKER_CASES, ids=[c[0] for c in BREAKER_CASES]
)
def test_circuit_breaker(name: str, cycles: list, frozen: list[bool]) -> None:
    breaker = CircuitBreaker(ratio=0.5, accept_after=3)
    answers = [breaker.check(snap(ws, ads)) is not None for ws, ads in cycles]
    assert answers == frozen


def test_pilot_breaker_watches_only_the_pool_gauge() -> None:
    """Running pilots that end (held, or gone) are not a collector losing ads; a pilot queue's
    breaker still freezes on the pool-wide slot-ad count."""
    running = [replace(w, master_seen=None) for w in JOINED4]
    ended = [replace(w, state=S.HELD, master_seen=None) for w in JOINED4]
    pilots = CircuitBreaker(ratio=0.5, accept_after=3, vms=False)
    assert pilots.check(snap(running, 8)) is None
    assert pilots.check(snap(ended, 8)) is None
    assert pilots.check(snap(ended, 2)) is not None
    vms = CircuitBreaker(ratio=0.5, accept_after=3)
    vms.check(snap(running, 8))
    assert vms.check(snap(ended, 8)) is not None  # the same picture, for VMs, is suspect


def test_the_factorys_own_retires_do_not_freeze_the_pool() -> None:
    """Found by the what-if runs of the ECM example: IdleShutdown retired 8 of 11 VMs in one
    cycle, their slot ads left the gauge on purpose, and every queue of the pool froze reaping
    for 3 cycles (idle VM-hours). What left on purpose comes off the reference; a collector
    losing ads besides still freezes."""
    breaker = CircuitBreaker(ratio=0.5, accept_after=3)
    assert breaker.check(snap(JOINED4, 11)) is None
    retired = BatchQueueInfo("q", 0.0, tuple(JOINED4), pool_startds=3, pool_left=8)
    assert breaker.check(retired) is None
    assert breaker.check(snap(JOINED4, 3)) is None
    lost_too = BatchQueueInfo("q", 0.0, tuple(JOINED4), pool_startds=1, pool_left=0)
    assert breaker.check(lost_too) is not None
    breaker = CircuitBreaker(ratio=0.5, accept_after=3)
    breaker.check(snap(JOINED4, 20))
    partial = BatchQueueInfo("q", 0.0, tuple(JOINED4), pool_startds=4, pool_left=8)
    assert breaker.check(partial) is not None  # 4 of the 12 that stayed: still suspect


def test_breaker_keeps_its_reference_while_frozen() -> None:
    breaker = CircuitBreaker()
    breaker.check(snap(JOINED4, 8))
    assert breaker.check(snap(JOINED4, 1)) is not None
    assert breaker.pool_startds == 8 and breaker.joined_ids == {w.id for w in JOINED4}


@pytest.mark.parametrize(
    ("delay", "expected"), [(0.0, 60.0), (60.0, 120.0), (1000.0, 1800.0), (1800.0, 1800.0)]
)
def test_next_delay(delay: float, expected: float) -> None:
    assert next_delay(delay, 60.0, 1800.0) == expected


def test_submit_backoff_grows_and_resets() -> None:
    b = Backoff(initial=60, maximum=200)
    b.back_off(0.0, "quota")
    assert b.blocked(59.0, []) == "backing off 1s more (until 00:01:00Z): quota"
    assert b.blocked(60.0, []) is None
    b.back_off(60.0, "quota")
    b.back_off(180.0, "quota")
    assert (b.delay, b.until) == (200.0, 380.0)
    b.submitted()
    b.back_off(400.0, "again")
    assert b.delay == 60.0


def test_failure_stop_needs_all_of_the_last_k_to_fail() -> None:
    b = Backoff(initial=60, maximum=1800, failure_limit=3)
    for failure in (True, False, True):
        b.ended(failure, "lost")
    assert b.blocked(0.0, []) is None
    for _ in range(3):
        b.ended(True, "never joined\nwithin boot_timeout")
    why = b.blocked(10.0, [])
    assert why is not None and "last 3 workers all failed" in why and "\n" not in why
    assert (b.failure_delay, b.until, len(b.endings)) == (60.0, 70.0, 0)


def test_only_a_worker_that_joins_after_the_stop_resets_it() -> None:
    b = Backoff(initial=60, maximum=1800, failure_limit=1)
    b.ended(True, "lost")
    assert b.blocked(100.0, []) is not None
    old_joined = [vm("old", S.BUSY, submitted=50.0)]
    booting = [vm("new", S.BOOTING, master=False, submitted=200.0)]
    b.blocked(300.0, old_joined + booting)
    assert b.failed_since == 100.0 and b.failure_delay == 60.0
    b.blocked(400.0, [vm("new", S.IDLE, submitted=200.0)])
    assert b.failed_since is None and b.failure_delay == 0.0


def test_the_failure_stop_dates_lazy_pilots_without_building_them() -> None:
    """A pilot queue in its failure stop asks every cycle whether a running pilot was submitted
    since: answered from the raw items' dates (a large site runs tens of thousands)."""
    from pilotfactory.factory.info import Worker, WorkerSet

    built: list[float] = []

    def build(qdate: float) -> Worker:
        built.append(qdate)
        return Worker(f"{qdate:g}.0", "q", S.BUSY, qdate, submitted_at=qdate)

    def running(*dates: float) -> WorkerSet:
        return WorkerSet(lazy={S.BUSY: list(dates)}, build=build, submitted_of=lambda q: q)

    b = Backoff(initial=60, maximum=1800, failure_limit=1)
    b.ended(True, "held")
    assert b.blocked(100.0, running(10.0, 20.0)) is not None
    assert b.failed_since == 100.0
    b.blocked(200.0, running(10.0, 20.0))
    assert b.failed_since == 100.0  # none submitted since: still stopped
    b.blocked(300.0, running(10.0, 150.0))
    assert b.failed_since is None and b.failure_delay == 0.0
    assert built == []
