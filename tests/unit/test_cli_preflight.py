"""``pilotfactory check --preflight`` through ``main``: the table, ``--json`` and the exit codes
(1 configuration errors first, 3 an endpoint failed, 0 warnings alone). The world is the
simulated one (a real implementation of every port, with outage switches), put where the
command builds its ``RealWorld``; the real pool's run is tests/integration/test_preflight_condor.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.cli import main
from pilotfactory.factory.clock import VirtualClock
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.world import SimConfig, SimWorld

QUEUES = """
[PILOTS]
wmsstatusplugin = Condor
wmsqueue = A
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
schedplugin = Ready
batchsubmit.condorlocal.executable = /bin/true

[VMS]
wmsstatusplugin = Condor
wmsqueue = V
batchstatusplugin = EC2
batchsubmitplugin = EC2
schedplugin = Ready, MaxVMs
sched.maxvms.maximum = {maximum}
batchsubmit.ec2.image = ami-1
batchsubmit.ec2.flavor = m1.small
batchsubmit.ec2.collectorhost = cm.test
batchstatus.ec2.collectorhost = cm.test
"""


def use_world(monkeypatch: pytest.MonkeyPatch, schedd_down: bool, quota: int = 10) -> None:
    world = SimWorld(VirtualClock(1e6), SimConfig(cloud=CloudConfig(quota=quota)))
    world.pool.schedd_down = schedd_down

    def real_world(backend: str = "bindings") -> Any:
        return world

    monkeypatch.setattr("pilotfactory.backends.world.RealWorld", real_world)


def conf(tmp_path: Path, maximum: int = 4, extra: str = "") -> str:
    path = tmp_path / "q.conf"
    path.write_text(textwrap.dedent(QUEUES).format(maximum=maximum) + extra)
    return str(path)


def test_a_failing_endpoint_exits_3_and_the_table_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_world(monkeypatch, schedd_down=True)
    assert main(["check", "-q", conf(tmp_path), "--preflight"]) == 3
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 queue(s) OK, 0 broken, 0 disabled; 0 error(s), 0 warning(s)"
    assert out[1] == "pre-flight: 3 endpoint(s): 2 ok, 0 warn, 1 FAIL"
    table = "\n".join(out[2:])
    assert "FAIL  schedd (local)" in table and "queues: PILOTS" in table
    assert "FAIL  job query (1 job, 1 attribute): unreachable: Failed to connect" in table
    assert "instances: 0 of 10 used, 10 free; the queues' maximum 4 fits" in table
    assert "queues: VMS" in table


def test_all_reached_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_world(monkeypatch, schedd_down=False)
    assert main(["check", "-q", conf(tmp_path), "--preflight"]) == 0
    assert "3 ok, 0 warn, 0 FAIL" in capsys.readouterr().out


def test_warnings_alone_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_world(monkeypatch, schedd_down=False, quota=2)
    assert main(["check", "-q", conf(tmp_path, maximum=4), "--preflight", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    [cloud] = [e for e in report["preflight"] if e["endpoint"].startswith("EC2")]
    assert cloud["result"] == "warn" and cloud["queues"] == ["VMS"]
    assert cloud["findings"][1] == {
        "result": "warn",
        "what": "instances: 0 of 2 used, 2 free; the queues' maximum 4 exceeds it: "
        "launches past 2 will meet quota errors",
    }


def test_json_reports_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_world(monkeypatch, schedd_down=True)
    assert main(["check", "-q", conf(tmp_path), "--preflight", "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {e["endpoint"]: e["result"] for e in report["preflight"]} == {
        "schedd (local)": "fail",
        "EC2 AWS region us-east-1": "ok",
        "collector cm.test": "ok",
    }


def test_configuration_errors_come_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_world(monkeypatch, schedd_down=True)
    broken = "\n[BROKEN]\nwmsqueue = X\nschedplugin = Ready\n"
    assert main(["check", "-q", conf(tmp_path, extra=broken), "--preflight"]) == 1
    out = capsys.readouterr().out
    assert "1 FAIL" in out  # the usable queues were still probed


def test_without_preflight_nothing_is_contacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_world(monkeypatch, schedd_down=True)
    assert main(["check", "-q", conf(tmp_path)]) == 0
    assert "pre-flight" not in capsys.readouterr().out


def test_a_nonpositive_timeout_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["check", "-q", conf(tmp_path), "--preflight", "--preflight-timeout", "0"]) == 2
