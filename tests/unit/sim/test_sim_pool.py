"""The simulated pool behaves like the real HTCondor pool measured in real-htcondor.md."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.ports import CondorPort, CondorRejected, CondorTarget, CondorUnreachable
from pilotfactory.sim.pool import PoolConfig, SimExpr, parse_literal
from pilotfactory.sim.world import SimConfig, SimWorld

T0 = 1_700_000_000.0
SLOT_PROJ = ["Name", "Machine", "State", "Activity", "SlotType", "Cpus", "Draining", "JobId"]


def world(nodes: int = 1, cpus: int = 4, mjrt: float = 0.0, **pool_kw: object) -> SimWorld:
    cfg = PoolConfig(
        static_nodes=nodes,
        static_cpus=cpus,
        static_retirement_time=mjrt,
        **pool_kw,  # type: ignore[arg-type]
    )
    return SimWorld(VirtualClock(T0), SimConfig(pool=cfg))


def pilot_desc(**extra: str) -> dict[str, str]:
    desc = {
        "universe": "vanilla",
        "executable": "/usr/bin/pilot.sh",
        "arguments": '"-s SITE -q $(Cluster).$(Process)"',
        "environment": '"APFFID=f1 APFCID=$(Cluster).$(Process) FACTORYQUEUE=q1"',
        "+MATCH_APF_QUEUE": '"SITE"',
        "+APF_QUEUE": '"q1"',
        "+FACTORY_JOBID": '"f1#$(Cluster).$(Process)"',
        "+PilotFactoryId": '"f1"',
        "+PilotFactoryQueue": '"q1"',
    }
    desc.update(extra)
    return desc


def status(w: SimWorld, job_id: str) -> int:
    ad = w.pool.job(job_id)
    assert ad is not None
    return int(ad["JobStatus"])


def slots(w: SimWorld, machine: str) -> list[dict[str, object]]:
    return w.pool.query_startds({"Machine": machine}, SLOT_PROJ)


# ---------------------------------------------------------------------------- submit


def test_pool_satisfies_the_port() -> None:
    w = world()
    assert isinstance(w.condor(CondorTarget()), CondorPort)


def test_submit_parses_literals_and_expands_macros() -> None:
    w = world(nodes=0)
    res = w.pool.submit(
        pilot_desc(
            **{"+Count": "3", "MY.Ratio": "0.5", "+Flag": "TRUE", "+Gone": "undefined"},
            requirements='Arch == "X86_64"',
        ),
        2,
    )
    assert res.cluster == 1 and res.job_ids == ["1.0", "1.1"]
    ads = w.pool.query_jobs({}, [])
    assert len(ads) == 2
    ad = ads[1]
    assert ad["FACTORY_JOBID"] == "f1#1.1"
    assert ad["Environment"] == "APFFID=f1 APFCID=1.1 FACTORYQUEUE=q1"
    assert ad["Arguments"] == "-s SITE -q 1.1"
    assert ad["Count"] == 3 and ad["Ratio"] == 0.5 and ad["Flag"] is True
    assert "Gone" not in ad
    assert isinstance(ad["Requirements"], SimExpr)
    assert ad["JobStatus"] == 1 and ad["JobUniverse"] == 5
    assert ad["QDate"] == ad["EnteredCurrentStatus"] == int(T0)
    assert ad["Cmd"] == "/usr/bin/pilot.sh"


@pytest.mark.parametrize(
    ("desc", "count"),
    [
        ({"executable": "x", "queue": "1"}, 1),
        ({"executable": "x"}, 0),
        ({"universe": "vanilla"}, 1),
        ({"universe": "java", "executable": "x"}, 1),
        ({"executable": "x", "+Attr": '"a\nb"'}, 1),
        ({"universe": "grid", "executable": "x", "grid_resource": "condor a b"}, 1),
        ({"universe": "grid", "executable": "x", "grid_resource": "ec2 http://e/"}, 1),
    ],
)
def test_submit_rejects_what_condor_submit_rejects(desc: dict[str, str], count: int) -> None:
    w = world(nodes=0)
    with pytest.raises(CondorRejected):
        w.pool.submit(desc, count)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"BNL_CLOUD"', "BNL_CLOUD"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("42", 42),
        ("-1", -1),
        ("1.5", 1.5),
        ("true", True),
        ("False", False),
    ],
)
def test_parse_literal(text: str, value: object) -> None:
    parsed = parse_literal(text)
    assert parsed == value and type(parsed) is type(value)


def test_parse_literal_keeps_expressions() -> None:
    parsed = parse_literal("MY.A + 1")
    assert isinstance(parsed, SimExpr) and parsed == "MY.A + 1"


# ---------------------------------------------------------------------------- queries


def test_match_and_projection_semantics() -> None:
    w = world(nodes=0)
    w.pool.submit(pilot_desc(), 2)
    w.pool.submit(pilot_desc(**{"+PilotFactoryId": '"other"'}), 1)
    mine = w.pool.query_jobs({"PilotFactoryId": "f1"}, ["ClusterId", "ProcId", "Missing"])
    assert mine == [{"ClusterId": 1, "ProcId": 0}, {"ClusterId": 1, "ProcId": 1}]
    # strings compare case-insensitively, numbers by value, a missing attribute never matches
    assert len(w.pool.query_jobs({"pilotfactoryid": "F1"}, ["ClusterId"])) == 2
    assert len(w.pool.query_jobs({"ClusterId": 2.0}, ["ClusterId"])) == 1
    assert w.pool.query_jobs({"NoSuchAttr": 1}, ["ClusterId"]) == []
    # projection spelled in another case returns the ad's spelling
    assert w.pool.query_jobs({"ClusterId": 2}, ["clusterid"]) == [{"ClusterId": 2}]
    # results are copies
    w.pool.query_jobs({}, [])[0]["JobStatus"] = 99
    assert status(w, "1.0") == 1


def test_raw_constraint_is_evaluated_as_classad() -> None:
    w = world(nodes=0)
    w.pool.submit(pilot_desc(), 3)
    ads = w.pool.query_jobs({"PilotFactoryId": "f1"}, ["ProcId"], constraint="ProcId >= 1")
    assert [a["ProcId"] for a in ads] == [1, 2]
    with pytest.raises(CondorRejected):
        w.pool.query_jobs({}, ["ProcId"], constraint="ProcId >=")


def test_every_call_is_counted() -> None:
    w = world()
    w.pool.query_jobs({}, ["ClusterId"])
    w.pool.query_startds({}, ["Name"])
    w.pool.query_masters({}, ["Name"])
    w.pool.submit(pilot_desc(), 1)
    w.pool.query_history({}, ["ClusterId"], since=0, limit=10)
    q = w.metrics.queries
    assert (q["query_jobs"], q["query_startds"], q["query_masters"], q["submit"]) == (1, 1, 1, 1)
    assert q["query_history"] == 1


# ---------------------------------------------------------------------------- jobs


def test_payload_jobs_match_fifo_and_complete() -> None:
    w = world(nodes=1, cpus=2)
    ids = w.pool.add_payload_jobs("elastic", [100, 100, 100])
    w.advance(5)
    assert [status(w, i) for i in ids] == [2, 2, 1]
    running = w.pool.query_jobs({"JobStatus": 2}, ["ProcId", "RemoteHost", "JobStartDate"])
    assert {a["RemoteHost"] for a in running} == {"slot1_1@wn1.pool.test", "slot1_2@wn1.pool.test"}
    names = {s["Name"]: s for s in slots(w, "wn1.pool.test")}
    assert names["slot1@wn1.pool.test"]["Cpus"] == 0
    assert names["slot1_1@wn1.pool.test"]["State"] == "Claimed"
    assert names["slot1_1@wn1.pool.test"]["Activity"] == "Busy"
    w.advance(100)
    assert status(w, ids[0]) == 4 and status(w, ids[2]) == 2
    done = w.pool.query_history({}, ["ProcId", "CompletionDate", "JobStatus"], since=0, limit=10)
    assert [a["ProcId"] for a in done] == [1, 0]  # newest first
    assert all(a["JobStatus"] == 4 for a in done)
    assert w.pool.query_history({}, ["ProcId"], since=0, limit=1) == [{"ProcId": 1}]
    assert w.pool.query_history({}, ["ProcId"], since=T0 + 1000, limit=5) == []
    w.advance(200)
    assert w.metrics.payload_completed["elastic"] == 3


def test_remove_and_edit() -> None:
    w = world(nodes=1)
    w.pool.submit(pilot_desc(), 2)
    w.pool.edit(["1.0", "1.1"], "PilotFactoryRetireRequested", "1700000100")
    w.pool.edit(["1.0"], "PilotFactoryRetireMode", '"drain"')
    ad = w.pool.job("1.0")
    assert ad is not None
    assert ad["PilotFactoryRetireRequested"] == 1700000100
    assert ad["PilotFactoryRetireMode"] == "drain"
    w.pool.edit(["1.0"], "PilotFactoryRetireRequested", "undefined")
    assert "PilotFactoryRetireRequested" not in (w.pool.job("1.0") or {})
    with pytest.raises(CondorRejected):
        w.pool.edit(["9.9"], "A", "1")
    with pytest.raises(CondorRejected):
        w.pool.edit(["1.0"], "JobStatus", "4")
    assert w.pool.remove(["1.0", "9.9"], "test") == 1
    assert w.pool.remove(["1.0"], "again") == 0
    assert status(w, "1.0") == 3
    assert w.pool.query_jobs({}, ["ProcId"]) == [{"ProcId": 1}]


def test_removing_a_running_payload_counts_it_killed() -> None:
    w = world(nodes=1)
    (jid,) = w.pool.add_payload_jobs("elastic", [1000])
    w.advance(5)
    assert status(w, jid) == 2
    w.pool.remove([jid], "test")
    assert w.metrics.payload_killed["elastic"] == 1
    assert slots(w, "wn1.pool.test")[0]["Cpus"] == 4


# ---------------------------------------------------------------------------- retire


def test_peaceful_retire_waits_for_the_job_then_the_startd_leaves() -> None:
    w = world(nodes=1, cpus=2)
    (a,) = w.pool.add_payload_jobs("elastic", [100])
    w.advance(5)
    w.pool.retire_peaceful("wn1.pool.test")
    ads = slots(w, "wn1.pool.test")
    dyn = [s for s in ads if s["SlotType"] == "Dynamic"]
    assert dyn[0]["Activity"] == "Retiring"
    # a free core takes nothing while retiring
    (b,) = w.pool.add_payload_jobs("elastic", [100])
    w.advance(50)
    assert status(w, b) == 1
    w.advance(60)
    assert status(w, a) == 4
    assert slots(w, "wn1.pool.test") == []
    assert [m["Machine"] for m in w.pool.query_masters({}, ["Machine"])] == ["wn1.pool.test"]
    # not restarted by itself
    w.advance(600)
    assert slots(w, "wn1.pool.test") == [] and status(w, b) == 1


def test_peaceful_retire_of_an_idle_startd_exits_at_once() -> None:
    w = world(nodes=1)
    w.pool.retire_peaceful("slot1@wn1.pool.test")
    assert w.pool.machines() == []


def test_unretire_while_retiring_restarts_the_startd_after_it_exits() -> None:
    w = world(nodes=1, cpus=1)
    (a,) = w.pool.add_payload_jobs("elastic", [100])
    w.advance(5)
    w.pool.retire_peaceful("wn1.pool.test")
    w.pool.unretire("wn1.pool.test")
    (b,) = w.pool.add_payload_jobs("elastic", [100])
    # still retiring: cannot be cancelled
    assert [s["Activity"] for s in slots(w, "wn1.pool.test") if s["SlotType"] == "Dynamic"] == [
        "Retiring"
    ]
    w.clock.sleep(100)
    w.pool.loop.advance(T0 + 105.5)
    assert status(w, a) == 4
    assert w.pool.machines() == []  # exited, the master restarts it 1 s later
    w.advance(9.5)  # t = 115: back in the collector 3-4 s after the exit
    assert w.pool.machines() == ["wn1.pool.test"]
    w.advance(5)
    assert status(w, b) == 2


def test_unretire_after_exit_starts_the_startd_again() -> None:
    w = world(nodes=1)
    w.pool.retire_peaceful("wn1.pool.test")
    w.advance(100)
    w.pool.unretire("wn1.pool.test")
    assert w.pool.machines() == []
    w.advance(5)
    assert w.pool.machines() == ["wn1.pool.test"]
    ad = slots(w, "wn1.pool.test")[0]
    assert ad["State"] == "Unclaimed" and ad["Activity"] == "Idle"


def test_unretire_of_a_running_startd_is_a_no_op() -> None:
    w = world(nodes=1)
    w.pool.unretire("wn1.pool.test")
    w.advance(30)
    assert w.pool.machines() == ["wn1.pool.test"]


# ---------------------------------------------------------------------------- drain


def test_drain_with_zero_retirement_time_evicts_at_once() -> None:
    w = world(nodes=1, mjrt=0)
    (a,) = w.pool.add_payload_jobs("elastic", [1000])
    w.advance(5)
    w.pool.drain("wn1.pool.test", "pilotfactory")
    assert status(w, a) == 1  # evicted back to idle
    assert w.metrics.payload_killed["elastic"] == 1
    assert w.pool.machines() == []  # exit-on-completion: nothing left to run


def test_drain_with_a_long_retirement_time_waits_for_the_job() -> None:
    w = world(nodes=1, cpus=2, mjrt=86400)
    (a,) = w.pool.add_payload_jobs("elastic", [100])
    w.advance(5)
    w.pool.drain("wn1.pool.test", "pilotfactory")
    ads = slots(w, "wn1.pool.test")
    assert all(s["Draining"] is True for s in ads)
    pslot = next(s for s in ads if s["SlotType"] == "Partitionable")
    assert pslot["State"] == "Drained"
    (b,) = w.pool.add_payload_jobs("elastic", [100])
    w.advance(50)
    assert status(w, a) == 2 and status(w, b) == 1
    w.advance(60)
    assert status(w, a) == 4 and w.metrics.payload_killed["elastic"] == 0
    assert w.pool.machines() == []
    assert w.pool.query_masters({"Machine": "wn1.pool.test"}, ["Name"]) != []


def test_drain_evicts_a_job_that_outlives_the_retirement_time() -> None:
    w = world(nodes=1, mjrt=60)
    (a,) = w.pool.add_payload_jobs("elastic", [1000])
    w.advance(5)
    w.pool.drain("wn1.pool.test", "pilotfactory")
    w.advance(55)
    assert status(w, a) == 2
    w.advance(10)
    assert status(w, a) == 1 and w.metrics.payload_killed["elastic"] == 1


def test_cancel_drain_keeps_the_job_and_takes_new_ones_at_once() -> None:
    w = world(nodes=1, cpus=2, mjrt=3600)
    (a,) = w.pool.add_payload_jobs("elastic", [1000])
    w.advance(5)
    w.pool.drain("wn1.pool.test", "pilotfactory")
    (b,) = w.pool.add_payload_jobs("elastic", [100])
    w.advance(30)
    assert status(w, b) == 1
    w.pool.cancel_drain("wn1.pool.test")
    assert all("Draining" not in s for s in slots(w, "wn1.pool.test"))
    w.advance(5)
    assert status(w, a) == 2 and status(w, b) == 2
    w.advance(3600)  # the cancelled drain's deadline does not fire
    assert w.metrics.payload_killed["elastic"] == 0


def test_cancel_drain_does_not_undo_a_peaceful_retire() -> None:
    w = world(nodes=1, cpus=2)
    w.pool.add_payload_jobs("elastic", [100])
    w.advance(5)
    w.pool.retire_peaceful("wn1.pool.test")
    w.pool.cancel_drain("wn1.pool.test")
    (b,) = w.pool.add_payload_jobs("elastic", [100])
    w.advance(30)
    assert status(w, b) == 1


@pytest.mark.parametrize("command", ["retire_peaceful", "unretire", "drain", "cancel_drain"])
def test_commands_on_unknown_machines_are_rejected(command: str) -> None:
    w = world(nodes=1)
    fn = getattr(w.pool, command)
    with pytest.raises(CondorRejected):
        if command == "drain":
            fn("nope.pool.test", "r")
        else:
            fn("nope.pool.test")


def test_drain_of_an_exited_startd_is_rejected() -> None:
    w = world(nodes=1)
    w.pool.retire_peaceful("wn1.pool.test")
    with pytest.raises(CondorRejected):
        w.pool.drain("wn1.pool.test", "r")


# ---------------------------------------------------------------------------- failures


def test_schedd_down_fails_every_schedd_call() -> None:
    w = world(nodes=1)
    w.pool.schedd_down = True
    calls: list[Callable[[], object]] = [
        lambda: w.pool.query_jobs({}, ["ClusterId"]),
        lambda: w.pool.query_history({}, ["ClusterId"], 0, 10),
        lambda: w.pool.submit(pilot_desc(), 1),
        lambda: w.pool.remove(["1.0"], "r"),
        lambda: w.pool.edit(["1.0"], "A", "1"),
    ]
    for call in calls:
        with pytest.raises(CondorUnreachable) as err:
            call()
        assert err.value.daemon == "schedd"
    assert w.pool.query_startds({}, ["Name"])  # the collector still answers
    assert w.metrics.failures["submit"] == 1


def test_collector_down_fails_collector_calls_and_commands() -> None:
    w = world(nodes=1)
    w.pool.collector_down = True
    with pytest.raises(CondorUnreachable):
        w.pool.query_startds({}, ["Name"])
    with pytest.raises(CondorUnreachable):
        w.pool.query_masters({}, ["Name"])
    with pytest.raises(CondorUnreachable):
        w.pool.retire_peaceful("wn1.pool.test")
    assert w.pool.query_jobs({}, ["ClusterId"]) == []


def test_collector_partial_drops_whole_startds() -> None:
    w = world(nodes=40)
    w.pool.collector_drop_fraction = 0.5
    seen = {s["Machine"] for s in w.pool.query_startds({}, ["Machine"])}
    assert 5 < len(seen) < 35
    assert len(w.pool.query_masters({}, ["Machine"])) == 40


# ---------------------------------------------------------------------------- pilots


def test_pilots_pull_panda_jobs_or_exit_after_a_minute() -> None:
    w = world(nodes=1, cpus=4)
    w.sim_panda.add_jobs("SITE", 2, [300, 400])
    w.pool.submit(pilot_desc(), 3)
    w.advance(5)
    assert w.sim_panda.counts("SITE") == {"running": 2}
    w.advance(60)
    assert status(w, "1.2") == 4  # no work: exited after 60 s
    assert status(w, "1.0") == 2
    w.advance(400)
    assert w.sim_panda.counts("SITE") == {"finished": 2}
    assert w.metrics.payload_completed["SITE"] == 2
    assert w.metrics.pilots_started == 3 and w.metrics.pilots_without_payload == 1


def test_pilot_site_mapping() -> None:
    w = world(nodes=1, pilot_sites={"SITE": "PANDA_SITE"})
    w.sim_panda.add_jobs("PANDA_SITE", 1, 100)
    w.pool.submit(pilot_desc(), 1)
    w.advance(5)
    assert w.sim_panda.counts("PANDA_SITE") == {"running": 1}


def test_removing_a_busy_pilot_fails_its_panda_job() -> None:
    w = world(nodes=1)
    w.sim_panda.add_jobs("SITE", 1, 1000)
    w.pool.submit(pilot_desc(), 1)
    w.advance(5)
    w.pool.remove(["1.0"], "kill")
    assert w.sim_panda.counts("SITE") == {"failed": 1}
    assert w.metrics.payload_killed["SITE"] == 1


# ---------------------------------------------------------------------------- negotiator policy


@pytest.mark.parametrize(("fill", "expected"), [("depth", {"wn1.pool.test"}), ("breadth", None)])
def test_fill_policy(fill: str, expected: set[str] | None) -> None:
    w = world(nodes=2, cpus=4, fill=fill)
    w.pool.add_payload_jobs("elastic", [1000])
    w.advance(5)
    w.pool.add_payload_jobs("elastic", [1000])
    w.advance(5)
    hosts = {str(a["RemoteHost"]).split("@")[1] for a in w.pool.query_jobs({}, ["RemoteHost"])}
    assert hosts == (expected or {"wn1.pool.test", "wn2.pool.test"})


def test_a_second_restart_within_300_s_waits_10_s() -> None:
    w = world(nodes=1)
    w.pool.retire_peaceful("wn1.pool.test")
    w.pool.unretire("wn1.pool.test")
    w.advance(5)
    assert w.pool.machines() == ["wn1.pool.test"]
    w.pool.retire_peaceful("wn1.pool.test")
    w.pool.unretire("wn1.pool.test")
    w.advance(10)
    assert w.pool.machines() == []
    w.advance(5)
    assert w.pool.machines() == ["wn1.pool.test"]


def test_retire_cancels_a_pending_restart() -> None:
    w = world(nodes=1)
    w.pool.retire_peaceful("wn1.pool.test")
    w.pool.unretire("wn1.pool.test")
    w.pool.retire_peaceful("wn1.pool.test")
    w.advance(60)
    assert w.pool.machines() == []
