"""OpenStackCloud through real python-novaclient + keystoneauth1, with HTTP answered by responses.

The Keystone v3 token and Nova replies follow the shapes python-novaclient 2.1 reads (see
docs/reference/real-htcondor.md, "Other real services for tests").
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from pilotfactory.backends.cloud.openstack import OpenStackCloud
from pilotfactory.factory.contract import TAG_ENDED, TAG_FACTORY, TAG_QUEUE, TAG_RETIRE
from pilotfactory.factory.ports import (
    CloudAuthError,
    CloudError,
    CloudInvalidRequest,
    CloudQuotaError,
    CloudThrottledError,
    CloudUnavailable,
    LaunchSpec,
)
from pilotfactory.plugins.cloudaccount import account_of
from pilotfactory.plugins.sweep import sweep_account

KEYSTONE = "http://keystone.test:5000/v3"
NOVA = "http://nova.test:8774/v2.1"
GLANCE = "http://glance.test:9292"
TOKEN = "gAAAAA-token-not-for-logs"
PASSWORD = "pa55-not-for-logs"
IMAGE_ID = "5f3c7a36-0b4e-4f0e-9d5e-3c1d2a7b8e90"
NET_ID = "9a8b7c6d-0000-4000-8000-000000000001"
MINE = {TAG_FACTORY: "fac-a", TAG_QUEUE: "q1"}


def token_body(methods: list[str]) -> dict[str, Any]:
    def service(kind: str, url: str) -> dict[str, Any]:
        endpoint = {"id": kind, "interface": "public", "region": "RegionOne", "url": url}
        return {"type": kind, "name": kind, "id": kind, "endpoints": [endpoint]}

    domain = {"id": "default", "name": "Default"}
    return {
        "token": {
            "methods": methods,
            "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": "2026-01-01T00:00:00.000000Z",
            "user": {"id": "u1", "name": "pilots", "domain": domain},
            "project": {"id": "p1", "name": "atlas", "domain": domain},
            "catalog": [service("compute", NOVA), service("image", GLANCE)],
        }
    }


def keystone(rsps: responses.RequestsMock, methods: list[str] | None = None) -> None:
    """The token POST, plus the flavor that most tests launch with (resolved by id)."""
    flavor = {"id": "f-42", "name": "m1.large", "links": []}
    rsps.add(responses.GET, f"{NOVA}/flavors/f-42", json={"flavor": flavor})
    rsps.add(
        responses.POST,
        f"{KEYSTONE}/auth/tokens",
        json=token_body(methods or ["password"]),
        status=201,
        headers={"X-Subject-Token": TOKEN},
    )


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def cloud(tmp_path: Path) -> OpenStackCloud:
    settings = {
        "auth_url": "http://keystone.test:5000",  # /v3 is added
        "username": "pilots",
        "password_file": secret_file(tmp_path, PASSWORD),
        "project_name": "atlas",
        "region": "RegionOne",
        "network_id": NET_ID,
        "retries": 0,
        "timeout": 5,
    }
    return OpenStackCloud.from_settings(account_of("openstack", settings))


def server(sid: str, status: str, meta: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "name": f"pf-q1-{sid}",
        "status": status,
        "metadata": meta,
        "created": "2026-03-01T12:00:00Z",
        "OS-EXT-STS:task_state": None,
        "links": [],
        **extra,
    }


def bodies(rsps: responses.RequestsMock, method: str, url: str) -> list[dict[str, Any]]:
    calls = [c for c in rsps.calls if c.request.method == method and c.request.url == url]
    return [json.loads(c.request.body or b"{}") for c in calls]


def test_launch_one_create_per_server_with_metadata(
    rsps: responses.RequestsMock, cloud: OpenStackCloud
) -> None:
    keystone(rsps)
    rsps.add(responses.GET, f"{NOVA}/flavors/m1.large", status=404, json={"itemNotFound": {}})
    flavors = [{"id": "f-42", "name": "m1.large", "links": []}]
    rsps.add(responses.GET, f"{NOVA}/flavors", json={"flavors": flavors})
    images = [{"id": IMAGE_ID, "name": "pilot-el9"}]
    rsps.add(responses.GET, f"{GLANCE}/v2/images", json={"images": images})
    for sid in ("s-1", "s-2"):
        reply = {"server": {"id": sid, "links": [], "security_groups": [{"name": "pilots"}]}}
        rsps.add(responses.POST, f"{NOVA}/servers", json=reply, status=202)

    spec = LaunchSpec(
        "pilot-el9", "m1.large", user_data="#!/bin/sh\n", key_name="k1", security_groups=("pilots",)
    )
    assert cloud.launch(spec, 2, MINE) == ["s-1", "s-2"]

    created = [b["server"] for b in bodies(rsps, "POST", f"{NOVA}/servers")]
    assert len(created) == 2 and created[0]["name"] != created[1]["name"]
    for body in created:
        assert body["name"].startswith("pf-q1-")
        assert body["imageRef"] == IMAGE_ID and body["flavorRef"] == "f-42"
        assert body["metadata"] == MINE and body["key_name"] == "k1"
        assert base64.b64decode(body["user_data"]) == b"#!/bin/sh\n"
        assert body["security_groups"] == [{"name": "pilots"}]
        assert body["networks"] == [{"uuid": NET_ID}]
    [auth] = bodies(rsps, "POST", f"{KEYSTONE}/auth/tokens")
    user = auth["auth"]["identity"]["password"]["user"]
    assert user["name"] == "pilots" and user["domain"] == {"name": "Default"}
    assert auth["auth"]["scope"]["project"] == {"name": "atlas", "domain": {"name": "Default"}}
    nova_calls = [c for c in rsps.calls if str(c.request.url).startswith(NOVA)]
    assert {c.request.headers["X-Auth-Token"] for c in nova_calls} == {TOKEN}
    # names and ids are cached: a second launch resolves nothing again
    cloud.launch(LaunchSpec(IMAGE_ID, "m1.large"), 1, MINE)
    assert len([c for c in rsps.calls if "/flavors" in str(c.request.url)]) == 3


def test_list_filters_on_metadata_and_maps_states(
    rsps: responses.RequestsMock, cloud: OpenStackCloud
) -> None:
    keystone(rsps)
    fault = {"code": 500, "message": "No valid host was found. ", "created": "2026-03-01"}
    deleting = {"OS-EXT-STS:task_state": "deleting"}
    page = [
        server("a", "ACTIVE", MINE),
        server("b", "BUILD", {**MINE, TAG_QUEUE: "q2"}),
        server("c", "ERROR", MINE, fault=fault),
        server("d", "SHUTOFF", MINE),
        server("e", "ACTIVE", MINE, **deleting),
        server("f", "SOFT_DELETED", MINE),
        server("g", "PAUSED", MINE),
        server("x", "ACTIVE", {TAG_FACTORY: "fac-b", TAG_QUEUE: "q1"}),
        server("y", "ACTIVE", {}),
    ]

    def pages(request: Any) -> tuple[int, dict[str, str], str]:
        past_last = "marker=" in (request.url or "")  # novaclient pages until an empty one
        return 200, {}, json.dumps({"servers": [] if past_last else page})

    rsps.add_callback(responses.GET, f"{NOVA}/servers/detail", callback=pages)

    seen = {i.id: i for i in cloud.list({TAG_FACTORY: "fac-a"})}
    assert {k: v.state for k, v in seen.items()} == {
        "a": "running",
        "b": "pending",
        "c": "error",
        "d": "stopped",
        "e": "stopping",
        "f": "terminated",
        "g": "stopping",
    }
    assert seen["c"].fault == "No valid host was found."
    assert seen["a"].fault is None and seen["a"].tags == MINE
    assert seen["a"].launched_at == 1772366400.0  # 2026-03-01T12:00:00Z
    assert {i.id for i in cloud.list(MINE)} == {"a", "c", "d", "e", "f", "g"}
    assert rsps.calls[-1].request.url == f"{NOVA}/servers/detail?marker=y"
    with pytest.raises(ValueError, match=TAG_FACTORY):
        cloud.list({TAG_QUEUE: "q1"})


SHUTOFF = {"OS-EXT-STS:vm_state": "stopped", "OS-EXT-STS:power_state": 4}


def listing(rsps: responses.RequestsMock, page: list[dict[str, Any]]) -> None:
    """GET /servers/detail answers ``page``, then (novaclient pages on) an empty one."""

    def pages(request: Any) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps({"servers": [] if "marker=" in (request.url or "") else page})

    rsps.add_callback(responses.GET, f"{NOVA}/servers/detail", callback=pages)


@pytest.mark.parametrize(
    ("status", "extra", "state", "self_off"),
    [
        # Nova answers a guest's poweroff by calling its own stop API: SHUTOFF, vm_state
        # stopped, no task left; the factory never stops a server
        ("SHUTOFF", SHUTOFF, "stopped", True),
        ("SHUTOFF", {}, "stopped", True),  # a policy that hides the extended status
        ("SHUTOFF", {**SHUTOFF, "OS-EXT-STS:task_state": "powering-on"}, "stopped", False),
        ("SHUTOFF", {**SHUTOFF, "OS-EXT-STS:task_state": "deleting"}, "stopping", False),
        ("SHUTOFF", {"OS-EXT-STS:vm_state": "error"}, "stopped", False),
        ("ACTIVE", {"OS-EXT-STS:task_state": "powering-off"}, "running", False),
        ("SUSPENDED", {"OS-EXT-STS:vm_state": "suspended"}, "stopping", False),
        ("DELETED", {"OS-EXT-STS:vm_state": "deleted"}, "terminated", False),
    ],
)
def test_shut_off_by_itself(
    rsps: responses.RequestsMock,
    cloud: OpenStackCloud,
    status: str,
    extra: dict[str, Any],
    state: str,
    self_off: bool,
) -> None:
    keystone(rsps)
    listing(rsps, [server("d", status, MINE, **extra)])
    [inst] = cloud.list(MINE)
    assert (inst.state, inst.self_shutdown) == (state, self_off)


def test_sweep_deletes_a_server_shut_off(
    rsps: responses.RequestsMock, cloud: OpenStackCloud
) -> None:
    """A SHUTOFF server holds its instance, core and RAM quota: the sweep (the daemon's
    reconcile and ``pilotfactory sweep``) marks it ended and deletes it; a running one and
    another factory's shut-off one are left alone."""
    keystone(rsps)
    other = {TAG_FACTORY: "fac-b", TAG_QUEUE: "q1"}
    page = [
        server("d", "SHUTOFF", MINE, **SHUTOFF),
        server("a", "ACTIVE", MINE),
        server("x", "SHUTOFF", other, **SHUTOFF),
    ]
    listing(rsps, page)
    rsps.add(responses.POST, f"{NOVA}/servers/d/metadata", json={"metadata": {}})
    rsps.add(responses.DELETE, f"{NOVA}/servers/d", status=204)
    result = sweep_account(cloud, "os", "fac-a", 1_700_000_000.0)
    assert (result.stopped, result.terminated, result.error) == (["d"], ["d"], None)
    assert bodies(rsps, "POST", f"{NOVA}/servers/d/metadata") == [
        {"metadata": {TAG_ENDED: "1700000000"}}
    ]
    deleted = [c.request.url for c in rsps.calls if c.request.method == "DELETE"]
    assert deleted == [f"{NOVA}/servers/d"]


