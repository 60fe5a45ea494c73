"""EC2 Fleet on the EC2 port: the CreateFleet request of one worker, its answer's per-option
errors classed like RunInstances' codes, and the launch template's life (made, used, deleted;
kept only while the fleet's outcome is unknown). A recording client stands in for boto3."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pilotfactory.backends.cloud.ec2 import (
    Ec2Cloud,
    fleet_outcome,
    fleet_request,
    fleet_template_data,
)
from pilotfactory.factory.ports import (
    CloudAuthError,
    CloudCapacityError,
    CloudError,
    CloudInvalidRequest,
    CloudQuotaError,
    CloudThrottledError,
    CloudUnavailable,
    FleetOption,
    LaunchSpec,
    error_class,
    fleet_template_name,
)

TOKEN = "a" * 64
SPEC = LaunchSpec(
    image="ami-1",
    flavor="m5.large",
    spot_price=0.05,
    user_data="#!/bin/sh\necho w-1\n",
    key_name="k",
    security_groups=("sg-1", "default"),
    extra={"subnet_id": "subnet-default"},
    client_token=TOKEN,
)
OPTS = [
    FleetOption("m5.large"),
    FleetOption("m5a.large", zone="us-east-1b"),
    FleetOption("t3.micro", subnet="subnet-2"),
]
TAGS = {"pilotfactory:factory": "f1", "pilotfactory:worker": "w-1"}


def placement() -> dict[str, Any]:
    return Ec2Cloud(Client())._placement(SPEC)


def test_spot_request_is_instant_price_capacity_optimized_with_one_override_an_option() -> None:
    req = fleet_request(SPEC, OPTS, True, TAGS, "pf-t", placement())
    assert req["Type"] == "instant" and req["ClientToken"] == TOKEN
    assert req["TargetCapacitySpecification"] == {
        "TotalTargetCapacity": 1,
        "DefaultTargetCapacityType": "spot",
        "SpotTargetCapacity": 1,
    }
    assert req["SpotOptions"]["AllocationStrategy"] == "price-capacity-optimized"
    assert "OnDemandOptions" not in req
    (config,) = req["LaunchTemplateConfigs"]
    assert config["LaunchTemplateSpecification"] == {
        "LaunchTemplateName": "pf-t",
        "Version": "$Latest",
    }
    # the launch_options subnet applies where an option names neither zone nor subnet
    assert config["Overrides"] == [
        {"InstanceType": "m5.large", "SubnetId": "subnet-default", "MaxPrice": "0.050000"},
        {"InstanceType": "m5a.large", "AvailabilityZone": "us-east-1b", "MaxPrice": "0.050000"},
        {"InstanceType": "t3.micro", "SubnetId": "subnet-2", "MaxPrice": "0.050000"},
    ]
    assert req["TagSpecifications"] == [
        {
            "ResourceType": "instance",
            "Tags": [
                {"Key": "pilotfactory:factory", "Value": "f1"},
                {"Key": "pilotfactory:worker", "Value": "w-1"},
            ],
        }
    ]


def test_on_demand_request_keeps_the_queue_order_and_bids_nothing() -> None:
    req = fleet_request(SPEC, OPTS[:2], False, TAGS, "pf-t", placement())
    assert req["OnDemandOptions"] == {"AllocationStrategy": "prioritized"}
    assert req["TargetCapacitySpecification"]["OnDemandTargetCapacity"] == 1
    assert "SpotOptions" not in req
    overrides = req["LaunchTemplateConfigs"][0]["Overrides"]
    assert [o.get("Priority") for o in overrides] == [0.0, 1.0]
    assert not any("MaxPrice" in o for o in overrides)
    with pytest.raises(ValueError, match="at least one option"):
        fleet_request(SPEC, [], True, TAGS, "pf-t", placement())


def test_template_carries_the_worker_user_data_not_what_the_overrides_choose() -> None:
    data = fleet_template_data(SPEC, placement())
    assert base64.b64decode(data["UserData"]).decode() == SPEC.user_data
    assert data["ImageId"] == "ami-1" and data["KeyName"] == "k"
    assert data["SecurityGroupIds"] == ["sg-1"] and data["SecurityGroups"] == ["default"]
    assert not {"InstanceType", "SubnetId", "Placement"} & set(data)
    # EC2's default (stop) would keep a VM that powered itself off, stopped, for ever
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"


def answer_error(flavor: str, code: str, zone: str | None = None) -> dict[str, Any]:
    over = {"InstanceType": flavor, **({"AvailabilityZone": zone} if zone else {})}
    return {
        "LaunchTemplateAndOverrides": {"Overrides": over},
        "Lifecycle": "spot",
        "ErrorCode": code,
        "ErrorMessage": f"{code} for {flavor}",
    }


@pytest.mark.parametrize(
    ("code", "cls", "kind"),
    [
        ("InsufficientInstanceCapacity", CloudCapacityError, "capacity"),
        ("SpotMaxPriceTooLow", CloudCapacityError, "capacity"),
        ("UnfulfillableCapacity", CloudCapacityError, "capacity"),
        ("VcpuLimitExceeded", CloudQuotaError, "quota"),
        ("MaxSpotInstanceCountExceeded", CloudQuotaError, "quota"),
        ("RequestLimitExceeded", CloudThrottledError, "throttled"),
        ("InvalidParameterValue", CloudInvalidRequest, "invalid"),
        ("UnauthorizedOperation", CloudAuthError, "auth"),
        ("SomethingNew", CloudError, "error"),
    ],
)
def test_answer_errors_are_classed_like_run_instances_codes(
    code: str, cls: type[CloudError], kind: str
) -> None:
    reply = {"Errors": [answer_error("m5a.large", code, "us-east-1b")], "Instances": []}
    res = fleet_outcome(reply, OPTS, True, "EC2 x CreateFleet")
    assert res.instance_ids == () and res.option is None
    ((opt, err),) = res.errors
    assert opt == OPTS[1] and type(err) is cls and error_class(err) == kind
    assert str(err) == f"EC2 x CreateFleet on m5a.large/us-east-1b: {code}: {code} for m5a.large"


def test_answer_names_the_launched_option_its_market_and_the_refused_ones() -> None:
    reply = {
        "Errors": [answer_error("m5.large", "InsufficientInstanceCapacity"), {"ErrorCode": "X"}],
        "Instances": [
            {
                "LaunchTemplateAndOverrides": {
                    "Overrides": {"InstanceType": "t3.micro", "SubnetId": "subnet-2"}
                },
                "Lifecycle": "on-demand",
                "InstanceIds": ["i-9"],
                "InstanceType": "t3.micro",
            }
        ],
    }
    res = fleet_outcome(reply, OPTS, True, "w")
    assert res.instance_ids == ("i-9",) and res.option == OPTS[2] and res.spot is False
    assert [o for o, _ in res.errors] == [OPTS[0], None]


# ---------------------------------------------------------------------------- the port


class Events:
    def register(self, *_: Any, **__: Any) -> None:
        """The port hooks its pacing and call counts here."""


class Meta:
    endpoint_url = "https://ec2.example"
    events = Events()


class Client:
    """Records calls; ``fail`` maps an operation to the error code it answers with."""

    meta = Meta()

    def __init__(self, fail: dict[str, tuple[str, int]] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail or {}
        self.reply: dict[str, Any] = {
            "Instances": [{"InstanceIds": ["i-1"], "InstanceType": "m5.large", "Lifecycle": "spot"}]
        }

    def _call(self, op: str, kw: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((op, kw))
        if op in self.fail:
            code, status = self.fail[op]
            err = {"Error": {"Code": code, "Message": "no"}, "ResponseMetadata": {}}
            err["ResponseMetadata"]["HTTPStatusCode"] = status
            raise ClientError(err, op)  # type: ignore[arg-type]
        return self.reply if op == "CreateFleet" else {}

    def create_launch_template(self, **kw: Any) -> dict[str, Any]:
        return self._call("CreateLaunchTemplate", kw)

    def create_fleet(self, **kw: Any) -> dict[str, Any]:
        return self._call("CreateFleet", kw)

    def delete_launch_template(self, **kw: Any) -> dict[str, Any]:
        return self._call("DeleteLaunchTemplate", kw)


def test_launch_makes_uses_and_deletes_the_worker_template() -> None:
    client = Client()
    res = Ec2Cloud(client).launch_fleet(SPEC, OPTS, True, TAGS)
    assert res.instance_ids == ("i-1",) and res.option == OPTS[0] and not res.template_left
    ops = [op for op, _ in client.calls]
    assert ops == ["CreateLaunchTemplate", "CreateFleet", "DeleteLaunchTemplate"]
    name = fleet_template_name(TOKEN)
    create, fleet, delete = (kw for _, kw in client.calls)
    assert create["LaunchTemplateName"] == name and create["ClientToken"] == TOKEN
    assert create["TagSpecifications"][0]["ResourceType"] == "launch-template"
    spec = fleet["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]
    assert spec["LaunchTemplateName"] == name and delete == {"LaunchTemplateName": name}


@pytest.mark.parametrize(
    ("code", "status", "deleted"),
    [("InternalError", 500, False), ("InvalidParameterValue", 400, True)],
)
def test_template_kept_while_the_outcome_is_unknown(code: str, status: int, deleted: bool) -> None:
    client = Client({"CreateFleet": (code, status)})
    with pytest.raises(CloudError) as info:
        Ec2Cloud(client).launch_fleet(SPEC, OPTS, True, TAGS)
    assert isinstance(info.value, CloudUnavailable) is not deleted
    assert ("DeleteLaunchTemplate" in [op for op, _ in client.calls]) is deleted


def test_a_failed_delete_is_reported_not_raised_and_an_existing_template_reused() -> None:
    client = Client(
        {
            "CreateLaunchTemplate": ("InvalidLaunchTemplateName.AlreadyExistsException", 400),
            "DeleteLaunchTemplate": ("RequestLimitExceeded", 503),
        }
    )
    res = Ec2Cloud(client).launch_fleet(SPEC, OPTS, True, TAGS)
    assert res.instance_ids == ("i-1",) and res.template_left


def test_fleet_needs_a_token_and_a_positive_bid() -> None:
    cloud = Ec2Cloud(Client())
    with pytest.raises(CloudError, match="client token"):
        cloud.launch_fleet(LaunchSpec("ami-1", "m5.large"), OPTS, False, TAGS)
    with pytest.raises(CloudError, match="must be > 0"):
        cloud.launch_fleet(LaunchSpec("ami-1", "m5.large", spot_price=0.0), OPTS, True, TAGS)
