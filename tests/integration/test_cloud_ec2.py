"""Ec2Cloud against a real moto EC2 server on loopback (no HTCondor needed).

moto fulfils every spot request at once and never copies a request's tags to its instance; the
open-request test holds requests open by patching moto's in-process model, which the threaded
server shares with this process.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends, spot_requests
from moto.ec2.models.instances import StateReason

from pilotfactory.backends.cloud.ec2 import Ec2Cloud
from pilotfactory.factory.contract import TAG_FACTORY, TAG_QUEUE, TAG_RETIRE
from pilotfactory.factory.ports import (
    CloudAuthError,
    CloudCapacityError,
    CloudError,
    CloudInvalidRequest,
    CloudQuotaError,
    CloudThrottledError,
    CloudUnavailable,
    Ec2Account,
    LaunchSpec,
)
from pilotfactory.plugins.cloudaccount import account_of

SECRET = "s3cr3t-not-for-logs"
USER_DATA = "#!/bin/sh\necho pilot\n"


def ec2(settings: dict[str, Any]) -> Ec2Account:
    """The typed account the port takes, from plugin-style settings (raw text is parsed)."""
    account = account_of("ec2", settings)
    assert isinstance(account, Ec2Account)
    return account


def key_files(tmp_path: Path, mode: int = 0o600) -> dict[str, str]:
    files = {}
    for name, text in (("access_key_id", "AKIDTESTING"), ("secret_access_key", SECRET)):
        path = tmp_path / name
        path.write_text(text + "\n")
        path.chmod(mode)
        files[name] = str(path)
    return files


@pytest.fixture(scope="module")
def cloud(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Ec2Cloud:
    settings = {"endpoint_url": moto_url, "region": "us-east-1", "retries": "0", "timeout": "10"}
    return Ec2Cloud.from_settings(ec2({**settings, **key_files(tmp_path_factory.mktemp("keys"))}))


@pytest.fixture(scope="module")
def spec(cloud: Ec2Cloud) -> LaunchSpec:
    image = cloud.client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return LaunchSpec(image=image, flavor="t3.micro", user_data=USER_DATA)


def labels(queue: str = "q1") -> dict[str, str]:
    return {TAG_FACTORY: f"pf-test-{uuid.uuid4().hex[:8]}", TAG_QUEUE: queue}


def by_id(cloud: Ec2Cloud, tags: dict[str, str]) -> dict[str, Any]:
    return {i.id: i for i in cloud.list(tags)}


def test_on_demand_launch_list_tag_terminate(cloud: Ec2Cloud, spec: LaunchSpec) -> None:
    mine, theirs = labels(), labels()
    ids = cloud.launch(spec, 2, mine)
    other = cloud.launch(spec, 1, theirs)
    assert len(ids) == 2 and all(i.startswith("i-") for i in ids)

    seen = by_id(cloud, {TAG_FACTORY: mine[TAG_FACTORY]})
    assert set(seen) == set(ids)  # never the other factory's instance
    for inst in seen.values():
        assert inst.state in ("pending", "running")
        assert inst.tags[TAG_QUEUE] == "q1" and inst.spot_request_id is None
        assert inst.launched_at > time.time() - 300
    attr = cloud.client.describe_instance_attribute(InstanceId=ids[0], Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]).decode() == USER_DATA

    cloud.set_tags(ids[:1], {TAG_RETIRE: "1700000000"})
    assert set(by_id(cloud, {**mine, TAG_RETIRE: "1700000000"})) == {ids[0]}
    assert by_id(cloud, mine)[ids[0]].tags[TAG_RETIRE] == "1700000000"

    cloud.terminate(ids)
    assert {i.state for i in cloud.list(mine)} == {"terminated"}
    assert [i.state for i in cloud.list(theirs)] == ["running"]
    cloud.terminate(ids + other)  # terminating again is harmless


def power_off(instance_id: str, behaviour: str) -> None:
    """The VM powers itself off, as EC2 ends it: stopped or terminated by its shutdown
    behaviour, with the state reason EC2 gives (moto has no API for it: its in-process model,
    shared with the threaded server)."""
    inst = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_instance(instance_id)
    inst.terminate() if behaviour == "terminate" else inst.stop()
    inst.state_reason = StateReason(
        "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
        "Client.InstanceInitiatedShutdown",
    )


def test_launch_ends_on_poweroff_and_list_tells_a_poweroff_from_a_stop(
    cloud: Ec2Cloud, spec: LaunchSpec
) -> None:
    """RunInstances asks for ``terminate`` on an instance-initiated shutdown (EC2's default
    for an EBS-backed instance is ``stop``); the listing carries the state reason that tells
    the VM's own poweroff from an API stop or terminate, and a stopped instance is
    ``stopped``."""
    mine = labels()
    ids = cloud.launch(spec, 4, mine)
    for iid in ids:
        attr = cloud.client.describe_instance_attribute(
            InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior"
        )
        assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    power_off(ids[0], "terminate")
    power_off(ids[1], "stop")
    cloud.client.stop_instances(InstanceIds=[ids[2]])
    cloud.client.terminate_instances(InstanceIds=[ids[3]])
    seen = by_id(cloud, mine)
    got = [(seen[i].state, seen[i].self_shutdown, seen[i].fault) for i in ids]
    assert got == [
        ("terminated", True, None),
        ("stopped", True, None),
        ("stopped", False, None),
        ("terminated", False, None),
    ]
    cloud.terminate(ids)


def test_vm_emulator_ends_a_poweroff_by_the_launchs_shutdown_behaviour(
    cloud: Ec2Cloud, spec: LaunchSpec, tmp_path: Path
) -> None:
    """tests/integration/vmemu.py (no pool needed for this part): a VM that powers itself off
    ends as EC2 ends it, by its shutdown behaviour, with EC2's reason: the factory's launch
    terminates; one launched with EC2's default only stops (the emulator no longer hides
    that, as it did by always terminating)."""
    from tests.integration.vmemu import Emulator

    mine = labels()
    (ours,) = cloud.launch(spec, 1, mine)
    pairs = [{"Key": k, "Value": v} for k, v in mine.items()]
    (bare,) = cloud.client.run_instances(
        ImageId=spec.image, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": pairs}],
    )["Instances"]  # fmt: skip
    emu = Emulator(cloud.client, tmp_path, tmp_path / "vms")
    try:
        found = cloud.client.describe_instances(InstanceIds=[ours, bare["InstanceId"]])
        raw = {i["InstanceId"]: i for r in found["Reservations"] for i in r["Instances"]}
        assert emu.power_off(raw[ours], "powered off") == "terminate"
        assert emu.power_off(raw[bare["InstanceId"]], "powered off") == "stop"
    finally:
        emu.metadata.server_close()
    seen = by_id(cloud, mine)
    assert (seen[ours].state, seen[ours].self_shutdown) == ("terminated", True)
    assert (seen[bare["InstanceId"]].state, seen[bare["InstanceId"]].self_shutdown) == (
        "stopped",
        True,
    )
    cloud.terminate(list(seen))


def test_spot_fulfilled_gets_tags_and_terminate_by_request(
    cloud: Ec2Cloud, spec: LaunchSpec
) -> None:
    mine = labels()
    [iid] = cloud.launch(LaunchSpec(spec.image, spec.flavor, spot_price=0.05), 1, mine)
    assert iid.startswith("i-")  # moto fulfils at once
    inst = by_id(cloud, mine)[iid]
    assert inst.tags == mine and inst.state == "running"
    assert inst.spot_request_id is not None and inst.spot_request_id.startswith("sir-")

    # an instance whose request was fulfilled later carries no tags: list() copies them
    cloud.client.delete_tags(Resources=[iid])
    assert by_id(cloud, mine)[iid].tags == mine
    assert cloud.client.describe_tags(Filters=[{"Name": "resource-id", "Values": [iid]}])["Tags"]

    cloud.terminate([inst.spot_request_id])  # cancelling the request also ends its instance
    assert by_id(cloud, mine)[iid].state == "terminated"


@pytest.fixture
def spot_stays_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto leave new spot requests open and unfulfilled, as a busy AWS region does."""
    original = spot_requests.SpotInstanceRequest.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.ec2_backend.terminate_instances([self.instance.id])
        self.instance = type("NoInstance", (), {"id": None})()
        self.state, self._status_code = "open", "pending-fulfillment"

    monkeypatch.setattr(spot_requests.SpotInstanceRequest, "__init__", init)


