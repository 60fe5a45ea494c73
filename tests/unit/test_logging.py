"""Logs: stderr by default, one INFO line per queue per cycle, ``--log-format json``, and
per-queue files under ``factory.queueLogDir`` (rotated, confined to the directory, reopened
across a reload), all on real files, the simulated world and real processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pilotfactory import logs
from pilotfactory.cli import main
from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import default_factory_config, load_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.trace import CURRENT_QUEUE
from pilotfactory.logs import JsonFormatter, LogSetupError, QueueFiles, queue_log_path, queue_of
from pilotfactory.sim.pool import PoolConfig
from pilotfactory.sim.runner import START
from pilotfactory.sim.workload import preset
from pilotfactory.sim.world import SimConfig, SimWorld
from tests.unit.test_service import NOWHERE, finish, pilotfactory

DOTTED = "ANALY_X-gk01.bnl.gov"
"""An APF queue name: dots, which a per-queue logger name would turn into a hierarchy."""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    logs.teardown()
    root.setLevel(level)


class Capture(logging.Handler):
    """Every record with the queue it belongs to, as the handlers see it when it is emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.got: list[tuple[int, str | None, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.got.append((record.levelno, queue_of(record), record.getMessage()))


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- the formats


def test_json_lines_carry_time_level_logger_message_queue_and_one_string_traceback() -> None:
    logger = logging.getLogger("pilotfactory.test.json")
    fmt = JsonFormatter()
    record = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "vm %s said: %s", ("a\r\nb", "\x1b]0;x\x07"),
        None, extra={"queue": "Q1", "trace": {"cycle": 7, "notes": ["x\ny"], "time": "forged"}},
    )  # fmt: skip
    line = fmt.format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING" and out["logger"] == "pilotfactory.test.json"
    assert out["queue"] == "Q1" and out["cycle"] == 7
    assert out["message"] == "vm a\\r\\nb said: \\x1b]0;x\\x07", "inert as in the text format"
    assert out["notes"] == ["x\\ny"]
    assert out["time"].endswith("Z") and out["time"] != "forged", "extras never overwrite"
    assert abs(datetime.fromisoformat(out["time"]).timestamp() - record.created) < 0.001
    try:
        raise ValueError("boom\x1b[2J")
    except ValueError:
        logger_exc = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    out = json.loads(fmt.format(logger_exc))
    assert out["exc"].startswith("Traceback") and out["exc"].endswith("ValueError: boom\\x1b[2J")
    assert "\n" in out["exc"] and "queue" not in out


def test_a_record_emitted_during_a_queues_cycle_belongs_to_that_queue() -> None:
    logger = logging.getLogger("pilotfactory.test.tag")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "m", (), None)
    assert queue_of(record) is None
    token = CURRENT_QUEUE.set("Q2")
    try:
        assert queue_of(record) == "Q2"
    finally:
        CURRENT_QUEUE.reset(token)


def test_stderr_is_the_default_and_follows_a_replaced_stream(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup(0, "json")
    log = logging.getLogger("pilotfactory.test.stderr")
    log.info("not shown at the default level")
    log.warning("shown")
    err = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in err] == ["shown"]
    logs.setup(1, "text")  # replaces, never doubles
    log.info("now")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith("INFO pilotfactory.test.stderr: now")


# ---------------------------------------------------------------------------- per-queue files


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", ".hidden", "a b"])
def test_a_queue_name_cannot_escape_the_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(LogSetupError, match="cannot name a log file"):
        queue_log_path(str(tmp_path), name)
    files = QueueFiles(str(tmp_path / "logs"), 1000, 1, "text", logging.INFO)
    os.mkdir(tmp_path / "logs")
    problems = files.set_queues([name, "OK"])
    assert len(problems) == 1 and files.queues == ["OK"]
    files.close()
    assert sorted(os.listdir(tmp_path)) == ["logs"]
    assert os.listdir(tmp_path / "logs") == ["OK.log"]


def test_a_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "Q.log").symlink_to(tmp_path / "elsewhere.log")
    assert queue_log_path(str(tmp_path / "logs"), DOTTED).endswith(f"/logs/{DOTTED}.log")
    with pytest.raises(LogSetupError, match="outside it"):
        queue_log_path(str(tmp_path / "logs"), "Q")
    assert not (tmp_path / "elsewhere.log").exists()


def test_queue_files_rotate_at_max_bytes_and_keep_backups(tmp_path: Path) -> None:
    files = QueueFiles(str(tmp_path), 400, 2, "text", logging.INFO)
    files.set_queues([DOTTED, "OTHER"], strict=True)
    log = logging.getLogger("pilotfactory.test.rotate")
    log.addHandler(files)
    log.propagate = False
    log.setLevel(logging.DEBUG)
    try:
        for i in range(60):
            log.info("line %03d of the queue", i, extra={"queue": DOTTED})
        log.debug("below the files' level", extra={"queue": DOTTED})
        log.info("no queue: no file")
        log.info("not a configured queue", extra={"queue": "STRANGER"})
    finally:
        log.removeHandler(files)
        files.close()
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(["OTHER.log", f"{DOTTED}.log", f"{DOTTED}.log.1", f"{DOTTED}.log.2"])
    assert (tmp_path / "OTHER.log").read_text() == ""
    for name in names:
        assert (tmp_path / name).stat().st_size <= 400
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert "line 059" in (tmp_path / f"{DOTTED}.log").read_text()
    text = "".join((tmp_path / n).read_text() for n in names)
    assert "line 000" not in text, "older than two backups: rotated away"
    assert "below the files' level" not in text and "STRANGER" not in text


