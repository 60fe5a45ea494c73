"""The condor port against a real HTCondor pool, once per implementation (bindings and CLI).

Every wait polls with a deadline; none sleeps a fixed time. Jobs carry a per-test tag so a test
only ever sees its own jobs, and the admin tests leave the one startd serving (they repair it
first if an earlier failure left it off or draining).
"""

from __future__ import annotations

import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pilotfactory.backends.condor.bindings import BindingsCondor, classify
from pilotfactory.backends.condor.cli import CliCondor
from pilotfactory.factory.constraints import job_ids_constraint
from pilotfactory.factory.ports import (
    CondorPermission,
    CondorPort,
    CondorRejected,
    CondorTarget,
    CondorUnreachable,
)
from tests.conftest import wait_for

if TYPE_CHECKING:  # tests/integration is not a package; pytest loads conftest itself
    from conftest import CondorPool  # type: ignore[import-not-found,unused-ignore]

pytestmark = [pytest.mark.condor, pytest.mark.timeout(240)]

BACKENDS: dict[str, type[BindingsCondor] | type[CliCondor]] = {
    "bindings": BindingsCondor,
    "cli": CliCondor,
}
RUNNING, REMOVED, COMPLETED = 2, 3, 4


Backend = type[BindingsCondor] | type[CliCondor]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def port(backend: Backend, condor_pool: CondorPool) -> CondorPort:
    port: CondorPort = backend(condor_pool.target())
    assert isinstance(port, CondorPort)
    return port


@pytest.fixture
def job_dir(condor_pool: CondorPool) -> Iterator[Path]:
    path = condor_pool.job_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:12]


def sleep_job(job_dir: Path, tag: str, seconds: int) -> dict[str, str]:
    return {
        "executable": "/bin/sleep",
        "arguments": str(seconds),
        "initialdir": str(job_dir),
        "log": "job.log",
        "output": "out.$(Process)",
        "error": "err.$(Process)",
        "request_cpus": "1",
        "request_memory": "64",
        "job_lease_duration": "30",
        "+PfTestTag": f'"{tag}"',
    }


def startd_serving(port: CondorPort, machine: str) -> list[dict[str, Any]]:
    """The machine's slots, if its startd is up and neither retiring nor draining."""
    slots = port.query_startds(
        {"Machine": machine}, ["Name", "SlotType", "Activity", "Draining", "State"]
    )
    busy = any(s.get("Draining") or s.get("Activity") == "Retiring" for s in slots)
    has_pslot = any(s.get("SlotType") == "Partitionable" for s in slots)
    return slots if has_pslot and not busy else []


@pytest.fixture
def serving_startd(condor_pool: CondorPool) -> str:
    """The pool's machine with a serving startd; repairs what a failed admin test left behind."""
    machine: str = condor_pool.machine
    port = BindingsCondor(condor_pool.target())
    if not startd_serving(port, machine):
        slots = port.query_startds({"Machine": machine}, ["Name", "Draining"])
        if any(s.get("Draining") for s in slots):
            port.cancel_drain(machine)
        elif not slots:
            port.unretire(machine)
        wait_for("a serving startd", lambda: startd_serving(port, machine), 60)
    return machine


def job_states(port: CondorPort, tag: str) -> dict[str, int]:
    """``cluster.proc`` -> JobStatus of this test's jobs still in the queue."""
    ads = port.query_jobs({"PfTestTag": tag}, ["ClusterId", "ProcId", "JobStatus"])
    return {f"{ad['ClusterId']}.{ad['ProcId']}": ad["JobStatus"] for ad in ads}