def test_set_tags_merges_metadata_and_skips_gone(
    rsps: responses.RequestsMock, cloud: OpenStackCloud
) -> None:
    keystone(rsps)
    rsps.add(responses.POST, f"{NOVA}/servers/a/metadata", json={"metadata": {}})
    rsps.add(responses.POST, f"{NOVA}/servers/gone/metadata", status=404, json={})
    cloud.set_tags(["a", "gone"], {TAG_RETIRE: "1700000000"})
    assert bodies(rsps, "POST", f"{NOVA}/servers/a/metadata") == [
        {"metadata": {TAG_RETIRE: "1700000000"}}
    ]


def test_terminate_deletes_all_and_404_is_fine(
    rsps: responses.RequestsMock, cloud: OpenStackCloud
) -> None:
    keystone(rsps)
    rsps.add(responses.DELETE, f"{NOVA}/servers/a", status=204)
    rsps.add(responses.DELETE, f"{NOVA}/servers/gone", status=404, json={})
    rsps.add(responses.DELETE, f"{NOVA}/servers/bad", status=500, json={})
    rsps.add(responses.DELETE, f"{NOVA}/servers/b", status=204)
    cloud.terminate(["a", "gone"])
    with pytest.raises(CloudError, match="delete bad: HTTP 500"):
        cloud.terminate(["bad", "b"])
    deleted = [c.request.url for c in rsps.calls if c.request.method == "DELETE"]
    assert deleted[-1] == f"{NOVA}/servers/b"  # one failure does not spare the rest


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (403, {"forbidden": {"code": 403, "message": "Quota exceeded for instances: "
                                                     "Requested 1, but already used 10 of 10"}},
         CloudQuotaError),
        (413, {"overLimit": {"code": 413, "message": "Over limit"}}, CloudQuotaError),
        (403, {"forbidden": {"code": 403, "message": "Policy doesn't allow os_compute_api"}},
         CloudAuthError),
        (401, {"error": {"code": 401, "message": "authentication required"}}, CloudAuthError),
        (400, {"badRequest": {"code": 400, "message": "Invalid key_name"}}, CloudInvalidRequest),
        (429, {"overLimit": {"code": 429, "message": "Rate limit"}}, CloudThrottledError),
        (503, {"error": {"code": 503, "message": "try later"}}, CloudThrottledError),
        (500, {"computeFault": {"code": 500, "message": "oops"}}, CloudUnavailable),
        (409, {"conflict": {"code": 409, "message": "busy"}}, CloudError),
    ],
)  # fmt: skip
def test_nova_errors_mapped(
    rsps: responses.RequestsMock,
    cloud: OpenStackCloud,
    status: int,
    body: dict[str, Any],
    error: type[CloudError],
) -> None:
    keystone(rsps)
    rsps.add(responses.POST, f"{NOVA}/servers", json=body, status=status)
    with pytest.raises(error) as info:
        cloud.launch(LaunchSpec(IMAGE_ID, "f-42"), 1, MINE)
    assert type(info.value) is error
    assert f"HTTP {status}" in str(info.value) and "keystone.test" in str(info.value)


