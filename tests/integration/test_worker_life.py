"""The worker VM contract, factory side, on real daemons (issue 18): a spot notice seen by the
VM's startd cron makes the factory vacate that VM and buy its replacement in the same cycle,
and the provider's termination afterwards is no failure; a template change rolls a busy pool
to the new template with no payload evicted.

The VMs are the shipped ``etc/worker/worker.sh`` rendered by the ``EC2`` plugin, booted by
``vmemu.Emulator`` on a moto server (the same world as ``test_elastic.py``, whose fixtures
and ``Run`` these scenarios reuse, on the EC2 path only).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.factory.contract import TAG_FINGERPRINT
from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.planner import ActionKind
from tests.integration.conftest import CondorPool
from tests.integration.test_elastic import (  # noqa: F401 - fixtures
    QUEUE,
    Cloud,
    Keys,
    Run,
    cloud,
    emulator,
    keys,
    workdir,
)
from tests.integration.vmemu import Emulator

pytestmark = [pytest.mark.condor, pytest.mark.elastic]

REPO = Path(__file__).resolve().parents[2]
# The template as shipped, with the startd's ad interval of the emulator's image (the shipped
# 20 s would only make every wait longer).
FAST = (
    "UPDATE_INTERVAL = 20\nMASTER_UPDATE_INTERVAL = 20",
    "UPDATE_INTERVAL = 5\nMASTER_UPDATE_INTERVAL = 5",
)


def template(run: Run, marker: str = "") -> Path:
    text = (REPO / "etc" / "worker" / "worker.sh").read_text()
    assert FAST[0] in text, "the shipped template's update intervals moved"
    text = text.replace(*FAST) + (f"# {marker}\n" if marker else "")
    path = run.workdir / f"worker-{uuid.uuid4().hex[:6]}.sh"
    path.write_text(text)
    return path


@pytest.fixture
def run(
    request: pytest.FixtureRequest,
    condor_pool: CondorPool,
    cloud: Cloud,  # noqa: F811
    keys: Keys,  # noqa: F811
    emulator: Emulator,  # noqa: F811
    workdir: Path,  # noqa: F811
) -> Iterator[Run]:
    r = Run("EC2", condor_pool, cloud, keys, emulator, workdir)
    r.before = set(r.instances())
    r.requests_before = set(r.spot_requests())
    yield r
    r.cleanup()
    r.row("after cleanup")
    request.node.user_properties.append(("timeline", r.rows))


def busy_instances(run: Run) -> list[str]:
    ads = run.port.query_startds(
        {},
        ["EC2InstanceID", "State"],
        constraint='State == "Claimed" && EC2InstanceID =!= undefined',
    )
    mine = set(run.instances())
    return sorted({str(a["EC2InstanceID"]) for a in ads if a["EC2InstanceID"] in mine})


def settings(run: Run, tpl: Path, **more: Any) -> dict[str, Any]:
    return {"batchsubmit.ec2.user_data_file": tpl, **more}


def test_spot_notice_vacates_and_replaces_in_one_cycle(run: Run) -> None:
    run.configure(**settings(run, template(run), **{"sched.maxvms.maximum": 3}))
    jobs = run.payload(2, 90)
    run.until("two busy VMs", lambda: len(busy_instances(run)) == 2, timeout=240)
    victim = busy_instances(run)[0]
    run.emu.interrupt(victim, after=60)
    run.row(f"interruption notice for {victim}, terminated in 60 s")
    since = len(run.traces)

    def seen() -> bool:
        return any(
            w.state is WorkerState.INTERRUPTED
            for t in run.traces[since:]
            if t.batch is not None
            for w in t.batch.workers
        )

    run.until("the factory sees the notice", seen, timeout=60)
    first = next(
        t
        for t in run.traces[since:]
        if t.batch is not None and any(w.state is WorkerState.INTERRUPTED for w in t.batch.workers)
    )
    kinds = [a.kind for a in first.planned]
    # The cycle that first sees the notice vacates the VM and buys its replacement.
    assert ActionKind.VACATE in kinds, first.decision()
    assert ActionKind.SUBMIT in kinds, first.decision()
    # The requeued payload runs again, on the replacement; the provider ends the VM.
    run.until(
        "the payload done and the interrupted VM gone",
        lambda: not run.payload_jobs() and run.instances().get(victim) == "terminated",
        timeout=360,
    )
    run.until(
        "the interrupted worker reaped",
        lambda: not any(w.instance_id == victim for w in run.workers()),
        timeout=60,
    )
    queue = run.factory.queues[QUEUE] if run.factory else None
    assert queue is not None
    # No failure: never LOST, never in the failure window, nothing held back by it.
    lost = [
        w.id
        for t in run.traces
        for w in (t.batch.workers if t.batch else ())
        if w.state is WorkerState.LOST
    ]
    assert lost == []
    assert not any(fail for fail, _ in queue.backoff.endings), list(queue.backoff.endings)
    assert queue.counters.get("vacated") == 1
    restarts = run.restarts()
    assert len(restarts) == len(jobs)
    # Only the vacated job started twice (requeued by design), and none was lost.
    assert sorted(restarts.values()) in ([1, 2], [1, 3]), restarts
    assert not run.emu.errors, run.emu.errors


def fingerprints(run: Run, live: bool = True) -> dict[str, str]:
    """Fingerprint tag of each instance of the run (live ones only, by default)."""
    ids = [i for i, s in run.instances().items() if not live or s in ("pending", "running")]
    if not ids:
        return {}
    found = run.cloud.client.describe_instances(InstanceIds=ids)
    return {
        i["InstanceId"]: next(
            (t["Value"] for t in i.get("Tags", []) if t["Key"] == TAG_FINGERPRINT), ""
        )
        for r in found["Reservations"]
        for i in r["Instances"]
    }


def test_a_template_change_rolls_the_pool_with_no_eviction(run: Run) -> None:
    more = {"sched.maxvms.maximum": 4, "max_retire_per_cycle": 1}
    run.configure(**settings(run, template(run), **more))
    run.payload(2, 120)
    run.until("two busy VMs", lambda: len(busy_instances(run)) == 2, timeout=240)
    old = set(fingerprints(run).values())
    assert len(old) == 1 and "" not in old, old
    # The operator ships a new template and reloads; the work goes on.
    run.configure(**settings(run, template(run, "v2"), **more))
    run.row("template changed, reloaded")
    run.payload(2, 20)

    def rolled() -> bool:
        return not (set(fingerprints(run).values()) & old) and not run.payload_jobs()

    run.until("no live VM on the old template and the payload done", rolled, timeout=480)
    launched = set(fingerprints(run, live=False).values())
    assert launched - old, f"no VM launched from the new template: {launched}"
    reasons = [a.reason for a in run.acted("retire")]
    assert any("drift" in r for r in reasons), reasons
    restarts = run.restarts()
    assert len(restarts) == 4
    assert set(restarts.values()) == {1}, f"payload evicted by the roll: {restarts}"
    assert not run.emu.errors, run.emu.errors