@pytest.mark.usefixtures("spot_stays_open")
def test_open_spot_request_listed_and_cancelled(cloud: Ec2Cloud, spec: LaunchSpec) -> None:
    mine, theirs = labels(), labels()
    sirs = cloud.launch(LaunchSpec(spec.image, spec.flavor, spot_price=0.01), 2, mine)
    cloud.launch(LaunchSpec(spec.image, spec.flavor, spot_price=0.01), 1, theirs)
    assert len(sirs) == 2 and all(s.startswith("sir-") for s in sirs)

    seen = by_id(cloud, mine)
    assert set(seen) == set(sirs)
    for sir in sirs:
        assert seen[sir].state == "pending" and seen[sir].spot_request_id == sir
        assert seen[sir].tags == mine and seen[sir].fault is None
    stuck = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].spot_instance_requests[sirs[1]]
    stuck._status_code, stuck.status_message = "capacity-not-available", "no m5 in us-east-1a"
    assert by_id(cloud, mine)[sirs[1]].fault == "capacity-not-available: no m5 in us-east-1a"

    cloud.terminate(sirs[:1])
    left = by_id(cloud, mine)  # moto drops cancelled requests; AWS lists them as cancelled
    assert sirs[0] not in left or left[sirs[0]].state == "terminated"
    assert left[sirs[1]].state == "pending"
    assert len(cloud.list(theirs)) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("InstanceLimitExceeded", CloudQuotaError),
        ("InsufficientInstanceCapacity", CloudCapacityError),
        ("SpotMaxPriceTooLow", CloudCapacityError),
        ("MaxSpotInstanceCountExceeded", CloudQuotaError),
        ("RequestLimitExceeded", CloudThrottledError),
        ("AuthFailure", CloudAuthError),
        ("UnauthorizedOperation", CloudAuthError),
        ("InvalidAMIID.NotFound", CloudInvalidRequest),
        ("InternalError", CloudUnavailable),
        ("SomethingNew", CloudError),
    ],
)
def test_provider_errors_mapped(
    cloud: Ec2Cloud, spec: LaunchSpec, code: str, error: type[CloudError]
) -> None:
    with Stubber(cloud.client) as stub:
        stub.add_client_error("run_instances", service_error_code=code, service_message="nope")
        with pytest.raises(error) as info:
            cloud.launch(spec, 1, labels())
    assert type(info.value) is error
    assert code in str(info.value) and "nope" in str(info.value)
    assert cloud.endpoint in str(info.value)