def test_partial_launch_returns_what_was_created(
    rsps: responses.RequestsMock, cloud: OpenStackCloud, caplog: pytest.LogCaptureFixture
) -> None:
    keystone(rsps)
    rsps.add(responses.POST, f"{NOVA}/servers", json={"server": {"id": "s-1"}}, status=202)
    quota = {"forbidden": {"code": 403, "message": "Quota exceeded for cores"}}
    rsps.add(responses.POST, f"{NOVA}/servers", json=quota, status=403)
    assert cloud.launch(LaunchSpec(IMAGE_ID, "f-42"), 3, MINE) == ["s-1"]
    assert "launched 1 of 3" in caplog.text and "Quota exceeded" in caplog.text


def test_keystone_401_is_auth_error(rsps: responses.RequestsMock, cloud: OpenStackCloud) -> None:
    refused = {"error": {"code": 401, "message": "The request you have made requires auth."}}
    rsps.add(responses.POST, f"{KEYSTONE}/auth/tokens", json=refused, status=401)
    with pytest.raises(CloudAuthError, match="401"):
        cloud.list(MINE)


def test_keystone_unreachable_is_cloud_error(
    rsps: responses.RequestsMock, cloud: OpenStackCloud
) -> None:
    refused = requests.ConnectionError("connection refused")
    rsps.add(responses.POST, f"{KEYSTONE}/auth/tokens", body=refused)
    with pytest.raises(CloudError, match=r"keystone\.test") as info:
        cloud.list(MINE)
    assert not isinstance(info.value, (CloudAuthError, CloudQuotaError))


