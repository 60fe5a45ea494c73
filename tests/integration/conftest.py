"""Integration fixtures: the real HTCondor sandbox pool booted by ``scripts/condor-sandbox``.

Tests that need the pool ask for ``condor_pool`` (and are marked ``condor``). The pool is booted
once per session; a boot failure is an error, never a skip, so CI cannot pass without HTCondor.
``PILOTFACTORY_SKIP_CONDOR=1`` is the one explicit way out. The session shuts the pool down
only if it booted it (a pool someone else brought up stays up); set
``PILOTFACTORY_SANDBOX_KEEP=1`` to keep it for the next run (a cached boot takes ~5 s anyway).
When a pool test fails its report gets condor_q, condor_status and the daemon log tails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from moto.server import ThreadedMotoServer

from pilotfactory.factory.ports import CondorTarget

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / "scripts" / "condor-sandbox"
SKIP_ENV = "PILOTFACTORY_SKIP_CONDOR"
KEEP_ENV = "PILOTFACTORY_SANDBOX_KEEP"
BOOT_TIMEOUT = 900  # a cold boot downloads a Debian chroot; a cached one takes seconds
LOG_FILES = ("MasterLog", "SchedLog", "StartLog", "StarterLog*", "ShadowLog", "NegotiatorLog")


@dataclass(frozen=True)
class CondorPool:
    """What tests need to know about the sandbox pool (all read from ``condor-sandbox env``)."""

    env: dict[str, str]
    script: Path = SANDBOX
    booted_here: bool = field(default=False, compare=False)

    @property
    def schedd(self) -> str:
        return self.env["PILOTFACTORY_CONDOR_SCHEDD"]

    @property
    def collector(self) -> str:
        return self.env["PILOTFACTORY_CONDOR_COLLECTOR"]

    @property
    def machine(self) -> str:
        return self.env["PILOTFACTORY_SANDBOX_MACHINE"]

    @property
    def bin_dir(self) -> Path:
        return Path(self.env["PILOTFACTORY_SANDBOX_BIN"])

    @property
    def log_dir(self) -> Path:
        return Path(self.env["PILOTFACTORY_SANDBOX_LOGDIR"])

    @property
    def admin_token_dir(self) -> str:
        return self.env["PILOTFACTORY_CONDOR_ADMIN_TOKEN_DIR"]

    def target(self) -> CondorTarget:
        """The pool as APF names it: scheddhost + collectorhost."""
        return CondorTarget(schedd=self.schedd, collector=self.collector)

    def job_dir(self) -> Path:
        """A fresh directory jobs can use: same path inside the chroot, writable by the job user."""
        path = Path(tempfile.mkdtemp(prefix="job-", dir=self.env["PILOTFACTORY_SANDBOX_JOBDIR"]))
        path.chmod(0o777)
        return path

    def tool(self, *argv: str, timeout: float = 30) -> str:
        """Run a sandbox condor_* wrapper; output (stdout + stderr) for diagnostics."""
        exe = self.bin_dir / argv[0]
        proc = subprocess.run(
            [str(exe), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return proc.stdout + proc.stderr


def parse_exports(text: str) -> dict[str, str]:
    """``export NAME=value`` lines (shell-quoted) as a dict; other lines are ignored."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
    return env


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


_POOL: CondorPool | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(SKIP_ENV) != "1":
        return
    skip = pytest.mark.skip(reason=f"{SKIP_ENV}=1: the real HTCondor pool is disabled")
    for item in items:
        if item.get_closest_marker("condor") or "condor_pool" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def condor_pool() -> Generator[CondorPool, None, None]:
    """Boot (or join) the sandbox pool, export its environment into this process, stop it after."""
    global _POOL
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the real HTCondor pool is disabled")
    if shutil.which("chroot") is None or os.geteuid() != 0:
        raise RuntimeError(
            "the HTCondor sandbox needs root and chroot (or set PILOTFACTORY_SKIP_CONDOR=1)"
        )
    proc = subprocess.run(
        [str(SANDBOX), "up"],
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{SANDBOX} up failed with exit code {proc.returncode}:\n{_tail(proc.stderr, 60)}"
        )
    env = parse_exports(proc.stdout)
    booted_here = "already up" not in proc.stderr
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    import htcondor2

    htcondor2.reload_config()
    pool = CondorPool(env=env, booted_here=booted_here)
    _POOL = pool
    try:
        yield pool
    finally:
        _POOL = None
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        htcondor2.reload_config()
        if booted_here and os.environ.get(KEEP_ENV) != "1":
            subprocess.run(
                [str(SANDBOX), "down"], stdin=subprocess.DEVNULL, timeout=120, check=False
            )


def pool_report(pool: CondorPool) -> str:
    """condor_q, condor_status and the daemon log tails: what one needs to read a failure."""
    parts = []
    for argv in (
        ("condor_q", "-allusers", "-nobatch"),
        ("condor_q", "-allusers", "-af:jh", "JobStatus", "HoldReason", "RemoteHost"),
        ("condor_status",),
        ("condor_status", "-master"),
    ):
        try:
            out = pool.tool(*argv)
        except (OSError, subprocess.SubprocessError) as exc:
            out = f"({exc})"
        parts.append(f"$ {' '.join(argv)}\n{_tail(out, 60)}")
    for pattern in LOG_FILES:
        for path in sorted(pool.log_dir.glob(pattern))[:4]:
            text = path.read_text(errors="replace")
            parts.append(f"--- {path} (tail)\n{_tail(text, 40)}")
    return "\n\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    uses_pool = "condor_pool" in getattr(item, "fixturenames", ())
    if report.failed and uses_pool and _POOL is not None:
        report.sections.append(("condor pool state", pool_report(_POOL)))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Timelines the elastic scenarios attach to their reports (user property "timeline")."""
    seen = set()
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown" or report.nodeid in seen:
                continue
            for name, rows in getattr(report, "user_properties", ()):
                if name == "timeline":
                    seen.add(report.nodeid)
                    terminalreporter.write_sep("-", f"timeline {report.nodeid}")
                    for row in rows:
                        terminalreporter.write_line(row)


@pytest.fixture(scope="module")
def moto_url() -> Generator[str, None, None]:
    """A moto EC2 server on loopback for one test module. moto's backends are global to the
    process, so its state is reset afterwards: a module's leftovers (the scale test's 1,000
    terminated instances) would otherwise slow every describe of the modules after it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    requests.post(f"{url}/moto-api/reset", timeout=60).raise_for_status()
    server.stop()
