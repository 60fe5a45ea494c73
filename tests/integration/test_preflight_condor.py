"""Pre-flight against the real HTCondor pool: the ping calls of both condor backends, and
``pilotfactory check --preflight`` end to end (a subprocess, as an operator runs it) with one
endpoint that answers and one closed port that must fail within its time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pilotfactory.backends.condor.bindings import BindingsCondor
from pilotfactory.backends.condor.cli import CliCondor
from pilotfactory.factory.ports import CondorTarget, CondorUnreachable

if TYPE_CHECKING:  # tests/integration is not a package; pytest loads conftest itself
    from conftest import CondorPool  # type: ignore[import-not-found,unused-ignore]

pytestmark = [pytest.mark.condor, pytest.mark.timeout(240)]
REPO = Path(__file__).resolve().parents[2]
BACKENDS = {"bindings": BindingsCondor, "cli": CliCondor}


def closed_port() -> str:
    """A loopback address nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_ping_reaches_the_pool(condor_pool: CondorPool, backend: str) -> None:
    port = BACKENDS[backend](condor_pool.target())
    port.ping_schedd()
    port.ping_collector()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_ping_of_a_closed_port_fails_quickly(condor_pool: CondorPool, backend: str) -> None:
    dead = closed_port()
    port = BACKENDS[backend](CondorTarget(schedd=condor_pool.schedd, collector=dead))
    started = time.monotonic()
    with pytest.raises(CondorUnreachable):
        port.ping_collector()
    with pytest.raises(CondorUnreachable):
        port.ping_schedd()
    assert time.monotonic() - started < 30


QUEUES = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
schedplugin = Ready, MaxToRun
sched.maxtorun.maximum = 5
batchsubmit.condorlocal.executable = /bin/true
wmsstatus.condor.scheddhost = {schedd}
batchstatus.condor.scheddhost = {schedd}
batchsubmit.condorlocal.scheddhost = {schedd}
wmsstatus.condor.collectorhost = {good}
batchstatus.condor.collectorhost = {good}
batchsubmit.condorlocal.collectorhost = {good}

[GOOD1]
wmsqueue = A

[GOOD2]
wmsqueue = B

[DEAD]
wmsqueue = C
wmsstatus.condor.collectorhost = {dead}
batchstatus.condor.collectorhost = {dead}
batchsubmit.condorlocal.collectorhost = {dead}
"""


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_check_preflight_end_to_end(condor_pool: CondorPool, tmp_path: Path, backend: str) -> None:
    dead = closed_port()
    queues = tmp_path / "queues.conf"
    queues.write_text(
        textwrap.dedent(QUEUES).format(
            schedd=condor_pool.schedd, good=condor_pool.collector, dead=dead
        )
    )
    factory = tmp_path / "factory.conf"
    factory.write_text(
        f"[Factory]\nfactoryId = preflight-it\nqueueConf = {queues}\ncondor_backend = {backend}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "pilotfactory.cli", "check", "-c", str(factory), "--preflight"]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert time.monotonic() - started < 60
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "pre-flight: 2 endpoint(s): 1 ok, 0 warn, 1 FAIL" in lines
    good = f"schedd {condor_pool.schedd} via collector {condor_pool.collector}"
    bad = f"schedd {condor_pool.schedd} via collector {dead}"
    [ok_line] = [ln for ln in lines if good in ln]
    [fail_line] = [ln for ln in lines if bad in ln]
    assert ok_line.startswith("ok ") and "queues: GOOD1, GOOD2" in ok_line
    assert fail_line.startswith("FAIL ") and "queues: DEAD" in fail_line
    after = lines[lines.index(fail_line) + 1]
    assert after.strip().startswith("FAIL  job query (1 job, 1 attribute): unreachable")

    proc = subprocess.run(
        [*argv, "--json"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 3
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    results = {tuple(e["queues"]): e["result"] for e in report["preflight"]}
    assert results == {("GOOD1", "GOOD2"): "ok", ("DEAD",): "fail"}
