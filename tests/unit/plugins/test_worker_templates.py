"""The worker VM contract, VM side: the renderer, the shipped templates (etc/worker), the
minted tokens, and ``check``'s template warnings. Pure logic: no daemon."""

from __future__ import annotations

import ast
import re
import subprocess
import time
from pathlib import Path

import classad2
import pytest

from pilotfactory.cli import main
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit
from pilotfactory.plugins.batchsubmit.cloud_common import (
    DEADLINE_START,
    PLACEHOLDERS,
    condor_config,
    placeholders,
    render_user_data,
    template_warnings,
)
from pilotfactory.plugins.batchsubmit.vmlife import (
    WORKER_AUTHZ,
    VMContract,
    find_tokens,
    token_claims,
    unsigned_token,
)
from tests.unit.fakecondor import FakeCondor
from tests.unit.plugins.test_cloud_plugins import NOW, Q, setup, submit
from tests.unit.plugins.test_condor_plugins import ec2

ROOT = Path(__file__).resolve().parents[3]
WORKER = ROOT / "etc" / "worker"
TEMPLATES = ("worker.sh", "worker.cloud-config")
C = VMContract(
    "ECM-abc",
    "f1",
    "ECM",
    "cm.example:9618",
    "ECM",
    lease_until=1_700_003_600,
    lease_grace=600,
    deadline=1_700_086_400,
    token="eyJh.eyJi.c2ln",
    metadata_url="http://169.254.169.254",
)

# ---------------------------------------------------------------------------- the renderer


def test_every_placeholder_and_the_escape() -> None:
    text = " ".join(f"{{{n}}}" for n in PLACEHOLDERS if n != "condor_config")
    out = render_user_data("#!/bin/sh\n" + text + " {{queue}} {condor_config}\n", C)
    assert "ECM-abc f1 ECM cm.example:9618 1700003600 600 1700086400 eyJh.eyJi.c2ln" in out
    assert "http://169.254.169.254 {queue} PilotFactoryWorker" in out
    assert placeholders("{{queue}} {token} {nope}") == {"token"}


def test_unsafe_values_are_refused_but_previewed() -> None:
    bad = VMContract("w'; rm -rf /", "f1", "ECM", None)
    with pytest.raises(ValueError, match=r"placeholder \{worker_id\}"):
        render_user_data("#!/bin/sh\n{worker_id}\n", bad)
    assert "w'; rm" in render_user_data("#!/bin/sh\n{worker_id}\n", bad, check=False)
    # only what the template uses is judged: a shared-port collector is fine in condor_config
    spaced = VMContract("w1", "f1", "ECM", "cm:9618?sock=collector my")
    assert "COLLECTOR_HOST = cm:9618?sock=collector my" in render_user_data("#!/bin/sh\n", spaced)
    with pytest.raises(ValueError, match=r"placeholder \{collector\}"):
        render_user_data("#!/bin/sh\nC='{collector}'\n", spaced)


def test_condor_config_carries_the_contract() -> None:
    text = condor_config(C)
    assert 'PilotFactoryWorker = "ECM-abc"' in text and "COLLECTOR_HOST = cm.example:9618" in text
    assert "PilotFactoryLeaseUntil = 1700003600" in text
    assert "PilotFactoryDeadline = 1700086400" in text
    for daemon in ("STARTD_ATTRS", "MASTER_ATTRS"):
        [line] = [x for x in text.splitlines() if x.startswith(daemon)]
        assert "PilotFactoryLeaseUntil PilotFactoryDeadline" in line
    assert DEADLINE_START in text and "PilotFactoryInterruption =?= undefined" in text
    # CondorEC2: no worker id is known; the VM claims none
    bare = condor_config(VMContract("", "f1", "ECM", None))
    assert "PilotFactoryWorker" not in bare and "PilotFactoryDeadline = 0" in bare
    assert DEADLINE_START not in bare


@pytest.mark.parametrize(
    ("job", "ok"),
    [
        ({}, True),  # states nothing: taken while the deadline is ahead
        ({"PilotFactoryExpectedRuntime": 3000}, True),
        ({"PilotFactoryExpectedRuntime": 4000}, False),
        ({"MaxWallTimeMins": 50}, True),
        ({"MaxWallTimeMins": 70}, False),
        ({"PilotFactoryExpectedRuntime": 100, "MaxWallTimeMins": 900}, True),
    ],
)
def test_deadline_start_expression(job: dict[str, int], ok: bool) -> None:
    machine = classad2.ClassAd({"PilotFactoryDeadline": int(time.time()) + 3600})
    expr = classad2.ExprTree(DEADLINE_START)
    assert expr.eval(machine, classad2.ClassAd(job)) is ok
    no_limit = classad2.ClassAd({"PilotFactoryDeadline": 0})
    assert expr.eval(no_limit, classad2.ClassAd(job)) is True


