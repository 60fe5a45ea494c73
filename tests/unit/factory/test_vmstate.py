"""The VM state table as a matrix: every phase x joined x master x retire record x un-retire."""

from __future__ import annotations

import itertools

import pytest

from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.vmstate import STATE_TABLE, Phase, VMObservation, derive_state

S = WorkerState
NOW, GRACE = 10_000.0, 120.0


def expected(
    phase: Phase,
    joined: bool,
    busy: bool,
    master: bool,
    instance: bool,
    retired: bool,
    unret: str,
    interrupted: bool = False,
) -> WorkerState | None:
    """DESIGN's rules written out independently of the table's order."""
    if phase is Phase.HELD:
        return S.HELD
    if phase is Phase.QUEUED:
        return S.PENDING
    if phase is Phase.GONE:
        return None
    if phase is Phase.ENDED_UNASKED:
        return S.LOST
    if phase is Phase.UNKNOWN:
        return S.UNKNOWN
    if interrupted:  # the provider's notice beats any other reading of a running VM
        return S.INTERRUPTED
    if not (instance or joined or master):
        return S.PENDING
    if joined:
        return S.RETIRING if retired else (S.BUSY if busy else S.IDLE)
    if retired:
        return S.RETIRED
    if unret == "recent":
        return S.RETIRING
    return S.BOOTING


MATRIX = list(
    itertools.product(
        list(Phase),
        [False, True],  # joined (slot ads present)
        [False, True],  # a slot busy
        [False, True],  # master ad seen
        [False, True],  # instance id known
        [False, True],  # retire recorded
        ["never", "recent", "old"],  # un-retire
        [False, True],  # an interruption notice (slots) or its record (tag / job ad)
    )
)


@pytest.mark.parametrize(
    ("phase", "joined", "busy", "master", "instance", "retired", "unret", "interrupted"), MATRIX
)
def test_state_matrix(
    phase: Phase,
    joined: bool,
    busy: bool,
    master: bool,
    instance: bool,
    retired: bool,
    unret: str,
    interrupted: bool,
) -> None:
    unretired_at = {"never": None, "recent": NOW - 60, "old": NOW - 600}[unret]
    obs = VMObservation(
        phase=phase,
        entered=NOW - 1000,
        started=NOW - 900,
        instance_known=instance,
        slots_total=4 if joined else 0,
        slots_busy=1 if joined and busy else 0,
        slot_ads=2 if joined else 0,
        first_activity=NOW - 500 if joined else None,
        last_activity=NOW - 50 if joined else None,
        master_seen=master,
        retire_requested_at=NOW - 300 if retired else None,
        unretired_at=unretired_at,
        interrupted=interrupted,
    )
    got = derive_state(obs, NOW, GRACE)
    want = expected(phase, joined, busy, master, instance, retired, unret, interrupted)
    assert (got[0] if got else None) is want


@pytest.mark.parametrize(
    ("obs", "since"),
    [
        (VMObservation(Phase.RUNNING, 1.0, started=2.0, instance_known=True), 2.0),  # booting
        (VMObservation(Phase.RUNNING, 1.0, instance_known=True), 1.0),  # booting, no start
        # vanished unasked: boot_timeout counts from the last time its slots were seen
        (
            VMObservation(Phase.RUNNING, 1.0, started=2.0, instance_known=True, last_joined=50.0),
            50.0,
        ),
        (VMObservation(Phase.RUNNING, 1.0, slot_ads=1, first_activity=5.0, last_activity=7.0), 7.0),
        (
            VMObservation(
                Phase.RUNNING, 1.0, slot_ads=1, slots_busy=1, first_activity=5.0, last_activity=7.0
            ),
            5.0,
        ),
        (VMObservation(Phase.RUNNING, 1.0, master_seen=True, retire_requested_at=9.0), 9.0),
        (VMObservation(Phase.RUNNING, 1.0, master_seen=True, unretired_at=NOW - 1), NOW - 1),
    ],
)
def test_since(obs: VMObservation, since: float) -> None:
    result = derive_state(obs, NOW, GRACE)
    assert result is not None and result[1] == since


def test_grace_counts_from_the_last_time_the_slots_were_seen() -> None:
    """An un-retired startd that came back and then vanished again is not still restarting."""
    obs = VMObservation(
        Phase.RUNNING, 1.0, master_seen=True, unretired_at=NOW - 500, last_joined=NOW - 30
    )
    assert derive_state(obs, NOW, GRACE) == (S.RETIRING, NOW - 500)
    assert derive_state(obs, NOW + 200, GRACE) == (S.BOOTING, NOW - 30)


def test_every_row_is_reached() -> None:
    """No row is dead: each one decides at least one cell of the matrix."""
    hit: set[str] = set()
    for phase, joined, busy, master, instance, retired, unret, interrupted in MATRIX:
        obs = VMObservation(
            phase,
            1.0,
            instance_known=instance,
            slot_ads=int(joined),
            slots_busy=int(joined and busy),
            master_seen=master,
            retire_requested_at=5.0 if retired else None,
            unretired_at={"never": None, "recent": NOW - 60, "old": NOW - 600}[unret],
            interrupted=interrupted,
        )
        for name, rule, _, _ in STATE_TABLE:
            if rule(obs, NOW, GRACE):
                hit.add(name)
                break
    assert hit == {row[0] for row in STATE_TABLE}
