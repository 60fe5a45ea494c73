"""Issue 19 on OpenStack: the OpenStack queue plugins on the real novaclient port against
``responses``-mocked Keystone v3 + Nova: 403 quota falls through to the next flavor, 503
backs a network off as throttled and falls through, a lost create is looked up by the worker's
metadata before it is retried, ERROR servers are held with Nova's fault and reaped."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from pilotfactory.backends.cloud.openstack import OpenStackCloud
from pilotfactory.factory.contract import TAG_FACTORY, TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.info import WorkerState
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import QueueEnv, SubmitError
from pilotfactory.plugins.batchstatus.cloud import OpenStackBatchStatus
from pilotfactory.plugins.batchsubmit.cloud import OpenStackSubmit
from tests.unit.backends.test_cloud_openstack import (
    IMAGE_ID,
    NOVA,
    PASSWORD,
    keystone,
    rsps,  # noqa: F401  (fixture)
    secret_file,
    server,
)
from tests.unit.fakecondor import FakeCondor, FakeWorld, make_env


class NovaWorld(FakeWorld):
    def __init__(self, port: FakeCondor) -> None:
        super().__init__(port)
        self.ports: list[OpenStackCloud] = []

    def cloud(self, account: Any) -> OpenStackCloud:
        port = OpenStackCloud.from_settings(account)
        self.ports.append(port)
        return port


def settings(tmp_path: Path) -> dict[str, Any]:
    return {
        "auth_url": "http://keystone.test:5000",
        "username": "pilots",
        "password_file": secret_file(tmp_path, PASSWORD),
        "project_name": "atlas",
        "region": "RegionOne",
        "retries": 0,
        "timeout": 5,
        "api_rate": 1000,
    }


def plugins(tmp_path: Path, **params: Any) -> tuple[OpenStackSubmit, OpenStackBatchStatus, Any]:
    port = FakeCondor()
    env, clock = make_env(port)
    env = replace(env, world=NovaWorld(port))
    s = settings(tmp_path)
    all_params = {**s, "image": IMAGE_ID, "flavor": "f-42", **params}
    sub = OpenStackSubmit(merged(OpenStackSubmit.PARAMS, all_params), env, QueueEnv("q1", "q1"))
    status = OpenStackBatchStatus(merged(OpenStackBatchStatus.PARAMS, s), env)
    return sub, status, clock


class Nova:
    """A POST /servers callback: refuses by flavor or network, otherwise creates."""

    def __init__(self) -> None:
        self.refuse: dict[str, tuple[int, dict[str, Any]]] = {}
        self.created: list[dict[str, Any]] = []
        self.tried: list[tuple[str, str | None]] = []

    def __call__(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)["server"]
        net = (body.get("networks") or [{}])[0].get("uuid")
        self.tried.append((body["flavorRef"], net))
        for key in (body["flavorRef"], net):
            if key in self.refuse:
                status, reply = self.refuse[key]
                return status, {}, json.dumps(reply)
        sid = f"s-{len(self.created) + 1}"
        self.created.append({**body, "id": sid})
        return 202, {}, json.dumps({"server": {"id": sid, "links": []}})

    def detail(self, request: Any) -> tuple[int, dict[str, str], str]:
        """One page of every server, then (asked with a marker) an empty one."""
        listed = [server(s["id"], "BUILD", s["metadata"], name=s["name"]) for s in self.created]
        if "marker=" in request.url:
            listed = []
        return 200, {}, json.dumps({"servers": listed})


def nova(rsps: responses.RequestsMock) -> Nova:  # noqa: F811
    keystone(rsps)
    rsps.add(responses.GET, f"{NOVA}/flavors/f-43", json={"flavor": {"id": "f-43", "links": []}})
    fake = Nova()
    rsps.add_callback(responses.POST, f"{NOVA}/servers", callback=fake)
    rsps.add_callback(responses.GET, f"{NOVA}/servers/detail", callback=fake.detail)
    return fake


QUOTA = (403, {"forbidden": {"code": 403, "message": "Quota exceeded for cores"}})
BUSY = (503, {"error": {"code": 503, "message": "Service Unavailable"}})


def test_403_quota_falls_through_to_the_next_flavor(
    rsps: responses.RequestsMock,  # noqa: F811
    tmp_path: Path,
) -> None:
    fake = nova(rsps)
    fake.refuse["f-42"] = QUOTA
    sub, _, _ = plugins(tmp_path, flavor="f-42, f-43")
    ids = sub.submit(2)
    assert [c["flavorRef"] for c in fake.created] == ["f-43", "f-43"]
    assert fake.tried[0] == ("f-42", None) and len(fake.tried) == 3
    assert sub.choice_backoff.states["f-42/-/-"].reason.startswith("quota: ")
    # each server is named by its worker and carries it in its metadata
    assert [c["name"] for c in fake.created] == [f"pf-{w}" for w in ids]
    assert [c["metadata"][TAG_WORKER] for c in fake.created] == ids


def test_503_backs_the_network_off_as_throttled_and_falls_through(
    rsps: responses.RequestsMock,  # noqa: F811
    tmp_path: Path,
) -> None:
    fake = nova(rsps)
    fake.refuse["n-1"] = BUSY
    sub, _, clock = plugins(tmp_path, networks=["n-1", "n-2"])
    assert len(sub.submit(2)) == 2
    assert [c["networks"] for c in fake.created] == [[{"uuid": "n-2"}]] * 2
    state = sub.choice_backoff.states["f-42/-/n-1"]
    assert state.reason.startswith("throttled: ") and "HTTP 503" in state.reason
    fake.refuse["n-2"] = BUSY
    with pytest.raises(SubmitError, match=r"every launch choice refused or backing off"):
        sub.submit(1)
    clock.advance(sub.choice_backoff.initial + 1)  # n-1 again after its back-off
    del fake.refuse["n-1"]
    assert len(sub.submit(1)) == 1 and fake.created[-1]["networks"] == [{"uuid": "n-1"}]


def test_lost_create_is_found_by_its_worker_metadata_not_created_twice(
    rsps: responses.RequestsMock,  # noqa: F811
    tmp_path: Path,
) -> None:
    fake = nova(rsps)
    sub, _, _ = plugins(tmp_path)
    real = fake.__call__
    lost = {"n": 1}

    def flaky(request: Any) -> Any:
        reply = real(request)
        if lost["n"]:
            lost["n"] -= 1  # the server is created, the answer never arrives
            raise requests.ConnectionError("connection reset by peer")
        return reply

    rsps.remove(responses.POST, f"{NOVA}/servers")
    rsps.add_callback(responses.POST, f"{NOVA}/servers", callback=flaky)
    with pytest.raises(SubmitError, match="unknown outcome"):
        sub.submit(1)
    (wid,) = sub.intents
    new = sub.submit(2)
    assert wid not in new and not sub.intents
    workers = [c["metadata"][TAG_WORKER] for c in fake.created]
    assert sorted(workers) == sorted([wid, *new]) and len(set(workers)) == 3


def test_error_servers_are_held_with_novas_fault_and_reaped(
    rsps: responses.RequestsMock,  # noqa: F811
    tmp_path: Path,
) -> None:
    keystone(rsps)
    meta = {TAG_FACTORY: "f1", TAG_QUEUE: "q1", TAG_WORKER: "q1-w1"}
    fault = {"code": 500, "message": "No valid host was found. There are not enough hosts"}
    broken = server("s-9", "ERROR", meta, fault=fault)
    page = {"servers": [broken]}
    rsps.add_callback(
        responses.GET,
        f"{NOVA}/servers/detail",
        callback=lambda r: (200, {}, json.dumps({"servers": []} if "marker=" in r.url else page)),
    )
    rsps.add(responses.POST, f"{NOVA}/servers/s-9/metadata", json={"metadata": meta})
    rsps.add(responses.DELETE, f"{NOVA}/servers/s-9", status=204)
    sub, status, _ = plugins(tmp_path)
    status.refresh()
    info = status.info("q1")
    assert info is not None
    (w,) = info.workers
    assert w.state is WorkerState.HELD and "No valid host" in (w.hold_reason or "")
    sub.reap([w])
    acted = [
        c.request.method for c in rsps.calls if c.request.url.startswith(f"{NOVA}/servers/s-9")
    ]
    assert acted == ["POST", "DELETE"]  # marked as ended by the factory, then deleted
