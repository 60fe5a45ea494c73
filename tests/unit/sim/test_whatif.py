"""``pilotfactory sim``: the report's numbers against scenarios small enough to work out by hand.

The world's timing in these scenarios: arrivals at t=0 are seen by the first tick after it,
a factory cycles every 60 s, elastiq checks every 15 s and acts once jobs waited 40 s, a VM
runs ``boot_time`` after launch and its startd joins 5 s later, the negotiator matches at once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pilotfactory.cli import main
from pilotfactory.factory.config import ConfigError, default_factory_config, load_queues
from pilotfactory.sim import whatif
from pilotfactory.sim.traces import Trace, TraceJob, load_csv, shape

ONE_QUEUE = """
[DEFAULT]
apfqueue.sleep = 60
retire_confirm_cycles = 1
boot_timeout = 600
retire_mode = drain

[ONE]
wmsstatusplugin = Condor
wmsqueue = ONE
batchstatusplugin = EC2
batchsubmitplugin = EC2
schedplugin = JobsPerVM, IdleShutdown, MaxVMs
sched.jobspervm.jobs = 4
sched.idleshutdown.idle_time = 0
sched.maxvms.maximum = 10
batchsubmit.ec2.flavor = m1.large
batchsubmit.ec2.image = ami-1
batchsubmit.ec2.region = RegionOne
batchsubmit.ec2.collectorhost = cm.example.org
batchstatus.ec2.region = RegionOne
batchstatus.ec2.collectorhost = cm.example.org
"""
EXACT = whatif.WorldSettings(boot_time=100.0, boot_jitter=0.0, price=0.5)
BARE = replace(EXACT, poweroff_delay=None)
"""An image without the worker contract: a retired VM stays up until the factory reaps it."""


def one_queue(tmp_path: Path, text: str = ONE_QUEUE) -> tuple:
    conf = tmp_path / "one.conf"
    conf.write_text(text)
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return tuple(res.queues)


def jobs(*rows: tuple[float, float, int]) -> Trace:
    return Trace(tuple(TraceJob(s, d, c, "ONE") for s, d, c in rows), name="hand")


def test_one_job_one_vm_through_the_users_config(tmp_path: Path) -> None:
    # Job queued at 0, seen by the cycle at 60 which launches; running at 160, joined and
    # matched at 165 (wait 165), done at 3765; the cycle at 3780 retires the idle VM (drain,
    # no job), the follow-up reap_followup (20 s) later reaps it, the terminate landing 2 s
    # (api_latency) after the call: billed 60 -> 3802.
    r = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path), jobs((0, 3600, 1)), BARE, 1, None
    )
    m = r.metrics
    assert (m["wait_p50"], m["wait_p95"], m["wait_max"]) == (165.0, 165.0, 165.0)
    assert m["makespan_h"] == pytest.approx(3765 / 3600)
    assert m["vm_hours"] == pytest.approx((3802 - 60) / 3600)
    assert m["idle_vm_hours"] == pytest.approx((3802 - 60 - 3600) / 3600)
    assert m["cost"] == pytest.approx(0.5 * (3802 - 60) / 3600)
    assert m["request_latency_p50"] == m["request_latency_p99"] == 60.0
    assert (m["vms_submitted"], m["vms_retired"], m["vms_reaped"], m["vms_lost"]) == (1, 1, 1, 0)
    assert m["jobs_evicted"] == 0 and m["orphans"] == 0 and m["completed"] == 1


def test_without_a_reap_followup_the_retired_vm_waits_a_whole_interval(tmp_path: Path) -> None:
    """reap_followup = 0: the idle VM retired by the cycle at 3780 is reaped by the next one at
    3840 (ending at 3842), 40 s more billed than with the default follow-up 20 s after the
    retire."""
    text = ONE_QUEUE.replace("wmsqueue = ONE", "wmsqueue = ONE\nreap_followup = 0")
    r = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path, text), jobs((0, 3600, 1)), BARE,
        1, None,
    )  # fmt: skip
    assert r.metrics["vm_hours"] == pytest.approx((3842 - 60) / 3600)
    assert r.metrics["vms_reaped"] == 1


@pytest.mark.parametrize("mode", ["drain", "peaceful"])
@pytest.mark.parametrize("followup", [20, 0])
def test_a_retired_vm_powers_itself_off_and_is_neither_lost_nor_reaped(
    tmp_path: Path, mode: str, followup: int
) -> None:
    """The worker contract (the default world): the cycle at 3780 retires the idle VM, its
    startd exits at once (drain -exit-on-completion, or condor_off -peaceful), its master
    powers it off 10 s later: billed 60 -> 3790 whatever the reap follow-up, and the factory
    sees the instance end after its recorded retire (gone), never LOST, never reaped."""
    text = ONE_QUEUE.replace("retire_mode = drain", f"retire_mode = {mode}").replace(
        "wmsqueue = ONE", f"wmsqueue = ONE\nreap_followup = {followup}"
    )
    seen: list[list[str]] = []

    def states(world: object, factory: whatif.Factory, traces: object) -> None:
        info = factory.queues["ONE"].batch_source.info("ONE")
        seen.append([w.state.value for w in info.workers] if info is not None else ["?"])

    r = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path, text), jobs((0, 3600, 1)), EXACT,
        1, None, observe=states,
    )  # fmt: skip
    m = r.metrics
    assert m["vm_hours"] == pytest.approx((3790 - 60) / 3600)
    assert (m["vms_retired"], m["vms_reaped"], m["vms_powered_off"]) == (1, 0, 1)
    assert m["jobs_evicted"] == 0 and m["orphans"] == 0 and m["vms_lost"] == 0
    flat = [state for cycle in seen for state in cycle]
    assert "idle" in flat and "lost" not in flat and "?" not in flat
    assert seen[-1] == []  # gone: no worker, nothing to replace or reap


def test_one_job_one_vm_through_elastiq() -> None:
    # Seen at 15, waited 40 s at 60: launch (one 2 s call: the next checks at 77 + 15k);
    # joined 165; done 3765; idle_time 0: terminated by the check at 3767, without draining,
    # the terminate landing at 3769.
    params = whatif.ElastiqParams(idle_time=0.0, jobs_per_vm=4)
    m = whatif.run_elastiq(params, jobs((0, 3600, 1)), EXACT, 1, None).metrics
    assert m["wait_p95"] == 165.0
    assert m["vm_hours"] == pytest.approx((3769 - 60) / 3600)
    assert m["idle_vm_hours"] == pytest.approx(109 / 3600)
    assert (m["vms_submitted"], m["vms_retired"]) == (1, 1)


@pytest.mark.parametrize(("latency", "evicted"), [(2.0, 1), (0.0, 0)])
def test_elastiq_terminate_races_the_negotiator(latency: float, evicted: int) -> None:
    """Two jobs, one 1-core VM each: launched by the check at 60 (two calls, 2 s each: the
    next checks at 79 + 15k), both VMs joined at 165, the jobs done at 765. The check at 769 reads
    both VMs idle and terminates them one call after the other (landing at 771 and 773); a
    third job queued at 770 is matched by the negotiator at 770 and dies with its VM. Without
    latency the checks fall at 15k, both VMs are gone at 765 and the third job just waits."""
    world = replace(EXACT, api_latency=latency)
    params = whatif.ElastiqParams(idle_time=0.0, jobs_per_vm=1, flavor="m1.small")
    m = whatif.run_elastiq(params, jobs((0, 600, 1), (0, 600, 1), (770, 600, 1)), world, 1, None)
    assert m.metrics["jobs_evicted"] == evicted
    assert m.metrics["completed"] == 3


@pytest.mark.parametrize("mode", ["drain", "peaceful"])
@pytest.mark.parametrize("world", [EXACT, BARE], ids=["contract", "bare"])
def test_our_retire_never_evicts_whatever_the_api_latency(
    tmp_path: Path, mode: str, world: whatif.WorldSettings
) -> None:
    """The same race for the factory: jobs queued 1 s after the cycle at 3780 retires the idle
    VM, and 1 s after the reap 20 s later terminates it (an image without the contract), each
    while a 2 s cloud call may be in flight. A retired startd takes no job and a reaped VM has
    no startd, so nothing is evicted."""
    assert world.api_latency == 2.0
    text = ONE_QUEUE.replace("retire_mode = drain", f"retire_mode = {mode}")
    trace = jobs((0, 3600, 1), (3781, 600, 1), (3801, 600, 1))
    m = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path, text), trace, world, 1, None
    ).metrics
    assert m["vms_retired"] >= 1 and m["jobs_evicted"] == 0 and m["completed"] == 3


@pytest.mark.parametrize(("count", "vms"), [(4, 1), (5, 2), (8, 2), (12, 3)])
def test_a_burst_needs_exactly_ceil_jobs_over_slots_vms(
    tmp_path: Path, count: int, vms: int
) -> None:
    trace = jobs(*[(0, 1800, 1)] * count)
    cfg = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path), trace, EXACT, 1, None
    ).metrics
    ela = whatif.run_elastiq(whatif.ElastiqParams(idle_time=0.0), trace, EXACT, 1, None).metrics
    assert cfg["vms_submitted"] == ela["vms_submitted"] == vms
    assert cfg["wait_max"] == ela["wait_max"] == 165.0  # all started when their VMs joined
    assert cfg["completed"] == count


def test_oracle_vm_hours_are_the_core_hours_when_boot_time_is_zero() -> None:
    trace = jobs((0, 3600, 1), (600, 7200, 1), (1200, 1800, 2), (9000, 900, 1))
    free = whatif.WorldSettings(boot_time=0.0, boot_jitter=0.0, price=2.0)
    m = whatif.oracle(trace, free, cores_per_vm=1).metrics
    assert m["vm_hours"] == pytest.approx((3600 + 7200 + 2 * 1800 + 900) / 3600)
    assert m["idle_vm_hours"] == 0.0 and m["wait_p95"] == 0.0
    assert m["cost"] == pytest.approx(2.0 * m["vm_hours"])
    assert m["vms_submitted"] == 4  # peak: 1 + 1 + 2 cores at 1200 s
    four = whatif.oracle(trace, free, cores_per_vm=4).metrics
    assert four["vm_hours"] == pytest.approx(m["vm_hours"] / 4)
    booted = whatif.oracle(trace, EXACT, cores_per_vm=1).metrics
    assert booted["idle_vm_hours"] == pytest.approx(4 * 105 / 3600)


def test_oracle_floor_bills_the_floor_vm_over_the_whole_run() -> None:
    # One VM kept over T hours, one 10-minute job on it: idle all but the job (boot 0).
    free = whatif.WorldSettings(boot_time=0.0, boot_jitter=0.0)
    trace = jobs((600, 600, 1))
    floor = whatif.Quota(floor=1)
    m = whatif.oracle(trace, free, 1, floor, hours=5.0).metrics
    assert m["vm_hours"] == pytest.approx(5.0)
    assert m["idle_vm_hours"] == pytest.approx(5.0 - 600 / 3600)
    assert m["wait_max"] == 0.0 and m["vms_submitted"] == 1 and m["vms_retired"] == 0
    # without --hours the run ends 2 h after the last job: 1200 + 7200 s
    m = whatif.oracle(trace, free, 1, floor).metrics
    assert m["idle_vm_hours"] == pytest.approx((1200 + 7200 - 600) / 3600)
    assert whatif.oracle(trace, free, 1).metrics["idle_vm_hours"] == 0.0  # unconstrained


def test_oracle_floor_and_boots_above_it() -> None:
    # Three 1-core jobs at 0 need 3 VMs (1 core each); the floor VM is up anyway, the other
    # two boot just in time (105 s each) and end with their jobs at 600.
    m = whatif.oracle(jobs(*[(0, 600, 1)] * 3), EXACT, 1, whatif.Quota(floor=1)).metrics
    assert m["idle_vm_hours"] == pytest.approx((2 * 105 + 7200) / 3600)
    assert m["vm_hours"] == pytest.approx((3 * 600 + 2 * 105 + 7200) / 3600)
    assert (m["vms_submitted"], m["vms_retired"]) == (3, 2)


def test_oracle_cap_serializes_the_jobs() -> None:
    # At most one 1-core VM, two jobs of d at 0: the second starts when the first ends.
    free = whatif.WorldSettings(boot_time=0.0, boot_jitter=0.0)
    d = 900.0
    m = whatif.oracle(jobs((0, d, 1), (0, d, 1)), free, 1, whatif.Quota(cap=1)).metrics
    assert (m["wait_p50"], m["wait_p95"], m["wait_max"]) == (0.0, d, d)
    assert m["makespan_h"] == pytest.approx(2 * d / 3600)
    assert m["vm_hours"] == pytest.approx(2 * d / 3600) and m["vms_submitted"] == 1
    # a job that fits while an earlier bigger one waits is not held up by it (the negotiator
    # skips what does not fit): 4 cores, 3 busy until d; the 2-core job waits, the 1-core runs
    m = whatif.oracle(jobs((0, d, 3), (10, d, 2), (20, d, 1)), free, 4, whatif.Quota(cap=1)).metrics
    assert m["wait_max"] == d - 10 and m["completed"] == 3
    assert whatif.oracle(jobs((0, d, 5)), free, 4, whatif.Quota(cap=1)).metrics["completed"] == 0


def test_quota_is_read_from_the_vm_queues(tmp_path: Path) -> None:
    ecm = load_queues([str(Path(__file__).parents[3] / "etc/examples/ecm-elastiq-queues.conf")])
    assert whatif.Quota.of(ecm.queues) == whatif.Quota(floor=1, cap=3)
    assert whatif.Quota.of(one_queue(tmp_path)) == whatif.Quota(floor=0, cap=10)
    nocap = ONE_QUEUE.replace("MaxVMs", "MinVMs").replace(
        "sched.maxvms.maximum = 10", "sched.minvms.minimum = 2"
    )
    assert whatif.Quota.of(one_queue(tmp_path, nocap)) == whatif.Quota(floor=2, cap=None)


def test_report_shows_the_quota_oracle_and_keeps_the_unconstrained_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text(
        ONE_QUEUE.replace("IdleShutdown, MaxVMs", "IdleShutdown, MinVMs, MaxVMs").replace(
            "sched.maxvms.maximum = 10", "sched.maxvms.maximum = 1\nsched.minvms.minimum = 1"
        )
    )
    csv = tmp_path / "jobs.csv"
    csv.write_text("submit,duration,cores,queue\n" + "0,600,1,ONE\n" * 8)
    assert main(["sim", "-q", str(conf), "--workload", str(csv), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    orc, free = report["results"]["oracle"], report["oracle_unconstrained"]
    assert report["oracle_quota"] == {"floor": 1, "cap": 1, "text": "at least 1 VMs, at most 1 VMs"}
    assert free["wait_p95"] == 0.0 and orc["wait_p95"] == 600.0  # 8 jobs, 4 at a time
    assert orc["idle_vm_hours"] > free["idle_vm_hours"]
    assert main(["sim", "-q", str(conf), "--workload", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "oracle: the bound under the first config's VM quota (at least 1 VMs, at most 1" in out


def test_the_oracle_is_a_lower_bound_of_both_policies(tmp_path: Path) -> None:
    trace = shape("quiet", ["ONE"], seed=2, scale=0.2)
    cfg = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path), trace, EXACT, 2, None
    ).metrics
    ela = whatif.run_elastiq(whatif.ElastiqParams(), trace, EXACT, 2, None).metrics
    orc = whatif.oracle(trace, EXACT, 4).metrics
    for m in (cfg, ela):
        assert m["completed"] == trace.total_jobs
        assert m["vm_hours"] >= orc["vm_hours"] and m["idle_vm_hours"] >= orc["idle_vm_hours"]
        assert m["makespan_h"] >= orc["makespan_h"]


@pytest.mark.parametrize("name", ["quiet", "burst", "trickle"])
def test_the_quota_oracle_is_a_lower_bound_under_the_same_floor_and_cap(
    tmp_path: Path, name: str
) -> None:
    """At least 1 and at most 2 VMs: the cap makes every run wait, the floor bills a VM for
    the whole run; the oracle under that quota stays below both policies on each metric."""
    text = ONE_QUEUE.replace("IdleShutdown, MaxVMs", "IdleShutdown, MinVMs, MaxVMs").replace(
        "sched.maxvms.maximum = 10", "sched.maxvms.maximum = 2\nsched.minvms.minimum = 1"
    )
    queues = one_queue(tmp_path, text)
    trace = shape(name, ["ONE"], seed=1, scale=0.1)
    cfg = whatif.run_config("c", default_factory_config(), queues, trace, EXACT, 1, None).metrics
    ela = whatif.run_elastiq(whatif.ElastiqParams.like(queues), trace, EXACT, 1, None).metrics
    orc = whatif.oracle(trace, EXACT, 4, whatif.Quota.of(queues)).metrics
    free = whatif.oracle(trace, EXACT, 4).metrics
    for m in (cfg, ela):
        for key in ("vm_hours", "idle_vm_hours", "wait_p95", "wait_max", "makespan_h"):
            assert m[key] >= orc[key] - 1e-6, key  # equal when nothing waits
    assert orc["idle_vm_hours"] > free["idle_vm_hours"]  # the floor VM's empty hours


def test_same_seed_same_report_other_seed_other_work(tmp_path: Path) -> None:
    queues = one_queue(tmp_path)

    def report(seed: int) -> str:
        req = whatif.SimRequest(
            configs=(("config", default_factory_config(), queues),),
            workload="heavy",
            scale=0.1,
            seed=seed,
            settings=whatif.WorldSettings(never_join=0.1, interruption_rate=0.05),
        )
        results, header = whatif.run_request(req)
        return json.dumps(whatif.report_json(results, header), sort_keys=True)

    assert report(4) == report(4)
    assert report(4) != report(5)


def test_never_joining_vms_and_interruptions_are_counted_as_lost(tmp_path: Path) -> None:
    trace = jobs(*[(0, 7200, 1)] * 40)
    world = whatif.WorldSettings(never_join=0.3, interruption_rate=0.5)
    m = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path), trace, world, 3, None
    ).metrics
    assert m["vms_lost"] > 0 and m["jobs_interrupted"] > 0
    assert m["jobs_evicted"] == 0  # the provider killed those, not the factory
    assert m["completed"] == 40 and m["orphans"] == 0


def test_csv_trace_replays_rows_and_names_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "jobs.csv"
    good.write_text("# a comment\nsubmit,duration,cores,queue\n0,60,1,A\n\n30.5,120,2,B\n")
    trace = load_csv(str(good))
    assert trace.jobs == (TraceJob(0.0, 60.0, 1, "A"), TraceJob(30.5, 120.0, 2, "B"))
    noheader = tmp_path / "plain.csv"
    noheader.write_text("10,60\n")
    assert load_csv(str(noheader), "DEF").jobs == (TraceJob(10.0, 60.0, 1, "DEF"),)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "submit,duration,cores,queue\n0,abc,1,A\n-5,60,1,A\n0,60,x,A\n0,0,1,A\n1,2,3,4,5\n"
    )
    with pytest.raises(ConfigError) as err:
        load_csv(str(bad))
    text = str(err.value)
    assert f"{bad}:2: duration 'abc' is not a number" in text
    assert f"{bad}:3: submit '-5' must be a finite number >= 0" in text
    assert f"{bad}:4: cores 'x' is not a whole number" in text
    assert f"{bad}:5: duration '0' must be > 0" in text
    assert f"{bad}:6: 5 fields" in text
    header = tmp_path / "header.csv"
    header.write_text("when,duration\n0,60\n")
    with pytest.raises(ConfigError, match=r"header.csv:1: header unknown column 'when'"):
        load_csv(str(header))


def test_multicore_jobs_take_their_cores(tmp_path: Path) -> None:
    # Two 3-core jobs never share a 4-core VM: two VMs, both running at once.
    trace = jobs((0, 1800, 3), (0, 1800, 3))
    m = whatif.run_elastiq(
        whatif.ElastiqParams(idle_time=0.0, jobs_per_vm=1), trace, EXACT, 1, None
    ).metrics
    assert m["vms_submitted"] == 2 and m["wait_max"] == 165.0 and m["completed"] == 2


def test_shapes_are_deterministic_and_cover_their_labels() -> None:
    for name in ("burst", "trickle", "diurnal", "quiet", "heavy"):
        a = shape(name, ["A", "B"], seed=3, scale=0.5)
        assert a == shape(name, ["A", "B"], seed=3, scale=0.5)
        assert a.total_jobs > 0 and {j.label for j in a.jobs} == {"A", "B"}
    heavy = shape("heavy", seed=1)
    durations = sorted(j.duration for j in heavy.jobs)
    assert durations[-1] > 10 * durations[len(durations) // 2]  # a heavy tail
    with pytest.raises(ConfigError, match="unknown workload"):
        shape("nope")


def test_panda_activation_rate_spaces_arrivals() -> None:
    trace = replace(jobs(*[(0, 60, 1)] * 3), sites=frozenset({"ONE"}), activation_rate=2.0)
    assert [j.submit for j in trace.arrivals()] == [0.0, 30.0, 60.0]


def test_cli_json_report_and_no_progress_off_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text(ONE_QUEUE)
    csv = tmp_path / "jobs.csv"
    csv.write_text("submit,duration,cores,queue\n0,600,1,ONE\n0,600,1,ONE\n")
    code = main(["sim", "-q", str(conf), "--workload", str(csv), "--json", "--boot-jitter", "0"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    report = json.loads(out)
    assert set(report["results"]) == {"config", "elastiq", "oracle"}
    assert report["results"]["config"]["completed"] == 2
    assert report["results"]["config"]["ratio_to_oracle"]["vm_hours"] >= 1.0
    code = main(["sim", "-q", str(conf), "--workload", str(csv), "--no-baselines"])
    out, err = capsys.readouterr()
    assert code == 0 and "payload wait p95" in out and "oracle" not in out and err == ""


def test_cli_compare_two_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.conf"
    a.write_text(ONE_QUEUE)
    b = tmp_path / "b.conf"
    b.write_text(ONE_QUEUE.replace("idle_time = 0", "idle_time = 1800"))
    code = main(["sim", "--compare", str(a), str(b), "--workload", "burst", "--scale", "0.05"])
    out, _ = capsys.readouterr()
    assert code == 0
    head = next(line for line in out.splitlines() if line.startswith("metric"))
    assert head.split()[1:] == [
        "a.conf",
        "b.conf",
        "elastiq",
        "oracle",
        "a.conf/oracle",
        "b.conf/oracle",
        "elastiq/oracle",
    ]


def test_cli_bad_csv_exits_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text(ONE_QUEUE)
    csv = tmp_path / "jobs.csv"
    csv.write_text("0,60\n0,abc\n")
    assert main(["sim", "-q", str(conf), "--workload", str(csv)]) == 2
    assert f"{csv}:2: duration 'abc' is not a number" in capsys.readouterr().err


def test_progress_line_only_when_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    off = whatif.TerminalProgress(enabled=False)
    off("config", 0.5)
    off.done()
    assert capsys.readouterr().err == ""
    on = whatif.TerminalProgress(enabled=True)
    on("config", 0.5)
    assert "50%" in capsys.readouterr().err


def test_plot_names_the_extra_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_mpl(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(ConfigError, match=r"pilotfactory\[plot\]"):
        whatif.plot("/nonexistent/x.png", [])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (the [plot] extra) is not installed")
    trace = jobs((0, 600, 1))
    runs = [
        whatif.run_elastiq(whatif.ElastiqParams(), trace, EXACT, 1, None),
        whatif.oracle(trace, EXACT, 4),
    ]
    out = tmp_path / "sim.png"
    whatif.plot(str(out), runs)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_based_demand_buys_fewer_vms_and_waits_within_its_target(tmp_path: Path) -> None:
    from benchmarks.whatif import registry

    drain = ONE_QUEUE.replace("schedplugin = JobsPerVM,", "schedplugin = DrainTime,").replace(
        "sched.jobspervm.jobs = 4",
        "sched.draintime.jobs = 4\nsched.draintime.runtime = 600\nsched.draintime.target = 1800",
    )
    conf = tmp_path / "drain.conf"
    conf.write_text(drain)
    res = load_queues([str(conf)], None, None, registry())
    assert res.errors == [], res.problems
    trace = jobs(*[(0, 600, 1)] * 40)
    fcfg = default_factory_config()
    count = whatif.run_config("count", fcfg, one_queue(tmp_path), trace, EXACT, 1, None).metrics
    timed = whatif.run_config("time", fcfg, tuple(res.queues), trace, EXACT, 1, None).metrics
    assert count["vms_submitted"] == 10  # one slot per job: 40 / 4
    assert timed["vms_submitted"] == 4  # 3 jobs per slot within 30 min: ceil(40 / 3) = 14 slots
    assert timed["vm_hours"] < count["vm_hours"]
    assert timed["completed"] == 40 and timed["wait_max"] <= 1800 + 165


def test_cli_exits_1_when_the_config_evicts_or_leaves_orphans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "one.conf"
    conf.write_text(ONE_QUEUE)
    real = whatif.run_request

    def evicting(req: whatif.SimRequest, progress: object = None) -> tuple:
        results, header = real(req)
        results[0].metrics["jobs_evicted"] = 1
        return results, header

    monkeypatch.setattr(whatif, "run_request", evicting)
    assert main(["sim", "-q", str(conf), "--workload", "burst", "--scale", "0.01"]) == 1
    assert "config evicted jobs or left orphan VMs" in capsys.readouterr().err


def test_cli_plot_without_matplotlib_fails_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> None:
        raise ConfigError("--plot needs matplotlib: pip install 'pilotfactory[plot]'")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("ran the simulation")

    monkeypatch.setattr(whatif, "require_matplotlib", missing)
    monkeypatch.setattr(whatif, "run_request", never)
    conf = tmp_path / "one.conf"
    conf.write_text(ONE_QUEUE)
    assert main(["sim", "-q", str(conf), "--plot", str(tmp_path / "x.png")]) == 2
    assert "pilotfactory[plot]" in capsys.readouterr().err


def test_a_mass_retire_of_self_powering_vms_does_not_trip_the_breaker(tmp_path: Path) -> None:
    """Ten VMs fill with 40 jobs of one hour and empty together; one cycle retires all ten and
    they power themselves off (master gone too) before the next. Their slot ads left the
    collector because the VMs ended, which the request side says: no freeze ("suspect a
    partial collector answer"), every VM retired once and none reaped or lost."""
    notes: list[str] = []

    def collect(world: object, factory: whatif.Factory, traces: list) -> None:
        notes.extend(n for t in traces for n in t.notes)

    r = whatif.run_config(
        "config", default_factory_config(), one_queue(tmp_path), jobs(*[(0, 3600, 1)] * 40),
        EXACT, 1, None, observe=collect,
    )  # fmt: skip
    m = r.metrics
    assert m["completed"] == 40 and m["jobs_evicted"] == 0
    assert (m["vms_submitted"], m["vms_retired"], m["vms_lost"]) == (10, 10, 0)
    assert m["vms_powered_off"] == 10
    assert not [n for n in notes if "suspect a partial collector answer" in n], notes