def test_group_readable_credentials_refused(moto_url: str, tmp_path: Path) -> None:
    files = key_files(tmp_path, 0o644)
    with pytest.raises(CloudAuthError, match=r"access_key_id file .* chmod 600") as info:
        Ec2Cloud.from_settings(ec2({"endpoint_url": moto_url, **files}))
    assert files["access_key_id"] in str(info.value) and SECRET not in str(info.value)


def test_half_configured_credentials_refused(moto_url: str, tmp_path: Path) -> None:
    files = key_files(tmp_path)
    with pytest.raises(CloudAuthError, match="both"):
        Ec2Cloud.from_settings(
            ec2({"endpoint_url": moto_url, "access_key_id": files["access_key_id"]})
        )


def test_secrets_not_logged_or_shown(
    cloud: Ec2Cloud, spec: LaunchSpec, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tags = labels()
    cloud.terminate(cloud.launch(spec, 1, tags))
    assert SECRET not in caplog.text and SECRET not in repr(cloud)


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cloud = Ec2Cloud.from_settings(
        ec2({"endpoint_url": url, "retries": 0, "timeout": 2, **key_files(tmp_path)})
    )
    start = time.monotonic()
    with pytest.raises(CloudError, match=re.escape(f"127.0.0.1:{port}")) as info:
        cloud.list(labels())
    assert time.monotonic() - start < 5
    assert not isinstance(info.value, (CloudQuotaError, CloudAuthError))
