"""Issue 19 item 4 on a moto server over HTTP: EC2 Fleet (``launch_via = fleet``), one worker
per instant fleet, refused types falling through within one cycle, what was launched reported
per worker, and a kill -9 after the fleet answered never doubling a worker.

moto (5.2) runs an instant CreateFleet from a launch template and its overrides, tags the
instance from ``TagSpecifications`` and carries the template's user data; it never refuses for
capacity. AWS's answer when a type has no capacity is emulated at the HTTP boundary
(``FleetCapacity``): the refused overrides are taken out of the request moto sees and come
back in the answer's ``Errors``, as AWS lists the options it could not fill; with none left
the answer is the errors alone.
"""

from __future__ import annotations

import base64
import textwrap
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape

import pytest
from botocore.awsrequest import AWSResponse
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from pilotfactory.backends.cloud.ec2 import Ec2Cloud
from pilotfactory.cli import format_workers
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import TAG_FACTORY, TAG_WORKER
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.plugin import SubmitError
from pilotfactory.factory.trace import workers_view
from pilotfactory.plugins.cloudaccount import TAG_LAUNCHED_AS, TAG_PRICE, account_of
from tests.integration.test_cloud_ec2 import key_files
from tests.integration.test_cloud_launch_ec2 import _Raw, ec2_error, instances, queue
from tests.integration.test_cloud_scale import Killed, MotoWorld, Pool, account_keys, census
from tests.unit.fakecondor import FakeCondor, make_env

TYPES = "m5.large, m5a.large, t3.micro"


def tag(inst: dict[str, Any], key: str) -> str | None:
    return next((t["Value"] for t in inst.get("Tags", []) if t["Key"] == key), None)


def error_item(override: dict[str, str], market: str, code: str) -> str:
    """One ``Errors`` item of a CreateFleet answer, as EC2 writes it."""
    where = override.get("AvailabilityZone")
    zone = f"<availabilityZone>{escape(where)}</availabilityZone>" if where else ""
    flavor = escape(override["InstanceType"])
    return (
        "<item><launchTemplateAndOverrides><overrides>"
        f"<instanceType>{flavor}</instanceType>{zone}</overrides></launchTemplateAndOverrides>"
        f"<lifecycle>{market}</lifecycle><errorCode>{code}</errorCode>"
        f"<errorMessage>no {flavor} capacity</errorMessage></item>"
    )


class FleetCapacity:
    """A ``before-send`` hook on CreateFleet: AWS's answer when ``refuse`` (instance type ->
    error code) types have no capacity. Records each request's overrides (type, market)."""

    def __init__(self, refuse: dict[str, str]) -> None:
        self.refuse = refuse
        self.requests: list[tuple[list[str], str]] = []

    def __call__(self, request: Any = None, **_: Any) -> AWSResponse:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        form = parse_qsl(body, keep_blank_values=True)
        prefix = "LaunchTemplateConfigs.1.Overrides."
        overrides: dict[int, dict[str, str]] = {}
        rest: list[tuple[str, str]] = []
        for k, v in form:
            if k.startswith(prefix):
                n, field = k[len(prefix) :].split(".", 1)
                overrides.setdefault(int(n), {})[field] = v
            else:
                rest.append((k, v))
        market = dict(form)["TargetCapacitySpecification.DefaultTargetCapacityType"]
        ordered = [overrides[n] for n in sorted(overrides)]
        self.requests.append(([o["InstanceType"] for o in ordered], market))
        kept = [o for o in ordered if o["InstanceType"] not in self.refuse]
        errors = "".join(
            error_item(o, market, self.refuse[o["InstanceType"]])
            for o in ordered
            if o["InstanceType"] in self.refuse
        )
        if kept:
            fields = rest + [
                (f"{prefix}{i}.{f}", v) for i, o in enumerate(kept, 1) for f, v in o.items()
            ]
            headers = {
                k: v.decode() if isinstance(v, bytes) else v
                for k, v in request.headers.items()
                if k.lower() != "content-length"
            }
            forwarded = urllib.request.Request(
                request.url, urlencode(fields).encode(), headers, method="POST"
            )
            with urllib.request.urlopen(forwarded, timeout=30) as reply:
                text = reply.read().decode()
        else:
            text = (
                '<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                f"<requestId>{uuid.uuid4()}</requestId><fleetId>fleet-{uuid.uuid4()}</fleetId>"
                "<fleetInstanceSet/></CreateFleetResponse>"
            )
        if errors:
            text = text.replace("</CreateFleetResponse>", f"<errorSet>{errors}</errorSet>"
                                "</CreateFleetResponse>")  # fmt: skip
        return AWSResponse(request.url, 200, {"Content-Type": "text/xml"}, _Raw(text.encode()))


