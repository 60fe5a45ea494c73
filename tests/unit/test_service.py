"""``run`` as a service: one daemon per factory id (a lock, real processes and signals), no
root privileges unless configured, and exit code 3 when a queue failed its cycle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.factory.config import default_factory_config
from pilotfactory.service import FactoryLock, Health, Notifier, ServiceError, default_lock_path

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


def pilotfactory(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pilotfactory.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env or {**os.environ, "PYTHONPATH": str(ROOT)},
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


# ---------------------------------------------------------------------------- systemd notify


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> None:
        self.messages.append(fields)


class T:
    def __init__(self, failed: bool) -> None:
        self.failed = failed


def test_health_ready_after_the_first_cycle_and_watchdog_only_while_queues_succeed() -> None:
    sent = Sent()
    health = Health(sent, unhealthy_after=100, now=0.0)  # type: ignore[arg-type]
    health.after_tick([], 1.0)  # nothing due yet: not ready
    assert sent.messages[-1][0].startswith("STATUS=") and len(sent.messages[-1]) == 1
    health.after_tick([T(True), T(False)], 2.0)
    assert sent.messages[-1][0] == "READY=1" and sent.messages[-1][-1] == "WATCHDOG=1"
    assert "1 failed; healthy" in sent.messages[-1][1]
    health.after_tick([T(True)], 50.0)  # one failing queue, within the allowance
    assert sent.messages[-1][-1] == "WATCHDOG=1"
    health.after_tick([T(True)], 103.0)  # no queue succeeded for 101 s
    assert "WATCHDOG=1" not in sent.messages[-1]
    assert "UNHEALTHY: no queue succeeded for 101s" in sent.messages[-1][-1]
    health.after_tick([T(False)], 104.0)
    assert sent.messages[-1][-1] == "WATCHDOG=1" and "READY=1" not in sent.messages[-1]


def test_notifier_speaks_to_a_socket_and_is_silent_without_one(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    Notifier({}).send("READY=1")  # not under systemd: nothing happens
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog == 30.0
        notifier.send("READY=1", "STATUS=two\nlines")
        assert server.recv(4096) == b"READY=1\nSTATUS=two lines"
    abstract = f"@pilotfactory-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + abstract[1:])
        Notifier({"NOTIFY_SOCKET": abstract}).send("WATCHDOG=1")
        assert server.recv(4096) == b"WATCHDOG=1"
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).send("READY=1")  # no error


def test_the_daemon_tells_systemd_ready_status_and_stopping(tmp_path: Path) -> None:
    """A real daemon under a fake systemd: READY after its first cycle, a STATUS line, no
    WATCHDOG while no queue can do its work past factory.unhealthy_after, STOPPING on TERM."""
    fconf = confs(tmp_path, extra="allowRoot = true\nfactory.unhealthy_after = 1\n")
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(30)
        daemon = pilotfactory(
            "run", "-c", str(fconf), env={**os.environ, "PYTHONPATH": str(ROOT),
                                          "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "60000000"}
        )  # fmt: skip
        try:
            got: list[str] = []
            while not any("UNHEALTHY" in m for m in got):
                got.append(server.recv(4096).decode())
            assert got[0].startswith("READY=1\nSTATUS=1 cycles"), got
            assert "WATCHDOG=1" in got[0], "healthy at first (within the allowance)"
            assert "WATCHDOG=1" not in got[-1], got[-1]
            daemon.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in got[-1]:
                got.append(server.recv(4096).decode())
            rc, err = finish(daemon)
            assert rc == 0, err
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()


def test_the_shipped_unit_is_a_notify_service_with_a_watchdog_the_loop_can_feed() -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "etc" / "systemd" / "pilotfactory.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"].split()[1:3] == ["run", "-c"]
    assert service["ExecReload"].endswith("kill -HUP $MAINPID")
    assert service["User"] != "root"
    # The loop ticks every factory.sleep (30 s by default): the watchdog must outlast ticks.
    assert int(service["WatchdogSec"]) >= 4 * default_factory_config().sleep
    tmpfiles = (ROOT / "etc" / "systemd" / "pilotfactory.tmpfiles").read_text()
    assert "d /run/pilotfactory" in tmpfiles, "the default lock directory"
    assert service["User"] in (ROOT / "etc" / "systemd" / "pilotfactory.sysusers").read_text()


def test_sighup_to_a_real_daemon_keeps_a_broken_queue_on_its_old_config(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    fconf = confs(tmp_path, extra=f"allowRoot = true\nstatusFile = {status}\n")
    daemon = pilotfactory("run", "-c", str(fconf))
    try:
        deadline = time.monotonic() + 30
        while not status.exists():
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        queues = tmp_path / "queues.conf"
        queues.write_text(NOWHERE.replace("schedplugin = Ready", "schedplugin = Ready, Nope"))
        daemon.send_signal(signal.SIGHUP)
        while True:
            state = json.loads(status.read_text())
            if state.get("reload_errors"):
                break
            assert daemon.poll() is None and time.monotonic() < deadline + 30
            time.sleep(0.2)
        assert "Nope" in state["reload_errors"]["NOWHERE"]
        assert list(state["queues"]) == ["NOWHERE"], "the queue runs on"
        queues.write_text("")  # a reload that would leave no queue is refused whole
        daemon.send_signal(signal.SIGHUP)
        while not json.loads(status.read_text()).get("reload_refused"):
            assert daemon.poll() is None and time.monotonic() < deadline + 60
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        rc, err = finish(daemon)
        assert rc == 0, err
        assert "keeps its old configuration" in err, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_sighup_with_a_changed_queue_keeps_its_counters_and_kill_9_keeps_its_state(
    tmp_path: Path,
) -> None:
    """A real daemon: SIGHUP after a change of the queue's interval keeps its counters (the
    queue is not reborn); after a kill -9 a new daemon restores them from stateFile."""
    status, state = tmp_path / "status.json", tmp_path / "state.json"
    fconf = confs(tmp_path, extra=f"allowRoot = true\nstatusFile = {status}\nstateFile = {state}\n")
    queues = tmp_path / "queues.conf"
    queues.write_text(NOWHERE + "apfqueue.sleep = 1\n")

    def counters() -> dict[str, int]:
        try:
            return dict(json.loads(status.read_text())["queues"]["NOWHERE"]["counters"])
        except (OSError, ValueError, KeyError):
            return {}

    def wait(what: str, done: Any, daemon: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 60
        while not done():
            assert daemon.poll() is None, f"daemon exited waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {counters()}"
            time.sleep(0.1)

    daemon = pilotfactory("run", "-c", str(fconf))
    try:
        wait("3 cycles", lambda: counters().get("cycles", 0) >= 3, daemon)
        queues.write_text(NOWHERE + "apfqueue.sleep = 2\n")
        daemon.send_signal(signal.SIGHUP)
        before = counters()["cycles"]
        wait("a cycle after the reload", lambda: counters()["cycles"] > before + 1, daemon)
        after = counters()
        assert after["failclosed"] >= before, "counters carried over, not restarted at 0"
        daemon.kill()  # kill -9: nothing in memory survives
        daemon.wait(timeout=10)
        kept = json.loads(state.read_text())["queues"]["NOWHERE"]["counters"]["cycles"]
        assert kept >= after["cycles"]
        status.unlink()
        daemon = pilotfactory("run", "-c", str(fconf))
        wait("the new daemon's first status", lambda: counters(), daemon)
        assert counters()["cycles"] > kept, "restored from the state file, not from 0"
        daemon.send_signal(signal.SIGTERM)
        rc, err = finish(daemon)
        assert rc == 0, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