# ---------------------------------------------------------------------------- shipped templates


def section(text: str, start: str, end: str) -> str:
    begin = text.index(start) + len(start)
    return text[begin : text.index(end, begin)]


@pytest.mark.parametrize("name", TEMPLATES)
def test_shipped_template_documents_and_uses_every_placeholder(name: str) -> None:
    text = (WORKER / name).read_text()
    readme = (WORKER / "README.md").read_text()
    for placeholder in PLACEHOLDERS:
        assert f"{{{{{placeholder}}}}}" in text, f"{name} header lacks {placeholder}"
        assert f"`{{{placeholder}}}`" in readme, f"README lacks {placeholder}"
    used = placeholders(text)
    assert used >= set(PLACEHOLDERS) - {"worker_id", "deadline", "collector"}
    out = render_user_data(text, C)
    body = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    assert not placeholders(body), "every placeholder rendered (the header keeps their names)"
    assert "STARTD_NOCLAIM_SHUTDOWN" in out and "MASTER.DAEMON_SHUTDOWN" in out
    assert "DEFAULT_MASTER_SHUTDOWN_SCRIPT = /sbin/poweroff" in out
    assert "STARTD_CRON_PILOTFACTORY_NOTICE_ARGS = /etc/condor/pilotfactory/pfvm notice " in out
    assert "pfvm\" lease 'f1/ECM' '1700003600' '600'" in out
    assert len(out.encode()) < 16384, "EC2 takes at most 16 KB of user data"


