"""Pre-flight probes through the real backends: OpenStack (keystoneauth1 + novaclient) and PanDA
(requests through ``bounded_get``), with HTTP answered by ``responses``.

Each goes the production way: the plugin's ``preflight`` names the probe, ``RealWorld`` builds
the port, the probe judges what it answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.probe import Finding, Need, Probe, Result
from pilotfactory.plugins.batchsubmit.cloud import OpenStackSubmit
from pilotfactory.plugins.wmsstatus.panda import PandaWMSStatus
from tests.unit.backends.test_cloud_openstack import (
    KEYSTONE,
    NOVA,
    PASSWORD,
    keystone,
    secret_file,
)

PANDA = "https://panda.test:25443/api/v1"
STATS = PANDA + "/statistics/active_job_stats_by_site"
TOKEN = "bearer-not-for-output"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def run(probe: Probe, need: Need | None = None) -> list[Finding]:
    return probe.check(need or Need(("q1",), 10))


# ---------------------------------------------------------------------------- OpenStack


def openstack_probe(tmp_path: Path) -> Probe:
    params = {
        "auth_url": "http://keystone.test:5000",
        "username": "pilots",
        "password_file": secret_file(tmp_path, PASSWORD),
        "project_name": "atlas",
        "region": "RegionOne",
        "retries": 0,
        "timeout": 5,
        "collectorhost": "cm.test",
    }
    cloud, collector = OpenStackSubmit.preflight(params, RealWorld())
    assert collector.endpoint == "collector cm.test"
    return cloud


def limits(rsps: responses.RequestsMock, **absolute: int) -> None:
    rsps.add(responses.GET, f"{NOVA}/limits", json={"limits": {"rate": [], "absolute": absolute}})


def test_openstack_limits_read(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    keystone(rsps)
    limits(rsps, maxTotalInstances=10, totalInstancesUsed=4, maxTotalCores=40, totalCoresUsed=16)
    probe = openstack_probe(tmp_path)
    assert probe.endpoint == "OpenStack http://keystone.test:5000 atlas region RegionOne"
    assert [(f.result, f.what) for f in run(probe, Need(("q1", "q2"), 5))] == [
        (Result.OK, "credentials accepted"),
        (
            Result.OK,
            "instances: 4 of 10 used, 6 free; cores 16 of 40 used; the queues' maximum 5 fits",
        ),
    ]
    findings = run(probe, Need(("q1", "q2"), 8))
    assert findings[1].result is Result.WARN and "launches past 6" in findings[1].what


def test_openstack_unlimited_project(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    keystone(rsps)
    limits(rsps, maxTotalInstances=-1, totalInstancesUsed=3)
    findings = run(openstack_probe(tmp_path))
    assert findings[1] == Finding(Result.OK, "instances: 3 used, no limit")


def test_openstack_refused_credentials_fail_naming_the_setting(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    rsps.add(
        responses.POST,
        f"{KEYSTONE}/auth/tokens",
        status=401,
        json={
            "error": {
                "code": 401,
                "title": "Unauthorized",
                "message": "The request you have made requires authentication.",
            }
        },
    )
    [finding] = run(openstack_probe(tmp_path))
    assert finding.result is Result.FAIL
    assert finding.what.startswith(
        "credentials refused (batchsubmit.openstack.username / "
        "batchsubmit.openstack.password_file): "
    )
    assert "401" in finding.what and PASSWORD not in finding.what


# ---------------------------------------------------------------------------- PanDA


def panda_probes(tmp_path: Path, **extra: Any) -> list[Probe]:
    params = {"baseurl": PANDA, "timeout": 5.0, **extra}
    return PandaWMSStatus.preflight(params, RealWorld())


def test_panda_ok(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    data = {"BNL": {"activated": 3}, "CERN": {"running": 1}}
    rsps.add(responses.GET, STATS, json={"success": True, "data": data})
    [probe] = panda_probes(tmp_path)
    assert probe.endpoint == f"PanDA {PANDA}"
    assert run(probe) == [Finding(Result.OK, "job statistics read: 2 site(s)")]


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ({"status": 500, "body": "<h1>Internal Server Error</h1>"}, "HTTP 500 server error"),
        ({"body": requests.exceptions.ReadTimeout("slow")}, "timed out"),
        ({"body": requests.exceptions.ConnectionError("refused")}, "refused"),
        ({"json": {"success": False, "message": "down for maintenance"}}, "success=false"),
    ],
)
def test_panda_failures(
    rsps: responses.RequestsMock, tmp_path: Path, reply: dict[str, Any], says: str
) -> None:
    rsps.add(responses.GET, STATS, **reply)
    [probe] = panda_probes(tmp_path)
    [finding] = run(probe)
    assert finding.result is Result.FAIL
    assert says in finding.what and STATS in finding.what


def test_panda_refused_token_names_the_setting_not_the_token(
    rsps: responses.RequestsMock, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    rsps.add(responses.GET, STATS, status=401, body="token rejected")
    [probe] = panda_probes(tmp_path, token_file=str(token))
    [finding] = run(probe)
    assert finding.result is Result.FAIL
    assert finding.what.startswith("credentials refused (wmsstatus.panda.token_file): ")
    assert TOKEN not in finding.what
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_panda_site_status_is_its_own_probe(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    rsps.add(responses.GET, "https://cric.test/queues.json", status=503, body="busy")
    server, sites = panda_probes(tmp_path, sitestatus_url="https://cric.test/queues.json")
    assert sites.endpoint == "site status https://cric.test/queues.json"
    [finding] = run(sites)
    assert finding.result is Result.FAIL and "HTTP 503" in finding.what
    assert server.key != sites.key
