"""``run`` as a service: one daemon per factory id (a lock, real processes and signals), no
root privileges unless configured, and exit code 3 when a queue failed its cycle."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pilotfactory.factory.config import default_factory_config
from pilotfactory.service import FactoryLock, ServiceError, default_lock_path

ROOT = Path(__file__).resolve().parents[2]

# A queue whose collector does not exist: every cycle fails closed at once, and nothing can be
# submitted anywhere (the real pool may be up while the unit tests run).
NOWHERE = """
[NOWHERE]
wmsstatusplugin = Condor
wmsqueue = NOWHERE
wmsstatus.condor.collectorhost = 127.0.0.1:9
wmsstatus.condor.scheddhost = nowhere.invalid
batchstatusplugin = Condor
batchstatus.condor.collectorhost = 127.0.0.1:9
batchstatus.condor.scheddhost = nowhere.invalid
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/true
batchsubmit.condorlocal.collectorhost = 127.0.0.1:9
batchsubmit.condorlocal.scheddhost = nowhere.invalid
schedplugin = Ready
"""


def confs(tmp_path: Path, extra: str = "allowRoot = true\n") -> Path:
    (tmp_path / "queues.conf").write_text(NOWHERE)
    fconf = tmp_path / "factory.conf"
    fconf.write_text(
        f"[Factory]\nfactoryId = svc-{os.getpid()}\nqueueConf = {tmp_path / 'queues.conf'}\n"
        f"baseLogDir = {tmp_path / 'logs'}\nfactory.sleep = 1\nfactory.refresh_timeout = 2\n"
        f"lockFile = {tmp_path / 'run' / 'factory.lock'}\n{extra}"
    )
    return fconf


def pilotfactory(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pilotfactory.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        **kw,  # type: ignore[call-overload]
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_lock_is_exclusive_and_says_who_holds_it(tmp_path: Path) -> None:
    path = str(tmp_path / "x" / "f.lock")
    first = FactoryLock(path, "f1")
    first.acquire()
    second = FactoryLock(path, "f1")
    with pytest.raises(ServiceError, match=rf"factory f1 is already running \(pid {os.getpid()} "):
        second.acquire()
    first.release()
    second.acquire()  # released: the next one takes it
    second.release()


def test_default_lock_path_is_per_factory_id() -> None:
    a, b = default_lock_path("one"), default_lock_path("two")
    assert a != b and a.endswith("one.lock") and b.endswith("two.lock")


def test_one_daemon_per_factory_id(tmp_path: Path) -> None:
    fconf = confs(tmp_path)
    daemon = pilotfactory("run", "-c", str(fconf))
    try:
        lock = tmp_path / "run" / "factory.lock"
        deadline = time.monotonic() + 30
        while not (lock.exists() and lock.read_text()):
            assert daemon.poll() is None, daemon.communicate()
            assert time.monotonic() < deadline, "the daemon never took its lock"
            time.sleep(0.1)
        rc, err = finish(pilotfactory("run", "--once", "-c", str(fconf)))
        assert rc == 1, err
        assert f"is already running (pid {daemon.pid} on " in err, err
        assert "Traceback" not in err
        # A dry run acts on nothing: it may look while the daemon runs.
        rc, err = finish(pilotfactory("run", "--once", "--dry-run", "-c", str(fconf)))
        assert rc == 3 and "already running" not in err, err
        t0 = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        rc, err = finish(daemon)
        assert rc == 0, err
        assert time.monotonic() - t0 < 10
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    # The lock went with the daemon: the next run takes it (and its queue failed closed: 3).
    rc, err = finish(pilotfactory("run", "--once", "-c", str(fconf)))
    assert rc == 3, err


def test_a_lock_held_by_a_killed_daemon_is_free(tmp_path: Path) -> None:
    fconf = confs(tmp_path)
    daemon = pilotfactory("run", "-c", str(fconf))
    lock = tmp_path / "run" / "factory.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    daemon.kill()  # kill -9: the kernel drops the flock
    daemon.communicate()
    rc, err = finish(pilotfactory("run", "--once", "-c", str(fconf)))
    assert rc == 3 and "already running" not in err, err


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="checks what happens when run as root")


@root_only
def test_root_is_refused_unless_configured(tmp_path: Path) -> None:
    rc, err = finish(pilotfactory("run", "--once", "-c", str(confs(tmp_path, extra=""))))
    assert rc == 1 and "refusing to run as root" in err and "factoryUser" in err, err


@root_only
def test_root_switches_to_factory_user(tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="pf-svc-"))  # pytest's tmp dirs are root's alone
    try:
        shared.chmod(0o1777)
        fconf = confs(tmp_path, extra=f"factoryUser = nobody\nlockFile = {shared}/f.lock\n")
        text = fconf.read_text().replace(f"lockFile = {tmp_path / 'run' / 'factory.lock'}\n", "")
        fconf.write_text(text)
        rc, err = finish(pilotfactory("run", "--once", "-v", "-c", str(fconf)))
        assert "switched from root to nobody" in err, err
        assert rc == 3, err  # it ran its cycle (which failed closed), as nobody
        assert (shared / "f.lock").stat().st_uid != 0, "the lock was taken as nobody"
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    fconf = confs(tmp_path, "factoryUser = nosuch\n")
    rc, err = finish(pilotfactory("run", "--once", "-c", str(fconf)))
    assert rc == 1 and "factoryUser 'nosuch': no such user" in err, err


def test_factory_config_defaults_keep_no_root() -> None:
    fcfg = default_factory_config()
    assert fcfg.allow_root is False and fcfg.factory_user is None and fcfg.lock_file is None