def fleet_queue(moto_url: str, tmp_path: Path, **params: Any) -> tuple[Any, Ec2Cloud]:
    sub, cloud, _clock = queue(moto_url, tmp_path, launch_via="fleet", **params)
    return sub, cloud


def templates(cloud: Ec2Cloud, factory: str) -> list[str]:
    reply = cloud.client.describe_launch_templates(
        Filters=[{"Name": f"tag:{TAG_FACTORY}", "Values": [factory]}], MaxResults=200
    )
    return [t["LaunchTemplateName"] for t in reply["LaunchTemplates"]]


def test_first_type_refused_launches_on_the_next_type_in_one_submit(
    moto_url: str, tmp_path: Path
) -> None:
    sub, cloud = fleet_queue(
        moto_url, tmp_path, flavor=TYPES, spot_price=0.05, prices={"m5a.large": 0.04}
    )
    hook = FleetCapacity({"m5.large": "InsufficientInstanceCapacity"})
    cloud.client.meta.events.register_first("before-send.ec2.CreateFleet", hook)
    ids = sub.submit(3)
    found = instances(cloud, sub.env.factory_id)
    assert sorted(tag(i, TAG_WORKER) or "" for i in found) == sorted(ids)
    assert {i["InstanceType"] for i in found} == {"m5a.large"}
    assert all(i.get("InstanceLifecycle") == "spot" for i in found)
    # the first fleet offered all three and AWS refused m5.large; the next two left it out
    assert hook.requests == [
        (["m5.large", "m5a.large", "t3.micro"], "spot"),
        (["m5a.large", "t3.micro"], "spot"),
        (["m5a.large", "t3.micro"], "spot"),
    ]
    st = sub.choice_backoff.states["m5.large/-/-/spot"]
    assert st.reason.startswith("capacity: ") and "InsufficientInstanceCapacity" in st.reason
    # what was launched, on the instance: tag corrected to the fleet's choice and its price
    assert {tag(i, TAG_LAUNCHED_AS) for i in found} == {"m5a.large spot 0.04/h"}
    assert {tag(i, TAG_PRICE) for i in found} == {"0.04"}
    # each worker's own user data, from its own launch template, none left behind
    for inst in found:
        raw = cloud.client.describe_instance_attribute(
            InstanceId=inst["InstanceId"], Attribute="userData"
        )
        data = base64.b64decode(raw["UserData"]["Value"]).decode()
        assert tag(inst, TAG_WORKER) in data
    assert templates(cloud, sub.env.factory_id) == []
    # one template, one fleet, one template delete, one tag correction per worker; paced
    assert cloud.calls["CreateFleet"] == 3 and cloud.calls["CreateLaunchTemplate"] == 3
    assert cloud.calls["DeleteLaunchTemplate"] == 3 and cloud.calls["CreateTags"] == 3
    assert cloud.calls.get("RunInstances", 0) == 0
    assert cloud.pace is not None and cloud.pace.taken >= sum(cloud.calls.values())