def test_application_credential(rsps: responses.RequestsMock, tmp_path: Path) -> None:
    keystone(rsps, ["application_credential"])
    rsps.add(responses.DELETE, f"{NOVA}/servers/a", status=204)
    settings = {
        "auth_url": KEYSTONE,
        "application_credential_id": "ac-1",
        "application_credential_secret_file": secret_file(tmp_path, "ac-secret"),
    }
    OpenStackCloud.from_settings(account_of("openstack", settings)).terminate(["a"])
    [auth] = bodies(rsps, "POST", f"{KEYSTONE}/auth/tokens")
    identity = auth["auth"]["identity"]
    assert identity["application_credential"] == {"id": "ac-1", "secret": "ac-secret"}


def test_secret_files_checked(tmp_path: Path) -> None:
    base = {"auth_url": KEYSTONE, "username": "u", "project_name": "p"}
    path = secret_file(tmp_path, PASSWORD, 0o640)
    with pytest.raises(CloudAuthError, match=r"password_file .* chmod 600") as info:
        OpenStackCloud.from_settings(account_of("openstack", {**base, "password_file": path}))
    assert path in str(info.value) and PASSWORD not in str(info.value)
    with pytest.raises(CloudAuthError, match="password_file"):
        OpenStackCloud.from_settings(account_of("openstack", base))


def test_secrets_never_logged(
    rsps: responses.RequestsMock, cloud: OpenStackCloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keystone(rsps)
    rsps.add(responses.GET, f"{NOVA}/servers/detail", json={"servers": []})
    rsps.add(responses.POST, f"{NOVA}/servers", json={"forbidden": {"code": 403}}, status=403)
    cloud.list(MINE)
    with pytest.raises(CloudAuthError):
        cloud.launch(LaunchSpec(IMAGE_ID, "f-42"), 1, MINE)
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text
    assert PASSWORD not in repr(cloud)


def test_spot_and_unknown_options_refused(cloud: OpenStackCloud) -> None:
    with pytest.raises(CloudError, match="spot"):
        cloud.launch(LaunchSpec(IMAGE_ID, "f-42", spot_price=0.1), 1, MINE)
    with pytest.raises(CloudError, match="subnet_id"):
        cloud.launch(LaunchSpec(IMAGE_ID, "f-42", extra={"subnet_id": "x"}), 1, MINE)