def test_submit_query_edit_remove(port: CondorPort, job_dir: Path, tag: str) -> None:
    since = time.time() - 1
    result = port.submit(sleep_job(job_dir, tag, 300), count=3)
    assert result.count == 3
    assert result.job_ids == [f"{result.cluster}.{p}" for p in range(3)]

    projection = ["ClusterId", "ProcId", "JobStatus", "PfTestTag", "Owner"]
    ads = port.query_jobs({"PfTestTag": tag}, projection)
    assert sorted(ad["ProcId"] for ad in ads) == [0, 1, 2]
    for ad in ads:
        assert set(ad) <= set(projection)
        assert ad["ClusterId"] == result.cluster
        assert ad["PfTestTag"] == tag
        assert isinstance(ad["JobStatus"], int)
    later = port.query_jobs({"PfTestTag": tag}, ["ProcId"], constraint="ProcId > 0")
    assert sorted(ad["ProcId"] for ad in later) == [1, 2]
    assert port.query_jobs({"PfTestTag": tag, "ProcId": 7}, ["ProcId"]) == []

    # A string, an expression (read back as its value) and a boolean.
    port.edit(result.job_ids[:2], "PfRetire", '"requested"')
    port.edit(result.job_ids[:2], "PfCount", "41 + 1")
    port.edit(result.job_ids[2:], "PfFlag", "true")
    edited = {
        ad["ProcId"]: ad
        for ad in port.query_jobs({"PfTestTag": tag}, ["ProcId", "PfRetire", "PfCount", "PfFlag"])
    }
    assert edited[0]["PfRetire"] == edited[1]["PfRetire"] == "requested"
    assert edited[0]["PfCount"] == 42
    assert "PfRetire" not in edited[2] and edited[2]["PfFlag"] is True
    assert port.query_jobs({"PfTestTag": tag, "PfRetire": "requested"}, ["ProcId"]) != []

    assert port.remove(result.job_ids, "pilotfactory integration test") == 3
    wait_for("the jobs to leave the queue", lambda: not job_states(port, tag), 60)

    def removed() -> list[dict[str, Any]]:
        ads = port.query_history(
            {"PfTestTag": tag}, ["ProcId", "JobStatus", "RemoveReason"], since, 10
        )
        return ads if len(ads) == 3 else []

    history = wait_for("the removed jobs in the history", removed, 30)
    assert {ad["JobStatus"] for ad in history} == {REMOVED}
    assert all("pilotfactory integration test" in ad["RemoveReason"] for ad in history)
    assert len(port.query_history({"PfTestTag": tag}, ["ProcId"], since, 2)) == 2
    assert port.query_history({"PfTestTag": tag}, ["ProcId"], time.time() + 3600, 10) == []
    assert port.remove(result.job_ids, "again") == 0


def test_many_job_ids_are_read_and_edited_exactly(
    port: CondorPort, job_dir: Path, tag: str
) -> None:
    """450 of 600 held jobs in 20 clusters, named by ``job_ids_constraint`` (a search tree on
    ClusterId, each cluster's procs a ``member`` list): the real schedd reads and edits
    exactly those. A flat ``||`` chain of this many terms failed
    to evaluate, and one term per job is slow for the schedd."""
    held = {**sleep_job(job_dir, tag, 300), "hold": "true"}
    ids = [j for _ in range(20) for j in port.submit(held, count=30).job_ids]
    try:
        wanted = sorted(random.Random(7).sample(ids, 450))
        constraint = job_ids_constraint(wanted)
        assert constraint is not None and "ifThenElse" in constraint
        ads = port.query_jobs({"PfTestTag": tag}, ["ClusterId", "ProcId"], constraint)
        assert sorted(f"{ad['ClusterId']}.{ad['ProcId']}" for ad in ads) == wanted
        port.edit(wanted, "PfPicked", "true")  # the CLI port edits by the same tree
        picked = port.query_jobs({"PfTestTag": tag, "PfPicked": True}, ["ClusterId", "ProcId"])
        assert sorted(f"{ad['ClusterId']}.{ad['ProcId']}" for ad in picked) == wanted
    finally:
        port.remove(ids, "pilotfactory integration test")


