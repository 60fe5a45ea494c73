"""APF-compatible configuration: inheritance, interpolation, merging, typed params, errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from pilotfactory.cli import main
from pilotfactory.factory.config import (
    ConfigError,
    load_factory_config,
    load_queues,
)
from tests.conftest import example

OSG2013 = example("osg2013-queues.conf")

BASE = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
schedplugin = Ready, MaxPerCycle
sched.maxpercycle.maximum = 10
site = BNL

[Q1]
wmsqueue = %(site)s_LABEL
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_osg2013_example_loads_unchanged() -> None:
    res = load_queues([str(OSG2013)])
    assert res.errors == []
    names = {q.name: q for q in res.queues}
    assert set(names) == {"BNL_CLOUD", "BNL_CLOUD-ec2-spot"}
    pilot = names["BNL_CLOUD"]
    assert [s.name for s in pilot.sched] == ["Activated"]
    assert pilot.sched[0].params["max_pilots_per_cycle"] == 80
    assert pilot.sched[0].params["max_pilots_pending"] == 100
    assert pilot.sched[0].params["min_pilots_per_cycle"] is None  # unset, not 0
    ec2 = names["BNL_CLOUD-ec2-spot"]
    assert ec2.wmsstatus.name == "Condor"  # legacy CondorLocal resolved by alias
    assert ec2.batchstatus.name == "CondorEC2"
    assert [s.name for s in ec2.sched] == ["Ready", "MaxPerCycle", "MaxToRun"]
    assert ec2.sched[2].params["maximum"] == 5000
    assert ec2.batchsubmit.params["spot_price"] == pytest.approx(0.156)


def test_check_passes_on_example() -> None:
    assert main(["check", "-q", str(OSG2013)]) == 0


def test_default_inheritance_and_interpolation(tmp_path: Path) -> None:
    res = load_queues([write(tmp_path, "q.conf", BASE)])
    assert res.errors == []
    (q,) = res.queues
    assert q.wmsqueue == "BNL_LABEL"
    assert q.sched[1].params["maximum"] == 10


def test_later_file_wins_per_key(tmp_path: Path) -> None:
    a = write(tmp_path, "a.conf", BASE)
    b = write(tmp_path, "b.conf", "[Q1]\nsched.maxpercycle.maximum = 3\n")
    (q,) = load_queues([a, b]).queues
    assert q.sched[1].params["maximum"] == 3
    assert q.wmsqueue == "BNL_LABEL"  # keys b does not set are kept from a


def test_queue_dir_conf_read_as_one_file(tmp_path: Path) -> None:
    d = tmp_path / "queues.d"
    d.mkdir()
    (d / "00-default.conf").write_text(
        "[DEFAULT]\nwmsstatusplugin = Condor\nbatchstatusplugin = Condor\n"
        "batchsubmitplugin = CondorLocal\nschedplugin = Fixed\nsched.fixed.pilotspercycle = 2\n"
    )
    (d / "10-a.conf").write_text("[A]\nwmsqueue = a\n")
    (d / "20-b.conf").write_text("[B]\nsched.fixed.pilotspercycle = 0\n")
    res = load_queues([], str(d))
    assert res.errors == []
    got = {q.name: q.sched[0].params["pilotspercycle"] for q in res.queues}
    assert got == {"A": 2, "B": 0}


def test_keys_are_case_sensitive(tmp_path: Path) -> None:
    text = BASE + "\n[Q2]\nWmsQueue = x\n"
    res = load_queues([write(tmp_path, "q.conf", text)])
    q2 = next(q for q in res.queues if q.name == "Q2")
    assert q2.wmsqueue == "Q2"  # WmsQueue is not wmsqueue
    assert any(p.key == "WmsQueue" and "did you mean 'wmsqueue'" in p.message for p in res.problems)


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ("sched.maxpercycle.maximum = ten", "sched.maxpercycle.maximum", "expected an integer"),
        ("sched.maxpercycle.maximun = 3", "sched.maxpercycle.maximun", "did you mean 'maximum'"),
        ("schedplugin = Ready, MaxPerCycel", "schedplugin", "did you mean 'MaxPerCycle'"),
        ("batchsubmitplugin = CondorLokal", "batchsubmitplugin", "did you mean 'CondorLocal'"),
        ("apfqueue.sleep = soon", "apfqueue.sleep", "expected a number"),
        ("wmsqueue = %(nosuch)s", "wmsqueue", "interpolation failed"),
        ("retire_mode = explode", "retire_mode", "one of drain, peaceful, kill"),
        ("max_retire_per_cycle = lots", "max_retire_per_cycle", "expected N or N%"),
    ],
)
def test_errors_name_file_section_key(tmp_path: Path, extra: str, key: str, fragment: str) -> None:
    text = BASE + "\n[BAD]\n" + extra + "\n"
    path = write(tmp_path, "q.conf", text)
    res = load_queues([path])
    assert [q.name for q in res.queues] == ["Q1"]  # the broken section disables only itself
    assert res.broken == ["BAD"]
    errs = [p for p in res.errors if p.section == "BAD"]
    assert errs, res.problems
    assert errs[0].key == key
    assert errs[0].file == path
    assert fragment in errs[0].message, errs[0].message


def test_disabled_queue_is_skipped(tmp_path: Path) -> None:
    res = load_queues([write(tmp_path, "q.conf", BASE + "\n[OFF]\nenabled = False\n")])
    assert res.disabled == ["OFF"]
    assert [q.name for q in res.queues] == ["Q1"]


def test_condor_attributes_both_forms(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent(
        r"""
        [A]
        batchsubmit.condorlocal.condor_attributes = request_memory=2000, +Note=a\,b
        batchsubmit.condorlocal.condor_attributes.request_cpus = 8
        """
    )
    res = load_queues([write(tmp_path, "q.conf", text)])
    q = next(q for q in res.queues if q.name == "A")
    attrs = q.batchsubmit.params["condor_attributes"]
    assert attrs == {"request_memory": "2000", "+Note": "a,b", "request_cpus": "8"}


def test_factory_conf(tmp_path: Path) -> None:
    qpath = write(tmp_path, "queues.conf", BASE)
    fpath = write(
        tmp_path,
        "factory.conf",
        """
        [Factory]
        factoryId = test-factory
        queueConf = queues.conf
        factory.sleep = 5
        maxperfactory.maximum = 40
        batchstatus.condor.maxage = 120
        factoryAdminEmial = x@y
        """,
    )
    fcfg, problems = load_factory_config(fpath)
    assert fcfg.factory_id == "test-factory"
    assert fcfg.queue_conf == (qpath,)
    assert fcfg.sleep == 5.0
    assert fcfg.maxperfactory == 40
    assert fcfg.plugin_defaults == {"batchstatus.condor.maxage": "120"}
    assert any("did you mean 'factoryAdminEmail'" in p.message for p in problems)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_queues([str(tmp_path / "missing.conf")])


def test_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.conf", BASE)
    bad = write(tmp_path, "bad.conf", BASE + "\n[BAD]\nschedplugin = Nope\n")
    assert main(["check", "-q", good]) == 0
    assert main(["check", "-q", bad]) == 1
    out = capsys.readouterr().out
    assert "[BAD] schedplugin: error: unknown sched plugin 'Nope'" in out
    assert main(["check", "-q", str(tmp_path / "nope.conf")]) == 2


def test_shipped_configs_pass_check() -> None:
    root = Path(__file__).resolve().parents[3]
    conf = root / "etc" / "queues.conf"
    assert os.path.exists(conf)
    assert main(["check", "-c", str(root / "etc" / "factory.conf")]) == 0


def test_factory_defaults_reach_the_plugin_family(tmp_path: Path) -> None:
    qpath = write(
        tmp_path,
        "queues.conf",
        """
        [DEFAULT]
        batchsubmit.condorec2.gridresource = https://ec2.example.test/
        batchsubmit.condorec2.ami_id = ami-1
        batchsubmit.condorec2.instance_type = m1.small
        batchsubmit.condorec2.access_key_id = /nonexistent/access.key
        batchsubmit.condorec2.secret_access_key = /nonexistent/secret.key
        [VM]
        wmsstatusplugin = Condor
        batchstatusplugin = CondorEC2
        batchsubmitplugin = CondorEC2
        schedplugin = Ready
        [VM2]
        wmsstatusplugin = Condor
        batchstatusplugin = CondorEC2
        batchsubmitplugin = CondorEC2
        schedplugin = Ready
        batchstatus.condorec2.maxage = 30
        """,
    )
    fpath = write(
        tmp_path,
        "factory.conf",
        f"[Factory]\nqueueConf = {qpath}\nbatchstatus.condor.maxage = 120\n",
    )
    fcfg, _ = load_factory_config(fpath)
    res = load_queues(list(fcfg.queue_conf), factory=fcfg)
    got = {q.name: q.batchstatus.params["maxage"] for q in res.queues}
    assert got == {"VM": 120.0, "VM2": 30.0}


@pytest.mark.parametrize(
    ("plugin", "missing", "key"),
    [
        ("CondorEC2", "ami_id", "batchsubmit.condorec2.ami_id"),
        ("CondorEC2", "secret_access_key", "batchsubmit.condorec2.secret_access_key"),
        ("EC2", "image", "batchsubmit.ec2.image"),
        ("OpenStack", "flavor", "batchsubmit.openstack.flavor"),
    ],
)
def test_a_queue_without_what_its_submit_plugin_needs_is_refused(
    tmp_path: Path, plugin: str, missing: str, key: str
) -> None:
    """``check`` names the key a submit plugin cannot work without; the queue is broken, its
    neighbours load."""
    given = {
        "CondorEC2": {
            "gridresource": "https://ec2.example.test/", "ami_id": "ami-1",
            "instance_type": "m1.small", "access_key_id": "/k", "secret_access_key": "/s",
        },
        "EC2": {"image": "ami-1", "flavor": "t3.micro"},
        "OpenStack": {"image": "centos", "flavor": "m1.large", "auth_url": "http://k:5000"},
    }[plugin]  # fmt: skip
    ns = f"batchsubmit.{plugin.lower()}."
    lines = "".join(f"{ns}{k} = {v}\n" for k, v in given.items() if k != missing)
    qpath = write(
        tmp_path,
        "queues.conf",
        f"[Q]\nwmsstatusplugin = Condor\nbatchstatusplugin = Condor\n"
        f"batchsubmitplugin = {plugin}\nschedplugin = Ready\n{lines}"
        "[OK]\nwmsstatusplugin = Condor\nbatchstatusplugin = Condor\n"
        "batchsubmitplugin = CondorLocal\nschedplugin = Ready\n",
    )
    res = load_queues([qpath])
    assert res.broken == ["Q"] and [q.name for q in res.queues] == ["OK"]
    (err,) = res.errors
    assert (err.section, err.key) == ("Q", key) and err.message.startswith("missing:")


def test_shipped_example_is_the_talks_file_verbatim() -> None:
    shipped = Path(__file__).resolve().parents[3] / "etc" / "examples" / "osg2013-queues.conf"
    assert shipped.read_text() == OSG2013.read_text()