def test_spot_refused_everywhere_falls_back_to_an_on_demand_fleet(
    moto_url: str, tmp_path: Path
) -> None:
    sub, cloud = fleet_queue(
        moto_url,
        tmp_path,
        flavor="m5.large, t3.micro",
        spot_price=0.01,
        on_demand_fallback=True,
        prices={"m5.large": 0.096, "t3.micro": 0.0104},
        choice_order="price",
    )
    refuse = {"m5.large": "SpotMaxPriceTooLow", "t3.micro": "InsufficientInstanceCapacity"}
    hook = FleetCapacity(refuse)

    def spot_only(request: Any = None, **kw: Any) -> AWSResponse | None:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        if "DefaultTargetCapacityType=spot" in body:
            return hook(request=request, **kw)
        hook.refuse = {}
        return hook(request=request, **kw)

    cloud.client.meta.events.register_first("before-send.ec2.CreateFleet", spot_only)
    (wid,) = sub.submit(1)
    (inst,) = instances(cloud, sub.env.factory_id)
    assert tag(inst, TAG_WORKER) == wid and "InstanceLifecycle" not in inst
    assert inst["InstanceType"] == "t3.micro"  # cheapest first: the on-demand fleet's priority
    assert hook.requests == [(["t3.micro", "m5.large"], "spot"),
                             (["t3.micro", "m5.large"], "on-demand")]  # fmt: skip
    reasons = {k: v.reason.split(":")[0] for k, v in sub.choice_backoff.states.items()}
    assert reasons == {"m5.large/-/-/spot": "capacity", "t3.micro/-/-/spot": "capacity"}
    assert tag(inst, TAG_LAUNCHED_AS) == "t3.micro on-demand 0.0104/h"