def test_query_startds_and_masters(port: CondorPort, backend: Backend, serving_startd: str) -> None:
    machine = serving_startd
    slots = port.query_startds({"Machine": machine}, ["Name", "Machine", "Cpus", "SlotType"])
    assert slots and all(s["Machine"] == machine for s in slots)
    pslots = [s for s in slots if s["SlotType"] == "Partitionable"]
    assert len(pslots) == 1 and isinstance(pslots[0]["Cpus"], int) and pslots[0]["Cpus"] >= 1
    assert set(pslots[0]) == {"Name", "Machine", "Cpus", "SlotType"}
    assert port.query_startds({}, ["Name"], constraint='SlotType == "Partitionable"') == [
        {"Name": pslots[0]["Name"]}
    ]
    masters = port.query_masters({"Name": machine}, ["Name", "Machine", "MyType"])
    assert masters == [{"Name": machine, "Machine": machine, "MyType": "DaemonMaster"}]
    assert port.query_masters({"Name": "no-such-host.invalid"}, ["Name"]) == []
    # The default target (None, None) is the local pool of the process's configuration.
    local = backend(CondorTarget())
    assert local.query_masters({"Name": machine}, ["Name"]) == [{"Name": machine}]


def test_retire_peaceful_then_unretire(
    port: CondorPort, job_dir: Path, tag: str, serving_startd: str
) -> None:
    machine = serving_startd
    since = time.time() - 1
    # Long enough that the job cannot end before the Retiring slot reaches the collector on a
    # loaded machine (12 s once did: the startd then exits and never shows Retiring).
    result = port.submit(sleep_job(job_dir, tag, 30), count=1)
    wait_for("the job to run", lambda: job_states(port, tag) == {result.job_ids[0]: RUNNING}, 60)

    port.retire_peaceful(machine)
    retiring = wait_for(
        "a Retiring slot",
        lambda: [
            s
            for s in port.query_startds({"Machine": machine}, ["Name", "Activity"])
            if s.get("Activity") == "Retiring"
        ],
        20,
    )
    assert retiring
    assert job_states(port, tag) == {result.job_ids[0]: RUNNING}, (
        "a peaceful retire must not evict the job"
    )

    # The job runs to completion, then the startd exits and its ads leave the collector.
    wait_for("the job to finish", lambda: not job_states(port, tag), 60)
    done = port.query_history({"ClusterId": result.cluster}, ["JobStatus", "ExitCode"], since, 5)
    assert done == [{"JobStatus": COMPLETED, "ExitCode": 0}]
    wait_for(
        "the startd to leave", lambda: not port.query_startds({"Machine": machine}, ["Name"]), 30
    )
    assert port.query_masters({"Name": machine}, ["Name"]), "only the startd goes, not the master"

    port.unretire(machine)
    wait_for("the startd to serve again", lambda: startd_serving(port, machine), 60)
    port.submit(sleep_job(job_dir, tag, 1), count=1)
    wait_for("a new job to run and finish", lambda: not job_states(port, tag), 60)


def test_drain_then_cancel(port: CondorPort, job_dir: Path, tag: str, serving_startd: str) -> None:
    machine = serving_startd
    result = port.submit(sleep_job(job_dir, tag, 180), count=1)
    try:
        wait_for(
            "the job to run", lambda: job_states(port, tag) == {result.job_ids[0]: RUNNING}, 60
        )
        port.drain(machine, "pilotfactory-test")
        draining = wait_for(
            "Draining slots",
            lambda: [
                s
                for s in port.query_startds(
                    {"Machine": machine}, ["Name", "Draining", "DrainReason"]
                )
                if s.get("Draining")
            ],
            20,
        )
        assert {s["DrainReason"] for s in draining} == {"pilotfactory-test"}
        assert job_states(port, tag) == {result.job_ids[0]: RUNNING}, (
            "a graceful drain waits for the job"
        )

        port.cancel_drain(machine)
        wait_for("the drain to be cancelled", lambda: startd_serving(port, machine), 30)
        assert job_states(port, tag) == {result.job_ids[0]: RUNNING}, (
            "cancelling leaves the job running"
        )
        # The slot takes new work at once.
        port.submit(sleep_job(job_dir, tag, 120), count=1)
        wait_for(
            "a second job to run", lambda: list(job_states(port, tag).values()) == [RUNNING] * 2, 60
        )
    finally:
        port.remove(
            [
                f"{ad['ClusterId']}.{ad['ProcId']}"
                for ad in port.query_jobs({"PfTestTag": tag}, ["ClusterId", "ProcId"])
            ],
            "test cleanup",
        )
    assert result.count == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"universe": "bogus"},
        {"request_memory": "1 +"},
        {"+PfBroken": "((("},
        {"initialdir": "/no/such/directory"},
    ],
    ids=["universe", "expression", "attribute", "initialdir"],
)
def test_bad_submit_is_rejected(
    port: CondorPort, job_dir: Path, tag: str, bad: dict[str, str]
) -> None:
    with pytest.raises(CondorRejected) as info:
        port.submit({**sleep_job(job_dir, tag, 1), **bad}, count=1)
    assert str(info.value), "the daemon's or tool's message is kept"
    assert job_states(port, tag) == {}