def test_max_bytes_zero_leaves_rotation_to_logrotate(tmp_path: Path) -> None:
    files = QueueFiles(str(tmp_path), 0, 5, "json", logging.INFO)
    files.set_queues(["Q"], strict=True)
    log = logging.getLogger("pilotfactory.test.watched")
    log.addHandler(files)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("before", extra={"queue": "Q"})
        os.rename(tmp_path / "Q.log", tmp_path / "Q.log-20261203")  # what logrotate does
        log.info("after", extra={"queue": "Q"})
    finally:
        log.removeHandler(files)
        files.close()
    assert [r["message"] for r in json_lines(tmp_path / "Q.log-20261203")] == ["before"]
    assert [r["message"] for r in json_lines(tmp_path / "Q.log")] == ["after"]


def test_the_directory_is_made_0750_and_an_unusable_one_is_a_clear_error(tmp_path: Path) -> None:
    made = tmp_path / "new" / "queues"
    logs.prepare_directory(str(made))
    assert stat.S_IMODE(made.stat().st_mode) == 0o750
    (tmp_path / "file").write_text("")
    with pytest.raises(LogSetupError) as info:
        logs.prepare_directory(str(tmp_path / "file" / "queues"))
    assert str(info.value).startswith(f"factory.queueLogDir = {tmp_path / 'file' / 'queues'}:")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(LogSetupError, match="cannot create or write the directory"):
            logs.prepare_directory(str(locked))


def test_run_refuses_to_start_when_the_queue_log_directory_cannot_be_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    fconf = daemon_confs(tmp_path, f"factory.queueLogDir = {tmp_path / 'file' / 'q'}\n")
    assert main(["run", "--once", "-c", str(fconf)]) == 1
    err = capsys.readouterr().err
    assert f"not starting: factory.queueLogDir = {tmp_path / 'file' / 'q'}: cannot" in err, err
    assert "Traceback" not in err


def test_settings_are_read_and_checked(tmp_path: Path) -> None:
    conf = tmp_path / "factory.conf"
    conf.write_text("[Factory]\nfactory.queueLogDir = qlogs\nfactory.logMaxBytes = 0\n")
    fcfg, problems = load_factory_config(str(conf))
    assert problems == []
    assert fcfg.queue_log_dir == str(tmp_path / "qlogs") and fcfg.log_max_bytes == 0
    assert fcfg.log_backups == 5 and fcfg.base_log_dir == "/var/log/pilotfactory"
    assert default_factory_config().queue_log_dir is None, "unset: stderr only"
    conf.write_text("[Factory]\nfactory.logBackups = 0\nfactory.logMaxBytes = -1\n")
    _, problems = load_factory_config(str(conf))
    assert sorted(p.key for p in problems if p.severity == "error") == [
        "factory.logBackups",
        "factory.logMaxBytes",
    ]


# ---------------------------------------------------------------------------- a real factory

SITES = """
[DEFAULT]
wmsstatusplugin = Panda
wmsqueue = SITE
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/true
schedplugin = Activated, MaxPerCycle
sched.activated.max_pilots_per_cycle = 10
sched.maxpercycle.maximum = 3
apfqueue.sleep = 60
wmsstatus.panda.sitestatus_url = http://sim.invalid/queues.json

[SITE_A]

[{dotted}]
"""


