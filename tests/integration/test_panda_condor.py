"""The 2013 example's BNL_CLOUD queue, unchanged but for an override file pointing it at the
local PanDA emulator, submitting pilots into the real sandbox pool by Activated's limits."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.clock import WallClock
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.ports import CondorTarget
from pilotfactory.sim.panda_server import PandaEmulator
from tests.conftest import example

pytestmark = pytest.mark.condor

EXAMPLE = example("osg2013-queues.conf")


@pytest.fixture
def emulator() -> Iterator[PandaEmulator]:
    with PandaEmulator() as emu:
        yield emu


def test_bnl_cloud_submits_by_activated_and_stops_when_panda_says_so(
    condor_pool: Any, emulator: PandaEmulator, tmp_path: Path
) -> None:
    jobdir = Path(os.environ["PILOTFACTORY_SANDBOX_JOBDIR"]) / f"panda-{uuid.uuid4().hex[:6]}"
    old = os.umask(0)
    jobdir.mkdir(parents=True, mode=0o1777)
    override = tmp_path / "site-override.conf"
    override.write_text(
        textwrap.dedent(
            f"""
            [BNL_CLOUD]
            wmsstatus.panda.baseurl = {emulator.url}
            wmsstatus.panda.sitestatus_url = {emulator.sitestatus_url}
            wmsstatus.panda.timeout = 5
            # no grid proxy in the sandbox, and the talk's wrapper is not installed there
            batchsubmit.condorlocal.proxy =
            batchsubmit.condorlocal.executable = /bin/sleep
            batchsubmit.condorlocal.executable.arguments = 600
            apfqueue.sleep = 1

            [BNL_CLOUD-ec2-spot]
            # this sandbox has no route to EC2
            enabled = False
            """
        )
    )
    res = load_queues([str(EXAMPLE), str(override)])
    assert res.errors == [], res.problems
    assert [q.name for q in res.queues] == ["BNL_CLOUD"]
    fid = f"it-panda-{uuid.uuid4().hex[:6]}"
    fcfg = replace(
        default_factory_config(), factory_id=fid, raw={"baseLogDir": str(jobdir / "logs")}
    )
    factory = Factory(fcfg, res.queues, RealWorld("bindings"), WallClock())
    emulator.set_counts("BNL_CLOUD", {"activated": 150, "running": 3})
    emulator.set_site_status("BNL_CLOUD", "online")
    try:
        t1 = factory.cycle(force=True)[0]
        assert t1.wms is not None and t1.wms.ready == 150
        assert t1.n == 80 and t1.results == ["submitted 80"]  # max_pilots_per_cycle
        t2 = factory.cycle(force=True)[0]
        assert t2.batch is not None
        pending = t2.batch.pending
        assert pending > 0
        # Activated: min(150 - pending, 80, 100 - pending) with max_pilots_pending = 100.
        assert t2.n == max(0, min(150 - pending, 80, 100 - pending))
        t3 = factory.cycle(force=True)[0]
        assert t3.batch is not None and t3.batch.pending <= 100

        emulator.go_offline("503")
        t4 = factory.cycle(force=True)[0]
        assert t4.wms is None and t4.wms_error and t4.n == 0 and not t4.planned
        emulator.go_online()
        emulator.set_site_status("BNL_CLOUD", "offline")
        queue = factory.queues["BNL_CLOUD"]
        queue.wms_source.next_retry = 0.0  # type: ignore[attr-defined]  # skip the back-off
        t5 = factory.cycle(force=True)[0]
        assert t5.wms is not None and t5.wms.site_status.value == "offline"
        assert t5.n == 0 and not any(a.kind.value == "submit" for a in t5.planned)
    finally:
        os.umask(old)
        port = RealWorld("bindings").condor(CondorTarget())
        jobs = port.query_jobs({"PilotFactoryId": fid}, ["ClusterId", "ProcId"])
        if jobs:
            port.remove([f"{j['ClusterId']}.{j['ProcId']}" for j in jobs], "test cleanup")
