"""Issue 19 on a moto server over HTTP: client tokens sent, refused instance types falling
through within one submit, unknown outcomes looked up instead of launched twice.

moto neither refuses for capacity nor throttles, and it stores ``ClientToken`` without
deduplicating on it; the refusals are injected at the HTTP boundary (a ``before-send`` hook
answers with the EC2 error document, which botocore parses as it would AWS's), and every other
request goes to moto for real.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from botocore.awsrequest import AWSResponse

from pilotfactory.backends.cloud.ec2 import Ec2Cloud
from pilotfactory.backends.world import RealWorld
from pilotfactory.factory.contract import TAG_FACTORY, TAG_WORKER
from pilotfactory.factory.params import merged
from pilotfactory.factory.plugin import QueueEnv, SubmitError
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit
from pilotfactory.plugins.cloudaccount import account_of
from tests.integration.test_cloud_ec2 import key_files
from tests.unit.fakecondor import FakeCondor, FakeWorld, make_env


class MotoWorld(FakeWorld):
    def cloud(self, account: Any) -> Any:
        return RealWorld().cloud(account)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def ec2_error(status: int, code: str, message: str) -> AWSResponse:
    """The error document EC2 answers with (botocore parses it, retry rules included)."""
    body = (
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        f"</Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return AWSResponse("http://injected", status, {"Content-Type": "text/xml"}, _Raw(body))


class Injector:
    """A ``before-send`` hook: records every RunInstances form and answers some itself."""

    def __init__(self, refuse: Callable[[dict[str, str]], AWSResponse | None]) -> None:
        self.refuse = refuse
        self.forms: list[dict[str, str]] = []

    def __call__(self, request: Any = None, **_: Any) -> AWSResponse | None:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        form = {k: v[0] for k, v in parse_qs(body).items()}
        self.forms.append(form)
        return self.refuse(form)


def queue(moto_url: str, tmp_path: Path, **params: Any) -> tuple[EC2Submit, Ec2Cloud, Any]:
    settings = {"endpoint_url": moto_url, "retries": 0, "timeout": 10.0, **key_files(tmp_path)}
    env, clock = make_env(FakeCondor())
    env = replace(env, factory_id=f"pf-{uuid.uuid4().hex[:8]}", world=MotoWorld(FakeCondor()))
    cloud = env.world.cloud(account_of("ec2", settings))
    image = cloud.client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    all_params = {**settings, "image": image, **params}
    sub = EC2Submit(merged(EC2Submit.PARAMS, all_params), env, QueueEnv("q1", "q1"))
    return sub, sub.cloud, clock  # type: ignore[return-value]


def instances(cloud: Ec2Cloud, factory: str) -> list[dict[str, Any]]:
    filters = [{"Name": f"tag:{TAG_FACTORY}", "Values": [factory]}]
    out = []
    for page in cloud.client.get_paginator("describe_instances").paginate(Filters=filters):
        for r in page["Reservations"]:
            out.extend(r["Instances"])
    return out


def inject(cloud: Ec2Cloud, injector: Injector) -> None:
    # registered first, so it runs before the port's own pacing hook sees the request
    cloud.client.meta.events.register_first("before-send.ec2.RunInstances", injector)


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (500, "InsufficientInstanceCapacity", "capacity"),
        (503, "RequestLimitExceeded", "throttled"),
        (503, "Unavailable", "throttled"),
    ],
)
def test_refused_type_falls_through_to_the_next_in_one_submit(
    moto_url: str, tmp_path: Path, status: int, code: str, kind: str
) -> None:
    sub, cloud, _ = queue(moto_url, tmp_path, flavor="m5.large, m5a.large, t3.micro")
    injector = Injector(
        lambda f: (
            ec2_error(status, code, "no m5.large now") if f["InstanceType"] == "m5.large" else None
        )
    )
    inject(cloud, injector)
    ids = sub.submit(3)
    found = instances(cloud, sub.env.factory_id)
    assert sorted(i["Tags"] and next(t["Value"] for t in i["Tags"] if t["Key"] == TAG_WORKER)
                  for i in found) == sorted(ids)  # fmt: skip
    assert {i["InstanceType"] for i in found} == {"m5a.large"}
    # one refused call, then every worker on the next type: all within this one submit
    assert [f["InstanceType"] for f in injector.forms] == ["m5.large"] + ["m5a.large"] * 3
    assert sub.choice_backoff.states["m5.large/-/-"].reason.startswith(f"{kind}: ")
    assert code in sub.choice_backoff.states["m5.large/-/-"].reason
    # each launch carried its own token, known before the call
    tokens = [f.get("ClientToken") for f in injector.forms]
    assert all(tokens) and len(set(tokens[1:])) == 3
    # every request was counted and took a token of the account's bucket (pacing)
    assert cloud.calls["RunInstances"] == 4 and "DescribeImages" not in cloud.calls
    assert cloud.pace is not None and cloud.pace.taken >= sum(cloud.calls.values()) + 1


def test_zones_fall_through_and_spot_falls_back_to_on_demand(moto_url: str, tmp_path: Path) -> None:
    sub, cloud, _ = queue(
        moto_url,
        tmp_path,
        flavor="t3.micro",
        availability_zones=["us-east-1a", "us-east-1b"],
        spot_price=0.05,
        on_demand_fallback=True,
    )

    def refuse(form: dict[str, str]) -> AWSResponse | None:
        if form.get("Action") == "RequestSpotInstances":
            return ec2_error(400, "SpotMaxPriceTooLow", "bid below the spot price")
        if form.get("Placement.AvailabilityZone") == "us-east-1a":
            return ec2_error(500, "InsufficientInstanceCapacity", "none in 1a")
        return None

    injector = Injector(refuse)
    cloud.client.meta.events.register_first("before-send.ec2", injector)
    assert len(sub.submit(2)) == 2
    found = instances(cloud, sub.env.factory_id)
    assert [i["Placement"]["AvailabilityZone"] for i in found] == ["us-east-1b"] * 2
    assert all("SpotInstanceRequestId" not in i for i in found)
    launches = [f for f in injector.forms if f["Action"] != "DescribeInstances"]
    actions = [(f["Action"], f.get("Placement.AvailabilityZone") or f.get(
        "LaunchSpecification.Placement.AvailabilityZone")) for f in launches]  # fmt: skip
    assert actions == [
        ("RequestSpotInstances", "us-east-1a"),
        ("RequestSpotInstances", "us-east-1b"),
        ("RunInstances", "us-east-1a"),
        ("RunInstances", "us-east-1b"),
        ("RunInstances", "us-east-1b"),
    ]


def test_lost_answer_is_looked_up_not_launched_twice(moto_url: str, tmp_path: Path) -> None:
    """The launch reaches moto, the answer is lost (a 500 after the fact): the next submit
    lists the queue, finds the worker, and launches only the new one."""
    sub, cloud, _ = queue(moto_url, tmp_path, flavor="t3.micro")
    state = {"lose": 1}

    def lose_answer(request: Any = None, **_: Any) -> AWSResponse | None:
        """Send the request to moto ourselves, then answer 500 as if the reply were lost."""
        if not state["lose"]:
            return None
        state["lose"] -= 1
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
        forwarded = urllib.request.Request(request.url, body, headers, method="POST")
        with urllib.request.urlopen(forwarded, timeout=10) as reply:
            assert reply.status == 200
        return ec2_error(500, "InternalError", "answer lost")

    cloud.client.meta.events.register_first("before-send.ec2.RunInstances", lose_answer)
    with pytest.raises(SubmitError, match="unknown outcome"):
        sub.submit(1)
    (wid,) = sub.intents
    assert len(instances(cloud, sub.env.factory_id)) == 1  # it did launch
    new = sub.submit(2)
    workers = [
        next(t["Value"] for t in i["Tags"] if t["Key"] == TAG_WORKER)
        for i in instances(cloud, sub.env.factory_id)
    ]
    assert wid not in new and sorted(workers) == sorted([wid, *new]) and len(set(workers)) == 3


def test_auth_error_stops_the_queue(moto_url: str, tmp_path: Path) -> None:
    sub, cloud, _ = queue(moto_url, tmp_path, flavor="t3.micro, m5.large")
    injector = Injector(lambda f: ec2_error(401, "AuthFailure", "key revoked"))
    inject(cloud, injector)
    with pytest.raises(SubmitError, match=r"stopped: auth error on t3\.micro"):
        sub.submit(2)
    with pytest.raises(SubmitError, match="stopped"):
        sub.submit(2)
    assert len(injector.forms) == 1
