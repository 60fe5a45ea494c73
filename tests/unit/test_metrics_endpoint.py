"""The metrics as Prometheus gets them: real HTTP scrapes (IPv4 and IPv6 loopback) of a
factory's registry parsed as exposition text, snapshot ages between and across cycles, the
cycle histograms, and the ``metrics_address`` setting (``check``, ``run``)."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pilotfactory.cli import main, serve_metrics
from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import default_factory_config, load_factory_config, load_queues
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.ports import CondorUnreachable
from pilotfactory.factory.text import redact_url
from pilotfactory.plugins.wmsstatus.panda import PandaWMSStatus
from tests.unit.fakecondor import FakeCondor, make_env
from tests.unit.test_service import NOWHERE

ROOT = Path(__file__).resolve().parents[2]
AGE = "pilotfactory_status_snapshot_age_seconds"
FAILURES = "pilotfactory_source_failures"

QUEUES = """
[DEFAULT]
wmsstatusplugin = Condor
wmsstatus.condor.scheddhost = vm.pool.test
batchstatusplugin = Condor
batchstatus.condor.scheddhost = vm.pool.test
batchsubmitplugin = CondorLocal
batchsubmit.condorlocal.executable = /bin/true
schedplugin = Ready, MaxPerCycle
sched.maxpercycle.maximum = 5
apfqueue.sleep = 60

[A]
wmsqueue = LABEL_A

[B]
wmsqueue = LABEL_B
"""
BATCH = {"kind": "batchstatus", "plugin": "Condor", "source": "schedd vm.pool.test"}
WMS = {"kind": "wmsstatus", "plugin": "Condor", "source": "schedd vm.pool.test"}


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


LOOPBACKS = [
    "127.0.0.1",
    pytest.param(
        "::1",
        marks=pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback"),
    ),
]


def build(tmp_path: Path, clock: VirtualClock | None = None) -> tuple[Factory, FakeCondor, Any]:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(QUEUES))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    port = FakeCondor()
    port.jobs = [
        {"ClusterId": 1, "ProcId": k, "JobStatus": 1, "MATCH_APF_QUEUE": "LABEL_A"}
        for k in range(3)
    ]
    env, default_clock = make_env(port)
    clock = clock or default_clock
    fcfg = replace(
        default_factory_config(), factory_id="f1", raw={"baseLogDir": str(tmp_path / "logs")}
    )
    return Factory(fcfg, res.queues, env.world, clock), port, clock


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Factory, Any, str]]:
    """A factory whose metrics are served on a free port of ``request.param`` (an address)."""
    factory, port, clock = build(tmp_path)
    host, bound = factory.metrics.serve(0, request.param)
    url = f"http://[{host}]:{bound}/metrics" if ":" in host else f"http://{host}:{bound}/metrics"
    try:
        yield factory, (port, clock), url
    finally:
        factory.metrics.close()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one real scrape, by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.mark.parametrize("served", LOOPBACKS, indirect=True)
def test_a_scrape_carries_ages_failures_and_histograms(served: tuple[Factory, Any, str]) -> None:
    factory, (_, clock), url = served
    before = scrape(url)
    assert sample(before, AGE, **BATCH) is None  # not tried yet: absent
    assert sample(before, "pilotfactory_cycle_seconds_count") == 0
    factory.cycle()
    first = scrape(url)
    assert sample(first, AGE, **BATCH) == 0 and sample(first, AGE, **WMS) == 0
    assert sample(first, f"{FAILURES}_total", **BATCH) == 0  # exported before any failure
    assert sample(first, "pilotfactory_decision_n", queue="A") == 3
    clock.advance(25)  # no cycle: the age still moves, computed when scraped
    later = scrape(url)
    assert sample(later, AGE, **BATCH) == 25 and sample(later, AGE, **WMS) == 25
    assert sample(later, "pilotfactory_cycle_seconds_count") == 1
    for q in ("A", "B"):
        assert sample(later, "pilotfactory_queue_cycle_seconds_count", queue=q) == 1
        assert sample(later, "pilotfactory_queue_cycle_seconds_bucket", queue=q, le="+Inf") == 1


def test_a_failing_source_ages_while_its_failures_count(tmp_path: Path) -> None:
    factory, port, clock = build(tmp_path)
    factory.cycle()
    reg = factory.metrics.registry
    port.fail["query_jobs"] = CondorUnreachable("down")
    for k in range(1, 4):
        clock.advance(61)
        factory.cycle()
        assert reg.get_sample_value(AGE, BATCH) == 61 * k
        assert reg.get_sample_value(f"{FAILURES}_total", BATCH) == k
        assert reg.get_sample_value(f"{FAILURES}_total", WMS) == k
    del port.fail["query_jobs"]
    clock.advance(61)
    factory.cycle()
    assert reg.get_sample_value(AGE, BATCH) == 0
    assert reg.get_sample_value(f"{FAILURES}_total", BATCH) == 3


def test_a_source_never_read_is_infinitely_old(tmp_path: Path) -> None:
    factory, port, clock = build(tmp_path)
    port.fail["query_jobs"] = CondorUnreachable("down")
    factory.cycle()
    clock.advance(61)
    factory.cycle()
    assert factory.metrics.registry.get_sample_value(AGE, BATCH) == math.inf


def test_a_reload_keeps_the_series_of_an_unchanged_source(tmp_path: Path) -> None:
    factory, _, clock = build(tmp_path)
    factory.cycle()
    assert factory.reload([q.cfg for q in factory.queues.values()])
    clock.advance(61)
    factory.cycle()
    text = scrape_text(factory)
    assert text.count(f"{AGE}{{") == 2  # one wms and one batch source, no "#2" twin
    assert "#2" not in text


def scrape_text(factory: Factory) -> str:
    from prometheus_client import generate_latest

    return generate_latest(factory.metrics.registry).decode()


class TickingClock(VirtualClock):
    """Every monotonic reading is a second after the last: durations from the clock, exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks = 0.0

    def monotonic(self) -> float:
        self.ticks += 1.0
        return self.ticks


