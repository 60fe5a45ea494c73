"""The command line: --help everywhere, meaningful exit codes, machine-readable output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pilotfactory.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cmd", [[], ["check"], ["show"], ["run"], ["status"], ["demo"], ["sim"]])
def test_help_everywhere(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*cmd, "--help"]) == 0
    assert "usage: pilotfactory" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error() -> None:
    assert main(["check", "--frobnicate"]) == 2


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(ROOT / "etc" / "factory.conf"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert set(out["queues"]) == {"BNL_CLOUD", "BNL_CLOUD-ec2-spot"}


def test_demo_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["demo", "-q", str(ROOT / "etc" / "queues.conf"), "--hours", "3", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    ec2 = summary["queues"]["BNL_CLOUD-ec2-spot"]
    assert ec2["peak_workers"] > 0 and ec2["final_workers"] == 0
    assert summary["world"]["payload_killed"] == 0
    vms = [row["vms"] for row in summary["timeline"]]
    assert len(vms) == 13 and max(vms) == ec2["peak_workers"] and vms[-1] == 0


def test_console_script_runs_and_logs_to_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "q.conf"
    bad.write_text("[Q]\nschedplugin = Ready\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pilotfactory.cli", "run", "--once", "-q", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1  # no usable queue
    assert proc.stdout == ""
    assert "missing: every queue needs a wmsstatus plugin" in proc.stderr


SECRET_QUEUES = """
[DEFAULT]
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/true
schedplugin = Ready

[PANDA_Q]
wmsstatusplugin = Panda
wmsstatus.panda.token_file = {token}

[PILOTS]
wmsstatusplugin = Condor
batchsubmit.condorlocal.proxy = atlas
batchsubmit.condorlocal.proxy_dir = {proxy_dir}
"""


@pytest.mark.parametrize(
    ("token_mode", "proxy_mode", "rc", "says"),
    [
        (0o600, 0o600, 0, []),
        (0o644, 0o600, 1, ["[PANDA_Q] wmsstatus.panda.token_file: error", "mode 0644"]),
        (0o600, 0o640, 1, ["[PILOTS] batchsubmit.condorlocal.proxy: error", "x509up_atlas"]),
        (None, 0o600, 0, ["[PANDA_Q] wmsstatus.panda.token_file: warning", "cannot be read"]),
    ],
)
def test_check_judges_every_secret_file_before_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    token_mode: int | None,
    proxy_mode: int,
    rc: int,
    says: list[str],
) -> None:
    token = tmp_path / "token"
    if token_mode is not None:
        token.write_text("t0ken-value\n")
        token.chmod(token_mode)
    proxy = tmp_path / "x509up_atlas"
    proxy.write_text("cert+key")
    proxy.chmod(proxy_mode)
    conf = tmp_path / "queues.conf"
    conf.write_text(SECRET_QUEUES.format(token=token, proxy_dir=tmp_path))
    assert main(["check", "-q", str(conf)]) == rc
    out = capsys.readouterr().out
    for text in says:
        assert text in out, out
    assert "t0ken-value" not in out


def test_show_prints_what_one_submit_would_send_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fconf = tmp_path / "factory.conf"
    fconf.write_text(
        (ROOT / "etc" / "factory.conf")
        .read_text()
        .replace("baseLogDir = /tmp/pilotfactory/logs", f"baseLogDir = {tmp_path / 'logs'}")
        .replace("queueConf = queues.conf", f"queueConf = {ROOT / 'etc' / 'queues.conf'}")
    )
    assert main(["show", "-c", str(fconf), "BNL_CLOUD", "BNL_CLOUD-ec2-spot"]) == 0
    out = capsys.readouterr().out
    pilot, vm = out.split("### [BNL_CLOUD-ec2-spot]")
    assert "universe = vanilla" in pilot and '+PilotFactoryQueue = "BNL_CLOUD"' in pilot
    assert "universe = grid" in vm and "ec2_spot_price = 0.156" in vm
    assert vm.rstrip().endswith("queue 1")
    assert not (tmp_path / "logs").exists(), "show creates nothing"
    assert main(["show", "-c", str(fconf), "NO_SUCH"]) == 1
    assert "no usable queue 'NO_SUCH'" in capsys.readouterr().err


def test_show_renders_cloud_user_data_with_secrets_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "worker.sh"
    template.write_text(
        "#!/bin/sh\n# worker {worker_id} of {queue}\n{condor_config}\n"
        "SEC_PASSWORD = hunter2\nexport API_TOKEN=abc123\ncurl https://bob:pw@repo.example/x\n"
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n"
    )
    conf = tmp_path / "queues.conf"
    conf.write_text(
        (ROOT / "etc" / "examples" / "ecm-elastiq-queues.conf")
        .read_text()
        .replace(
            "# batchsubmit.openstack.user_data_file = /etc/pilotfactory/ecm-worker-userdata.sh",
            f"batchsubmit.openstack.user_data_file = {template}",
        )
    )
    assert main(["show", "-q", str(conf), "ECM-openstack"]) == 0
    out = capsys.readouterr().out
    assert "image = ECM-worker-image" in out and "pilotfactory:worker = <worker-id>" in out
    assert "# worker <worker-id> of ECM-openstack" in out
    assert 'START = ($(START)) && (TARGET.MATCH_APF_QUEUE =?= "ECM")' in out
    for secret in ("hunter2", "abc123", "bob:pw", "MIIEow"):
        assert secret not in out, out
    assert "SEC_PASSWORD = ***" in out and "export API_TOKEN=***" in out


@pytest.mark.parametrize(
    "conf",
    ["etc/queues.conf", "etc/examples/osg2013-queues.conf", "etc/examples/ecm-elastiq-queues.conf"],
)
def test_show_works_on_every_shipped_example_queue(
    conf: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its secret files need not exist yet: show names them, check judges them."""
    assert main(["check", "-q", str(ROOT / conf), "--json"]) == 0
    queues = json.loads(capsys.readouterr().out)["queues"]
    assert queues
    assert main(["show", "-q", str(ROOT / conf), *queues]) == 0
    out = capsys.readouterr().out
    assert out.count("queue 1") + out.count("# launch request") == len(queues)
