"""The local PanDA emulator, read over real loopback HTTP by PandaClient and the plugin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.backends.panda import HttpSettings, PandaClient, SiteStatusSource
from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.info import SiteStatus
from pilotfactory.factory.params import defaults
from pilotfactory.factory.plugin import Env
from pilotfactory.factory.ports import PandaError, PandaPort, SiteStatusPort
from pilotfactory.plugins.wmsstatus.panda import PandaWMSStatus
from pilotfactory.sim.panda_server import DETAILED, STATS, PandaEmulator

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emu() -> Iterator[PandaEmulator]:
    with PandaEmulator() as e:
        e.set_counts("BNL_CLOUD", {"activated": 40, "running": 5})
        e.set_counts("BNL_CLOUD", {"activated": 2}, label="user", resource_type="MCORE")
        e.set_site_status("BNL_CLOUD", "online")
        yield e


class TinyWorld:
    def condor(self, target: Any) -> Any:
        raise NotImplementedError

    def cloud(self, account: Any) -> Any:
        raise NotImplementedError

    def panda(self, settings: Mapping[str, Any]) -> PandaPort:
        return PandaClient.from_settings(settings)

    def site_status(self, settings: Mapping[str, Any]) -> SiteStatusPort:
        return SiteStatusSource.from_settings(settings)


def test_url_is_loopback_with_picked_port(emu: PandaEmulator) -> None:
    assert emu.port > 0
    assert emu.url == f"http://127.0.0.1:{emu.port}/api/v1"
    assert emu.legacy_url == f"http://127.0.0.1:{emu.port}/server/panda"


def test_json_api(emu: PandaEmulator) -> None:
    c = PandaClient(emu.url, legacy=False)
    assert c.active_job_stats() == {
        "BNL_CLOUD": {"assigned": 0, "activated": 42, "running": 5},
    }
    assert c.active_job_detailed_stats() == {
        "BNL_CLOUD": {
            "SCORE": {"managed": {"activated": 40, "running": 5}},
            "MCORE": {"user": {"activated": 2}},
        }
    }
    assert emu.request_count(STATS) == 1 and emu.request_count(DETAILED) == 1


def test_legacy_api_through_restricted_unpickler(emu: PandaEmulator) -> None:
    c = PandaClient(emu.legacy_url, legacy=True)
    assert c.active_job_stats()["BNL_CLOUD"]["activated"] == 42
    assert c.active_job_detailed_stats() == {
        "BNL_CLOUD": {"ANY": {"managed": {"activated": 40, "running": 5}, "user": {"activated": 2}}}
    }


def test_site_status_endpoint(emu: PandaEmulator) -> None:
    emu.set_site_status("CERN", "test")
    assert SiteStatusSource(url=emu.sitestatus_url).site_status() == {
        "BNL_CLOUD": "online",
        "CERN": "test",
    }


def test_offline_refuse_and_back(emu: PandaEmulator) -> None:
    c = PandaClient(emu.url, legacy=False)
    emu.go_offline()
    with pytest.raises(PandaError, match="connection failed"):
        c.active_job_stats()
    emu.go_online()
    assert c.active_job_stats()["BNL_CLOUD"]["activated"] == 42


def test_offline_503(emu: PandaEmulator) -> None:
    emu.go_offline("503")
    with pytest.raises(PandaError, match="HTTP 503"):
        PandaClient(emu.url).active_job_stats()
    emu.go_online()
    PandaClient(emu.url).active_job_stats()


@pytest.mark.parametrize(
    ("kind", "match", "legacy_match"),
    [
        ("json", "not valid JSON", "not a valid pickle"),
        ("shape", "data is a list", "opcode LIST"),
        ("success_false", "success=false: emulated failure", "not a valid pickle"),
        ("negative", "is -1", "is -1"),
    ],
)
def test_malformed_modes(emu: PandaEmulator, kind: str, match: str, legacy_match: str) -> None:
    emu.set_malformed(kind)
    with pytest.raises(PandaError, match=match):
        PandaClient(emu.url).active_job_stats()
    with pytest.raises(PandaError, match=legacy_match):
        PandaClient(emu.url, legacy=True).active_job_stats()
    emu.set_malformed(None)
    PandaClient(emu.url).active_job_stats()


def test_client_timeout() -> None:
    with PandaEmulator() as e:
        e.delay = 1.0
        with pytest.raises(PandaError, match=r"timed out after 0\.2 s"):
            PandaClient(e.url, HttpSettings(timeout=0.2)).active_job_stats()


def test_token_required(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123")
    os.chmod(token, 0o600)
    with PandaEmulator(token="tok-123") as e:
        with pytest.raises(PandaError, match="HTTP 401"):
            PandaClient(e.url).active_job_stats()
        c = PandaClient.from_settings({"baseurl": e.url, "token_file": str(token)})
        assert c.active_job_stats() == {}


def test_control_endpoint(emu: PandaEmulator) -> None:
    def post(what: str, doc: dict[str, Any]) -> None:
        req = urllib.request.Request(
            f"{emu.root_url}/_emulator/{what}", data=json.dumps(doc).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    post("counts", {"site": "X", "counts": {"activated": 9}})
    post("site_status", {"site": "X", "status": "offline"})
    assert emu.stats()["X"]["activated"] == 9
    assert emu.queues()["X"]["status"] == "offline"
    post("mode", {"mode": "503"})
    with pytest.raises(PandaError, match="503"):
        PandaClient(emu.url).active_job_stats()
    post("mode", {"mode": "online"})
    PandaClient(emu.url).active_job_stats()


def test_plugin_against_emulator_cycle_by_cycle(emu: PandaEmulator) -> None:
    """The issue's scenario in small: counts change, the site goes offline, the server dies."""
    clock = VirtualClock()
    p = defaults(PandaWMSStatus.PARAMS)
    p.update(baseurl=emu.url, sitestatus_url=emu.sitestatus_url, timeout=5.0)
    plugin = PandaWMSStatus(p, Env("f", TinyWorld(), clock))
    queues = {"BNL_CLOUD": p, "BNL_CLOUD_USER": {**p, "prodsourcelabel": ["user"]}}
    for q in queues.values():
        plugin.register(q)

    plugin.refresh()
    info = plugin.info("BNL_CLOUD", p)
    assert info is not None
    assert (info.ready, info.running, info.site_status) == (42, 5, SiteStatus.ONLINE)
    user = plugin.info("BNL_CLOUD", queues["BNL_CLOUD_USER"])
    assert user is not None and user.ready == 2

    emu.set_counts("BNL_CLOUD", {"activated": 0, "running": 45})
    emu.set_site_status("BNL_CLOUD", "offline")
    clock.advance(360)
    plugin.refresh()
    info = plugin.info("BNL_CLOUD", p)
    assert info is not None
    assert (info.ready, info.running, info.site_status) == (2, 45, SiteStatus.OFFLINE)
    assert emu.request_count(STATS) == 2 and emu.request_count(DETAILED) == 2

    emu.go_offline()
    clock.advance(360)
    with pytest.raises(PandaError, match="connection failed"):
        plugin.refresh()
    clock.advance(360)  # 720 s after the last good snapshot: stale
    assert plugin.info("BNL_CLOUD", p) is None


def test_standalone_module() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pilotfactory.sim.panda_server",
            "--port",
            str(port),
            "--counts",
            "BNL_CLOUD:activated=7,running=1",
            "--site-status",
            "BNL_CLOUD=test",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        c = PandaClient(f"http://127.0.0.1:{port}/api/v1", HttpSettings(timeout=2.0))
        deadline = time.monotonic() + 20
        while True:
            try:
                stats = c.active_job_stats()
                break
            except PandaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert stats["BNL_CLOUD"]["activated"] == 7
        site = SiteStatusSource(url=f"http://127.0.0.1:{port}/queues.json").site_status()
        assert site == {"BNL_CLOUD": "test"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