@pytest.mark.parametrize("spot", [True, False])
def test_fleet_template_terminates_on_poweroff(moto_url: str, tmp_path: Path, spot: bool) -> None:
    """The worker's launch template asks for ``terminate`` on an instance-initiated shutdown
    (EC2's default, ``stop``, would keep a VM that powered itself off, stopped, for ever),
    spot or not. Read from moto's model while the fleet call is under way (the template is
    deleted once it answers); moto itself does not apply it to the fleet's instances."""
    price = {"spot_price": 0.05} if spot else {}
    sub, cloud = fleet_queue(moto_url, tmp_path, flavor="t3.micro", **price)
    backend = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    seen: list[dict[str, Any]] = []

    def read_templates(**_: Any) -> None:
        for name in templates(cloud, sub.env.factory_id):
            tpl = backend.get_launch_template_by_name(name)
            seen.append(tpl.get_version(tpl.latest_version_number).data)

    cloud.client.meta.events.register("before-send.ec2.CreateFleet", read_templates)
    (wid,) = sub.submit(1)
    assert len(seen) == 1 and seen[0]["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert wid in base64.b64decode(str(seen[0]["UserData"])).decode()
    assert templates(cloud, sub.env.factory_id) == []


def test_invalid_fleet_request_stops_the_queue(moto_url: str, tmp_path: Path) -> None:
    sub, cloud = fleet_queue(moto_url, tmp_path, flavor=TYPES, spot_price=0.05)
    hook = FleetCapacity({t.strip(): "InvalidParameterValue" for t in TYPES.split(",")})
    cloud.client.meta.events.register_first("before-send.ec2.CreateFleet", hook)
    with pytest.raises(SubmitError, match="stopped: invalid error on fleet spot"):
        sub.submit(2)
    assert len(hook.requests) == 1 and instances(cloud, sub.env.factory_id) == []
    assert templates(cloud, sub.env.factory_id) == []


QUEUES = """
[DEFAULT]
apfqueue.sleep = 0
boot_timeout = 3600
retire_mode = peaceful

[FLEET]
wmsqueue = FLEETQ
wmsstatusplugin = Condor
schedplugin = JobsPerVM
batchstatusplugin = EC2
batchsubmitplugin = EC2
batchsubmit.ec2.image = {image}
batchsubmit.ec2.flavor = {types}
batchsubmit.ec2.spot_price = 0.05
batchsubmit.ec2.launch_via = fleet
{account}
"""


def test_kill_9_after_the_fleet_answered_never_doubles_a_worker(
    moto_url: str, tmp_path: Path
) -> None:
    """Killed after moto answered the second CreateFleet (the instance exists, tagged with
    its worker; its template is not yet deleted, its tags not yet corrected to the fleet's
    choice): the next factory lists that instance as supply, launches only what is missing,
    sweeps the template, and reports what each worker was launched on."""
    settings = {"endpoint_url": moto_url, "retries": 0, "timeout": 30, **key_files(tmp_path)}
    factory_id = f"fleet-{uuid.uuid4().hex[:6]}"
    port = FakeCondor()
    kill: dict[str, int] = {"CreateFleet": 2}
    world = MotoWorld(port, kill)
    probe = world.cloud(account_of("ec2", settings))
    image = probe.client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    conf = tmp_path / "queues.conf"
    text = QUEUES.format(image=image, types=TYPES, account=account_keys(settings))
    conf.write_text(textwrap.dedent(text))
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    _env, clock = make_env(port, time.time())
    fcfg = replace(default_factory_config(), factory_id=factory_id, raw={})
    pool = Pool(port)
    refused = FleetCapacity({"m5.large": "InsufficientInstanceCapacity"})
    original = world.cloud

    def cloud(account: Any) -> Ec2Cloud:
        c = original(account)
        c.client.meta.events.register_first("before-send.ec2.CreateFleet", refused)
        return c

    world.cloud = cloud  # type: ignore[method-assign]
    factory = Factory(fcfg, res.queues, world, clock)
    port.jobs = [
        {"ClusterId": 1, "ProcId": k, "JobStatus": 1, "MATCH_APF_QUEUE": "FLEETQ"} for k in range(4)
    ]
    kills, traces, cycles = 0, [], 0
    live: dict[str, str] = {}
    while len(live) < 4 or len(port.startds) < 4:
        cycles += 1
        assert cycles <= 5, live
        try:
            traces = factory.cycle()
        except Killed:
            kills += 1
            factory = Factory(fcfg, res.queues, world, clock)
        live = census(factory_id)[0]
        pool.sync(live)
        clock.advance(60)
    traces = factory.cycle()  # a cycle that sees every worker joined
    live, every = census(factory_id)
    assert kills == 1 and not kill
    assert len(live) == 4 and sorted(Counter(every).values()) == [1, 1, 1, 1]
    assert templates(probe, factory_id) == []  # the killed launch's one was swept
    # what was launched, per worker, as status --workers shows it
    (trace,) = traces
    view = workers_view(trace)
    assert len(view["joined"]) == 4
    # the killed launch's tags still name the fleet's options: the instance itself says what
    # it is (type, zone, market), with the price tag written at launch (the dearest option)
    assert Counter(r["launched_as"] for r in view["joined"]) == {
        "m5a.large spot <=0.05/h (bid)": 3,
        "m5a.large us-east-1a spot <=0.05/h": 1,
    }
    assert "as=m5a.large spot <=0.05/h (bid)" in format_workers(view)
    calls: Counter[str] = Counter()
    for p in world.ports:
        if p is not probe:
            calls.update(p.calls)
    print(f"\n[fleet kill] {cycles} cycles, killed {kills}x; calls " +
          ", ".join(f"{op} {n}" for op, n in sorted(calls.items())))  # fmt: skip


def test_lost_fleet_answer_is_looked_up_not_launched_twice(moto_url: str, tmp_path: Path) -> None:
    """The fleet reaches moto, its answer is lost (a 500 after the fact): the next submit
    lists the queue, finds the worker, launches only the new ones, and deletes the template
    the lost launch kept for its retry."""
    sub, cloud = fleet_queue(moto_url, tmp_path, flavor=TYPES, spot_price=0.05)
    state = {"lose": 1}

    def lose_answer(request: Any = None, **_: Any) -> AWSResponse | None:
        if not state["lose"]:
            return None
        state["lose"] -= 1
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
        forwarded = urllib.request.Request(request.url, body, headers, method="POST")
        with urllib.request.urlopen(forwarded, timeout=10) as reply:
            assert reply.status == 200
        return ec2_error(500, "InternalError", "answer lost")

    cloud.client.meta.events.register_first("before-send.ec2.CreateFleet", lose_answer)
    with pytest.raises(SubmitError, match="unknown outcome"):
        sub.submit(1)
    (wid,) = sub.intents
    assert len(instances(cloud, sub.env.factory_id)) == 1
    assert len(templates(cloud, sub.env.factory_id)) == 1  # kept: a retry would need it
    new = sub.submit(2)
    workers = [tag(i, TAG_WORKER) for i in instances(cloud, sub.env.factory_id)]
    assert wid not in new and sorted(workers) == sorted([wid, *new]) and len(set(workers)) == 3
    assert templates(cloud, sub.env.factory_id) == [] and not sub.intents
