"""A separately packaged site plugin is found through its entry point and runs in a chain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pilotfactory.factory.chain import run_chain
from pilotfactory.factory.config import load_queues
from pilotfactory.factory.info import BatchQueueInfo, WMSQueueInfo
from pilotfactory.factory.plugin import SchedContext, SchedPlugin
from pilotfactory.factory.registry import Registry

SITE_PLUGIN = Path(__file__).resolve().parents[2] / "site_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(SITE_PLUGIN),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for mod in [m for m in sys.modules if m.startswith("pilotfactory_siteplugin")]:
        del sys.modules[mod]


def test_without_the_package_the_name_is_unknown(tmp_path: Path) -> None:
    # Runs first (file order): the package is not installed yet.
    conf = tmp_path / "queues.conf"
    conf.write_text(
        "[SITE]\nwmsstatusplugin = Condor\nbatchstatusplugin = Condor\n"
        "batchsubmitplugin = CondorLocal\nschedplugin = SiteQuota\n"
    )
    res = load_queues([str(conf)], registry=Registry())
    assert res.broken == ["SITE"]
    assert "unknown sched plugin 'SiteQuota'" in res.errors[0].message


def test_site_plugin_loads_and_runs(installed: Path, tmp_path: Path) -> None:
    conf = tmp_path / "queues.conf"
    conf.write_text(
        "[SITE]\nwmsstatusplugin = Condor\nbatchstatusplugin = Condor\n"
        "batchsubmitplugin = CondorLocal\nschedplugin = SiteQuota, MaxPerCycle\n"
        "sched.sitequota.share = 25\nsched.maxpercycle.maximum = 4\n"
    )
    res = load_queues([str(conf)], registry=Registry())
    assert res.errors == []
    (q,) = res.queues
    assert q.sched[0].cls.__module__ == "pilotfactory_siteplugin"
    plugins: list[SchedPlugin] = [s.cls(s.params) for s in q.sched]  # type: ignore[call-arg]
    ctx = SchedContext(
        queue="SITE",
        now=0.0,
        wms=WMSQueueInfo(queue="SITE", time=0.0, ready=40),
        batch=BatchQueueInfo(queue="SITE", time=0.0),
    )
    result = run_chain(plugins, ctx)
    assert [s.n_out for s in result.steps] == [10, 4]
    assert "SiteQuota: ready=40 share=25 ret=10" in result.summary()