def test_shell_template_is_valid_shell() -> None:
    out = render_user_data((WORKER / "worker.sh").read_text(), C)
    proc = subprocess.run(["sh", "-n"], input=out, text=True, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.startswith("#!/bin/sh\n")


def test_cloud_config_and_shell_ship_the_same_vm_side() -> None:
    yaml = pytest.importorskip("yaml")
    sh = render_user_data((WORKER / "worker.sh").read_text(), C)
    doc = yaml.safe_load(render_user_data((WORKER / "worker.cloud-config").read_text(), C))
    files = {f["path"]: f for f in doc["write_files"]}
    helper = files["/etc/condor/pilotfactory/pfvm"]["content"]
    assert helper == section(sh, "cat >\"$PF/pfvm\" <<'PILOTFACTORY_EOF'\n", "PILOTFACTORY_EOF")
    ast.parse(helper)  # the helper is Python (every cloud-init image has python3)
    life = files["/etc/condor/config.d/92-pilotfactory-life.conf"]["content"]
    assert life in sh
    conf = files["/etc/condor/config.d/90-pilotfactory.conf"]["content"]
    assert conf.strip() == condor_config(C)
    boot = files["/etc/condor/pilotfactory/boot"]
    assert boot["permissions"] == "0700" and "TOKEN='eyJh.eyJi.c2ln'" in boot["content"]
    assert doc["runcmd"] == [["sh", "/etc/condor/pilotfactory/boot"]]
    # the boot steps are the shell template's, word for word
    assert boot["content"].split("# 1. The token")[1] in sh


def test_no_lease_starts_no_loop() -> None:
    out = render_user_data((WORKER / "worker.sh").read_text(), VMContract("w", "f", "q", None))
    assert "if [ '0' -gt 0 ]; then" in out and "TOKEN=''" in out


# ---------------------------------------------------------------------------- tokens


def test_token_claims_and_find_tokens() -> None:
    tok = unsigned_token({"sub": "condor@x", "exp": 5})
    assert token_claims(tok) == {"sub": "condor@x", "exp": 5}
    assert token_claims("not.a.token") is None and token_claims("abc") is None
    assert find_tokens(f"TOKEN='{tok}'\nx.y.z\n") == [tok]


def test_user_data_mints_one_scoped_token_per_worker(tmp_path: Path) -> None:
    port, cloud, env, _ = setup()
    key = tmp_path / "POOL"
    key.write_text("k")
    key.chmod(0o600)
    tpl = WORKER / "worker.sh"
    params = {"user_data_file": str(tpl), "lease": 3600, "lease_grace": 600}
    ids = submit(env, token_signing_key=str(key), **params).submit(2)
    calls = port.named("create_token")
    assert [c[1:] for c in calls] == [(None, WORKER_AUTHZ, 4200, str(key))] * 2
    launches = [c[1].user_data for c in cloud.calls if c[0] == "launch"]
    tokens = [find_tokens(ud) for ud in launches]
    assert [len(t) for t in tokens] == [1, 1] and tokens[0] != tokens[1]
    for ud, wid in zip(launches, ids, strict=True):
        assert f'PilotFactoryWorker = "{wid}"' in ud
        assert f"PilotFactoryLeaseUntil = {int(NOW) + 3600}" in ud
    # no key: no token, no call
    submit(env, **params).submit(1)
    assert len(port.named("create_token")) == 2
    assert "TOKEN=''" in [c[1].user_data for c in cloud.calls if c[0] == "launch"][-1]
    preview = submit(env, token_signing_key=str(key), **params).preview()
    assert "TOKEN='<token>'" in preview and len(port.named("create_token")) == 2


def test_condorec2_mints_one_token_per_batch(tmp_path: Path) -> None:
    port = FakeCondor()
    key = tmp_path / "POOL"
    key.write_text("k")
    key.chmod(0o600)
    tpl = WORKER / "worker.cloud-config"
    plugin = ec2(tmp_path, port, user_data_file=str(tpl), token_signing_key=str(key), lease=600)
    plugin.submit(3)
    assert port.count("create_token") == 1
    rendered = Path(port.named("submit")[0][1]["ec2_user_data_file"]).read_text()
    [token] = find_tokens(rendered)
    claims = token_claims(token)
    assert claims is not None and claims["exp"] <= time.time() + 600 + 600 + 5
    assert "PilotFactoryWorker = " not in rendered


# ---------------------------------------------------------------------------- check


def test_template_warnings() -> None:
    forever = unsigned_token({"sub": "condor@pool"})
    expiring = unsigned_token({"sub": "condor@pool", "exp": 2_000_000_000})
    text = (
        "#!/bin/sh\ncp key /etc/condor/passwords.d/POOL\n"
        f"echo {forever} > t\necho {expiring} > u\n"
        "-----BEGIN RSA PRIVATE KEY-----\n"
    )
    warnings = template_warnings(text)
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("line 2 embeds a pool password or signing key (passwords.d)")
    assert "line 5" in warnings[1] and "condor@pool without an expiry" in warnings[2]
    for name in TEMPLATES:
        assert template_warnings((WORKER / name).read_text()) == [], name


def test_check_names_the_file_and_the_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tpl = tmp_path / "bad-worker.sh"
    tpl.write_text(f"#!/bin/sh\necho {unsigned_token({'sub': 'condor@pool'})} > /t\n")
    conf = tmp_path / "queues.conf"
    conf.write_text(
        "[VMQ]\nwmsstatusplugin = Condor\nbatchstatusplugin = EC2\nbatchsubmitplugin = EC2\n"
        "schedplugin = Fixed\nsched.fixed.pilotspercycle = 1\n"
        "batchsubmit.ec2.image = ami-1\nbatchsubmit.ec2.flavor = t3.micro\n"
        f"batchsubmit.ec2.user_data_file = {tpl}\n"
    )
    assert main(["check", "-q", str(conf)]) == 0  # warnings alone
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if "without an expiry" in x]
    assert "[VMQ] batchsubmit.ec2.user_data_file: warning:" in line and str(tpl) in line
    assert re.search(r"1 warning\(s\)|[1-9]\d* warning", out)


def test_ec2_plugin_has_the_contract_params() -> None:
    names = {p.name for p in EC2Submit.PARAMS}
    assert {"metadata_url", "token_signing_key", "token_identity", "lease"} <= names
    assert Q == "ECM"


@pytest.mark.parametrize(
    ("params", "warned"),
    [
        ({"token_signing_key": "/k", "lease": 3600}, True),  # renewed without end
        ({"token_signing_key": "/k", "lease": 3600, "max_lifetime": 86400}, True),
        (
            {"token_signing_key": "/k", "lease": 3600, "max_lifetime": 86400,
             "token_lifetime": 90000},
            False,
        ),
        ({"token_signing_key": "/k"}, False),  # no lease: a 2 h token, nothing renewed
        ({"lease": 3600}, False),  # no token minted
    ],
)  # fmt: skip
def test_check_says_when_a_renewed_vm_outlives_its_token(params: dict, warned: bool) -> None:
    from pilotfactory.cli import token_outlived

    why = token_outlived(params)
    assert (why is not None) is warned, why
    if why:
        assert "re-authenticate" in why and "max_lifetime" in why