def test_histograms_count_every_cycle_timed_by_the_factory_clock(tmp_path: Path) -> None:
    factory, _, clock = build(tmp_path, TickingClock())
    factory.run(cycles=3)
    reg = factory.metrics.registry
    assert factory.cycles_run == 3
    assert reg.get_sample_value("pilotfactory_cycle_seconds_count") == 3
    for q in ("A", "B"):
        assert reg.get_sample_value("pilotfactory_queue_cycle_seconds_count", {"queue": q}) == 3
        # decide and act each read the clock twice: 2 s a cycle, 6 s in all
        assert reg.get_sample_value("pilotfactory_queue_cycle_seconds_sum", {"queue": q}) == 6
        got = reg.get_sample_value(
            "pilotfactory_queue_cycle_seconds_bucket", {"queue": q, "le": "5.0"}
        )
        assert got == 3
    # the whole cycle holds both queues' (4 readings each) and its own two
    assert reg.get_sample_value("pilotfactory_cycle_seconds_sum") == 3 * 9
    assert isinstance(clock, TickingClock)


def test_simulated_cycles_take_no_time(tmp_path: Path) -> None:
    factory, _, _ = build(tmp_path)
    factory.run(cycles=2)
    reg = factory.metrics.registry
    assert reg.get_sample_value("pilotfactory_cycle_seconds_count") == 2
    assert reg.get_sample_value("pilotfactory_cycle_seconds_sum") == 0


# ------------------------------------------------------------------ source labels


def test_panda_sources_are_labelled_by_their_redacted_url() -> None:
    url = "https://user:pw@panda.test:25443/server/panda?token=s3cret&x=1"
    env, _ = make_env(FakeCondor())
    source = PandaWMSStatus({"baseurl": url}, env)
    label = source.source_label()
    assert label == redact_url(url)
    assert "s3cret" not in label and "pw@" not in label and "panda.test:25443" in label


def test_condor_sources_name_schedd_and_collector(tmp_path: Path) -> None:
    factory, _, _ = build(tmp_path)
    labels = {s.labels for s in factory.sources.values()}
    assert labels == {
        ("wmsstatus", "Condor", "schedd vm.pool.test"),
        ("batchstatus", "Condor", "schedd vm.pool.test"),
    }


# ------------------------------------------------------------------ metrics_address


def factory_conf(tmp_path: Path, **keys: str) -> Path:
    (tmp_path / "queues.conf").write_text(textwrap.dedent(QUEUES))
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    path = tmp_path / "factory.conf"
    path.write_text(f"[Factory]\nqueueConf = {tmp_path / 'queues.conf'}\n{lines}")
    return path


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "0.0.0.0", "::", "10.1.2.3", "fe80::1"])
def test_metrics_address_takes_ip_literals(tmp_path: Path, addr: str) -> None:
    fcfg, problems = load_factory_config(str(factory_conf(tmp_path, metrics_address=addr)))
    assert problems == [] and fcfg.metrics_address == addr


def test_metrics_address_defaults_to_loopback(tmp_path: Path) -> None:
    fcfg, _ = load_factory_config(str(factory_conf(tmp_path)))
    assert fcfg.metrics_address == "127.0.0.1"