def test_one_info_line_per_queue_per_cycle_on_the_simulated_world(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(SITES.format(dotted=DOTTED)))
    result = load_queues([str(conf)])
    assert result.errors == [] and len(result.queues) == 2
    fcfg = replace(default_factory_config(), factory_id="logs", queue_log_dir=str(tmp_path / "q"))
    clock = VirtualClock(START)
    world = SimWorld(
        clock,
        SimConfig(
            seed=1,
            pool=PoolConfig(static_nodes=4),
            sites={"SITE": "online"},
            workload=preset("panda", site="SITE", scale=0.2),
        ),
    )
    logs.setup(0, "json")  # stderr stays at WARNING; the files take INFO
    files = logs.add_queue_files(fcfg, "json", 0)
    assert files is not None
    factory = Factory(fcfg, result.queues, world, clock)
    files.set_queues(factory.queues, strict=True)
    for _ in range(5):  # PanDA work arrives first
        world.tick()
        clock.sleep(60)
    seen = Capture()
    logging.getLogger().addHandler(seen)
    try:
        for _ in range(2):
            world.tick()
            factory.cycle(force=True)
            clock.sleep(60)
    finally:
        logging.getLogger().removeHandler(seen)
    info = [(q, m) for level, q, m in seen.got if level == logging.INFO]
    assert sorted(q or "" for q, _ in info) == sorted(["SITE_A", "SITE_A", DOTTED, DOTTED]), info
    assert not [g for g in seen.got if g[0] > logging.INFO], "a clean run warns of nothing"
    assert capsys.readouterr().err == "", "stderr keeps its own level"
    for queue in ("SITE_A", DOTTED):
        lines = json_lines(tmp_path / "q" / f"{queue}.log")
        assert [r["cycle"] for r in lines] == [1, 2]
        for r in lines:
            assert r["queue"] == queue and r["level"] == "INFO"
            assert r["logger"] == "pilotfactory.factory.queue"
            assert r["message"].startswith(f"queue {queue}: cycle={r['cycle']} n=")
            assert [s["plugin"] for s in r["chain"]] == ["Activated", "MaxPerCycle"]
            assert all({"in", "out", "reason"} <= set(s) for s in r["chain"])
            assert r["errors"] == {}
        first = lines[0]
        assert first["n"] == 3 and first["chain"][-1]["out"] == 3
        [submit] = first["actions"]
        assert submit["kind"] == "submit" and submit["count"] == 3
        assert len(submit["ids"]) == 3 == len(set(submit["ids"]))
        assert first["results"] == ["submitted 3"]
        # cycle 2 read the pilots cycle 1 submitted: the logged ids are this queue's jobs
        mine = {w.id for w in factory.queues[queue].batch_source.info(queue).workers}
        assert set(submit["ids"]) <= mine


# ---------------------------------------------------------------------------- the daemon


def daemon_confs(tmp_path: Path, extra: str, queues: str = NOWHERE) -> Path:
    (tmp_path / "queues.conf").write_text(queues)
    fconf = tmp_path / "factory.conf"
    fconf.write_text(
        f"[Factory]\nfactoryId = logs-{os.getpid()}\nqueueConf = {tmp_path / 'queues.conf'}\n"
        f"factory.sleep = 1\nfactory.refresh_timeout = 2\nallowRoot = true\n"
        f"lockFile = {tmp_path / 'run' / 'factory.lock'}\n{extra}"
    )
    return fconf


def test_run_once_writes_json_to_stderr_and_each_queues_file(tmp_path: Path) -> None:
    two = NOWHERE + NOWHERE.replace("[NOWHERE]", f"[{DOTTED}]")
    fconf = daemon_confs(tmp_path, f"factory.queueLogDir = {tmp_path / 'q'}\n", two)
    rc, err = finish(pilotfactory("run", "--once", "--log-format", "json", "-c", str(fconf)))
    assert rc == 3, err  # both failed closed (no collector)
    stderr = [json.loads(line) for line in err.splitlines()]
    assert stderr and all({"time", "level", "logger", "message"} <= set(r) for r in stderr)
    assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o750
    for queue in ("NOWHERE", DOTTED):
        lines = json_lines(tmp_path / "q" / f"{queue}.log")
        assert all(r["queue"] == queue for r in lines)
        [cycle] = [r for r in lines if "cycle" in r]
        assert cycle["cycle"] == 1 and cycle["level"] == "INFO" and cycle["chain"] is None
        assert cycle["errors"]["batch"] and cycle["actions"] == []
        assert cycle["notes"][0].startswith("fail closed: batch status unavailable")


def _open_files(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/<pid>/fd")
def test_sighup_opens_new_queues_files_and_closes_removed_ones(tmp_path: Path) -> None:
    qdir = tmp_path / "q"
    fconf = daemon_confs(tmp_path, f"factory.queueLogDir = {qdir}\n")
    daemon = pilotfactory("run", "-c", str(fconf))
    try:
        old, new = str(qdir / "NOWHERE.log"), str(qdir / f"{DOTTED}.log")
        deadline = time.monotonic() + 30
        while old not in _open_files(daemon.pid):
            assert daemon.poll() is None and time.monotonic() < deadline, daemon.communicate()
            time.sleep(0.1)
        (tmp_path / "queues.conf").write_text(NOWHERE.replace("[NOWHERE]", f"[{DOTTED}]"))
        daemon.send_signal(signal.SIGHUP)
        while new not in (opened := _open_files(daemon.pid)) or old in opened:
            assert daemon.poll() is None and time.monotonic() < deadline + 30
            time.sleep(0.1)
        while f"queue {DOTTED}: cycle=" not in Path(new).read_text():
            assert daemon.poll() is None and time.monotonic() < deadline + 30
            time.sleep(0.1)
        daemon.send_signal(signal.SIGTERM)
        rc, err = finish(daemon)
        assert rc == 0, err
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert "queue NOWHERE: cycle=1 n=0 chain=[-]" in Path(old).read_text()
    assert "NOWHERE" not in Path(new).read_text().replace(f"{DOTTED}", "")