def test_bad_constraint_is_rejected(port: CondorPort) -> None:
    with pytest.raises(CondorRejected, match="constraint"):
        port.query_jobs({}, ["ProcId"], constraint="ProcId ==")
    with pytest.raises(CondorRejected, match="constraint"):
        port.query_startds({}, ["Name"], constraint="(((")


@pytest.mark.parametrize("case", ["collector-down", "unknown-schedd"])
def test_unreachable_target(backend: Backend, condor_pool: CondorPool, case: str) -> None:
    if case == "collector-down":
        target = CondorTarget(schedd=condor_pool.schedd, collector="127.0.0.1:1")
    else:
        target = CondorTarget(schedd="no-such-schedd.pool.test", collector=condor_pool.collector)
    bad = backend(target)
    with pytest.raises(CondorUnreachable):
        bad.query_jobs({}, ["ProcId"])
    with pytest.raises(CondorUnreachable):
        bad.submit({"executable": "/bin/true"}, count=1)
    if case == "collector-down":
        with pytest.raises(CondorUnreachable):
            bad.query_startds({}, ["Name"])
        with pytest.raises(CondorUnreachable):
            bad.query_masters({}, ["Name"])


def test_admin_commands_need_the_admin_token(condor_pool: CondorPool, serving_startd: str) -> None:
    """The user's token must not drain; the failure says so instead of passing silently."""
    user_tokens = condor_pool.env["_CONDOR_SEC_TOKEN_DIRECTORY"]
    port = BindingsCondor(condor_pool.target(), admin_token_dir=user_tokens)
    with pytest.raises(CondorPermission, match="ADMINISTRATOR"):
        port.drain(serving_startd, "must not happen")
    slots = port.query_startds({"Machine": serving_startd}, ["Name", "Draining"])
    assert slots and not any(s.get("Draining") for s in slots)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "Failed to fetch ads from schedd, errmsg=CEDAR:6001:Failed to connect to <127.0.0.1:1>",
            CondorUnreachable,
        ),
        ("Failed communication with collector.", CondorUnreachable),
        ("Error: Couldn't contact the condor_collector on 127.0.0.1:1.", CondorUnreachable),
        ("Error: unknown host nope", CondorUnreachable),
        ("Error: Collector has no record of schedd/submitter", CondorUnreachable),
        (
            'SECMAN:2010:Received "DENIED" from server for user u@pool.test using method FS.',
            CondorPermission,
        ),
        (
            "Failed to create job ad, errmsg=Submit:-1:I don't know about the 'bogus' universe.",
            CondorRejected,
        ),
        (
            "Unable to commit transaction:Modifying attribute Foo in nonexistent job 999.0",
            CondorRejected,
        ),
    ],
)
def test_error_messages_measured_on_the_pool_are_classified(
    message: str, expected: type[Exception]
) -> None:
    assert classify(message, CondorRejected) is expected