@pytest.mark.parametrize("addr", ["localhost", "[::1]", "127.0.0.256", "1.2.3", "::1::", "*"])
def test_check_flags_an_unparseable_metrics_address(
    tmp_path: Path, addr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = factory_conf(tmp_path, metrics_address=addr)
    assert main(["check", "-c", str(conf)]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "metrics_address" in x)
    assert "[Factory] metrics_address: error:" in line and "IPv4 or IPv6 address" in line


def test_a_busy_port_is_an_error_naming_the_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    factory, _, _ = build(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        factory.fcfg = replace(factory.fcfg, metrics_port=taken, source="/etc/f.conf")
        with caplog.at_level(logging.INFO, logger="pilotfactory"):
            assert serve_metrics(factory) is False
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"not starting: cannot serve metrics on 127.0.0.1:{taken} (metrics_address, "
        f"metrics_port in /etc/f.conf): [Errno {os_errno('EADDRINUSE')}] Address already in use"
    ]


def os_errno(name: str) -> int:
    import errno

    return int(getattr(errno, name))


def test_an_address_this_host_lacks_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    factory, _, _ = build(tmp_path)
    factory.fcfg = replace(factory.fcfg, metrics_port=0, metrics_address="192.0.2.1")  # TEST-NET
    try:
        with caplog.at_level(logging.ERROR, logger="pilotfactory"):
            assert serve_metrics(factory) is False
    finally:
        factory.metrics.close()  # had it bound (it must not), nothing is left listening
    (msg,) = [r.getMessage() for r in caplog.records]
    assert msg.startswith("not starting: cannot serve metrics on 192.0.2.1:0 (metrics_address")


@pytest.mark.parametrize(
    ("addr", "warned"),
    [("127.0.0.1", False), pytest.param("::1", False, marks=LOOPBACKS[1].marks), ("0.0.0.0", True)],
)
def test_the_log_names_the_bound_address_and_warns_beyond_loopback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, addr: str, warned: bool
) -> None:
    factory, _, _ = build(tmp_path)
    factory.fcfg = replace(factory.fcfg, metrics_port=0, metrics_address=addr)
    try:
        with caplog.at_level(logging.INFO, logger="pilotfactory"):
            assert serve_metrics(factory) is True
        bound = factory.metrics._server.server_address[1]
    finally:
        factory.metrics.close()
    shown = f"[{addr}]:{bound}" if ":" in addr else f"{addr}:{bound}"
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, f"metrics on {shown}") in said
    warnings = [m for level, m in said if level == logging.WARNING]
    assert bool(warnings) == warned
    if warned:
        assert "metrics_address = 0.0.0.0" in warnings[0] and "beyond this host" in warnings[0]


# ------------------------------------------------------------------ the real daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_conf(tmp_path: Path, port: int, extra: str = "") -> Path:
    (tmp_path / "queues.conf").write_text(NOWHERE)
    fconf = tmp_path / "factory.conf"
    fconf.write_text(
        f"[Factory]\nfactoryId = metrics-{os.getpid()}\nqueueConf = {tmp_path / 'queues.conf'}\n"
        f"baseLogDir = {tmp_path / 'logs'}\nfactory.sleep = 1\nfactory.refresh_timeout = 2\n"
        f"lockFile = {tmp_path / 'run' / 'factory.lock'}\nallowRoot = true\n"
        f"metrics_port = {port}\n{extra}"
    )
    return fconf


def pilotfactory(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pilotfactory.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_daemon_serves_its_sources_ages(tmp_path: Path) -> None:
    port = free_port()
    daemon = pilotfactory("run", "-v", "-c", str(daemon_conf(tmp_path, port)))
    url = f"http://127.0.0.1:{port}/metrics"
    source = {
        "plugin": "Condor",
        "source": "schedd nowhere.invalid collector 127.0.0.1:9",
    }
    try:
        deadline = time.monotonic() + 60
        while True:
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline, "no cycle seen on the metrics endpoint"
            try:
                samples = scrape(url)
            except OSError:
                samples = {}
            if (sample(samples, "pilotfactory_cycle_seconds_count") or 0) >= 1:
                break
            time.sleep(0.2)
        for kind in ("wmsstatus", "batchstatus"):
            assert sample(samples, AGE, kind=kind, **source) == math.inf  # never read
            assert (sample(samples, f"{FAILURES}_total", kind=kind, **source) or 0) >= 1
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert f"metrics on 127.0.0.1:{port}" in err and "Traceback" not in err, err


def test_the_daemon_refuses_a_busy_metrics_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = pilotfactory("run", "-c", str(daemon_conf(tmp_path, port)))
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 1, err
    assert f"cannot serve metrics on 127.0.0.1:{port} (metrics_address, metrics_port" in err
    assert "Traceback" not in err, err


def test_fake_world_is_untouched_by_the_scrape(tmp_path: Path) -> None:
    """A scrape reads what the last cycle recorded; it never asks a source."""
    factory, port, _ = build(tmp_path)
    factory.cycle()
    calls = len(port.calls)
    scrape_text(factory)
    assert len(port.calls) == calls
