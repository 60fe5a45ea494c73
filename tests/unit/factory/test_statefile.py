"""The state file: what a queue must not forget across a restart (kill -9 included)."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.ports import CondorRejected
from tests.unit.factory.test_queue import PILOTS, VMS, vm
from tests.unit.fakecondor import FakeCondor, make_env

T0 = 1_700_000_000.0


def start(
    tmp_path: Path, port: FakeCondor, text: str = PILOTS, now: float = T0, fid: str = "f1"
) -> tuple[Factory, Any]:
    """A factory process starting (again) on the same files and schedd."""
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(text))
    env, clock = make_env(port, now)
    fcfg = replace(
        default_factory_config(),
        factory_id=fid,
        raw={"baseLogDir": str(tmp_path / "logs")},
        state_file=str(tmp_path / "state" / "state.json"),
    )
    return Factory(fcfg, load_queues([str(conf)]).queues, env.world, clock), clock


def payload(n: int) -> list[dict[str, Any]]:
    return [
        {"ClusterId": 1, "ProcId": k, "JobStatus": 1, "MATCH_APF_QUEUE": "LABEL_A"}
        for k in range(n)
    ]


def test_a_restart_keeps_the_back_off_and_the_counters(tmp_path: Path) -> None:
    port = FakeCondor()
    port.jobs = payload(2)
    port.fail["submit"] = CondorRejected("quota exceeded")
    first, _ = start(tmp_path, port)
    (t,) = first.cycle()
    assert t.results[0].startswith("submit failed")
    del port.fail["submit"]
    path = tmp_path / "state" / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.json"], "no temp file left"

    # kill -9: nothing in memory survives; a new process starts 30 s later on the same files.
    second, _ = start(tmp_path, port, now=T0 + 30)
    (t,) = second.cycle()
    assert any("blocked" in n and "quota exceeded" in n for n in t.notes), t.notes
    assert port.count("submit") == 1, "no resubmit to the failing schedd"
    assert second.queues["A"].counters["errors"] == 1
    assert second.queues["A"].counters["cycles"] == 2

    # Without the state file the restart would have resubmitted at once.
    path.unlink()
    third, _ = start(tmp_path, port, now=T0 + 30)
    assert third.cycle()[0].results == ["submitted 2"]


def test_a_changed_submit_section_starts_without_the_old_back_off(tmp_path: Path) -> None:
    port = FakeCondor()
    port.jobs = payload(2)
    port.fail["submit"] = CondorRejected("quota exceeded")
    start(tmp_path, port)[0].cycle()
    del port.fail["submit"]
    fixed = PILOTS.replace("/bin/true", "/bin/false")
    again, _ = start(tmp_path, port, text=fixed, now=T0 + 30)
    assert again.cycle()[0].results == ["submitted 2"]
    assert again.queues["A"].counters["errors"] == 1, "counters carry over regardless"


def vms_up(port: FakeCondor, n: int) -> None:
    made = [vm(k) for k in range(n)]
    port.jobs = [j for j, _, _ in made]
    port.startds = [s for _, s, _ in made]
    port.masters = [m for _, _, m in made]


def test_the_breaker_reference_survives_a_restart_but_not_a_long_outage(tmp_path: Path) -> None:
    port = FakeCondor()
    vms_up(port, 4)
    start(tmp_path, port, text=VMS)[0].cycle()
    port.startds, port.masters = [], []  # the collector answers empty right after the restart
    again, _ = start(tmp_path, port, text=VMS, now=T0 + 60)
    (t,) = again.cycle()
    assert any("(1/3)" in n for n in t.notes), "frozen: the reference came from the file"
    assert port.count("remove") == 0

    vms_up(port, 4)
    start(tmp_path, port, text=VMS, now=T0 + 120)[0].cycle()
    port.startds, port.masters = [], []
    late, _ = start(tmp_path, port, text=VMS, now=T0 + 120 + 3600)
    (t,) = late.cycle()
    assert not any("(1/3)" in n for n in t.notes), "an hour-old reference is not last cycle"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "is not JSON"),
        ('{"format": 1, "factory_id": "other", "time": 1, "queues": {}}', "belongs to factory"),
        ('{"format": 9}', "not a pilotfactory state file"),
        ("[]", "not a pilotfactory state file"),
    ],
)
def test_a_bad_state_file_is_named_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, why: str
) -> None:
    path = tmp_path / "state" / "state.json"
    path.parent.mkdir()
    path.write_text(content)
    port = FakeCondor()
    port.jobs = payload(2)
    factory, _ = start(tmp_path, port)
    assert f"{path}: " in caplog.text and why in caplog.text
    assert "starting without it" in caplog.text
    assert factory.cycle()[0].results == ["submitted 2"], "the factory runs on"
    assert json.loads(path.read_text())["factory_id"] == "f1", "and writes a good one"


def test_a_malformed_entry_restores_nothing_of_that_queue_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    two = PILOTS + "\n[B]\nwmsqueue = LABEL_B\n"
    port = FakeCondor()
    port.jobs = payload(2)
    port.fail["submit"] = CondorRejected("quota exceeded")
    start(tmp_path, port, text=two)[0].cycle()
    del port.fail["submit"]
    path = tmp_path / "state" / "state.json"
    state = json.loads(path.read_text())
    state["queues"]["B"]["backoff"]["endings"] = "lots"
    state["queues"]["B"]["counters"]["cycles"] = 1000
    path.write_text(json.dumps(state))
    again, _ = start(tmp_path, port, text=two, now=T0 + 30)
    assert "queue B: state not restored: backoff.endings is not a list" in caplog.text
    assert again.queues["B"].counters["cycles"] == 0, "nothing of a malformed entry"
    assert again.queues["A"].counters["cycles"] == 1
    assert again.queues["A"].backoff.until == T0 + 60


def test_the_state_file_holds_no_secret_value(tmp_path: Path) -> None:
    port = FakeCondor()
    secret = VMS.replace("/nonexistent/secret.key", "/nonexistent/s3cr3t-value")
    start(tmp_path, port, text=secret)[0].cycle()
    text = (tmp_path / "state" / "state.json").read_text()
    assert "s3cr3t" not in text and "/nonexistent" not in text
    assert os.stat(tmp_path / "state").st_mode & 0o007 == 0
