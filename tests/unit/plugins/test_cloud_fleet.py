"""EC2 Fleet launch (``launch_via = fleet``, issue 19 item 4) on a fake fleet port, what was
launched reported per worker, and the per-choice back-off across a restart (state file)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.cli import format_workers
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import TAG_FACTORY, TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.plugin import SubmitError
from pilotfactory.factory.ports import (
    CloudCapacityError,
    CloudError,
    CloudInvalidRequest,
    CloudThrottledError,
    CloudUnavailable,
    FleetOption,
    FleetResult,
    Instance,
    LaunchSpec,
    fleet_template_name,
)
from pilotfactory.factory.trace import workers_view
from pilotfactory.plugins.batchstatus.cloud import instance_record
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit
from pilotfactory.plugins.batchsubmit.cloud_launch import (
    Choice,
    ChoiceBackoff,
    fleet_token,
    launched_as,
    market_groups,
)
from pilotfactory.plugins.cloudaccount import TAG_LAUNCHED_AS, TAG_PRICE
from tests.unit.fakecondor import FakeCondor, make_env
from tests.unit.plugins.test_cloud_launch import PickyCloud
from tests.unit.plugins.test_cloud_plugins import NOW, CloudWorld, FakeCloud, setup, submit


@dataclass
class FleetCloud(FakeCloud):
    """A fleet port on the fake cloud: each call launches the first option whose (type,
    market) is not in ``refuse`` and reports the refused ones it passed as ``Errors``;
    ``fail`` raises for the whole call; ``lost`` calls launch but answer unavailable."""

    refuse: dict[tuple[str, bool], CloudError] = field(default_factory=dict)
    raise_next: list[CloudError] = field(default_factory=list)
    lost: int = 0
    fleets: list[tuple[list[str], bool, str | None]] = field(default_factory=list)
    swept: list[set[str]] = field(default_factory=list)

    def launch_fleet(
        self, spec: LaunchSpec, options: list[FleetOption], spot: bool, tags: dict[str, str]
    ) -> FleetResult:
        self.calls.append(("launch_fleet", spec, list(options), spot, dict(tags)))
        self.fleets.append(([o.flavor for o in options], spot, spec.client_token))
        if self.raise_next:
            raise self.raise_next.pop(0)
        errors: list[tuple[FleetOption | None, CloudError]] = []
        for opt in options:
            if (opt.flavor, spot) in self.refuse:
                errors.append((opt, self.refuse[(opt.flavor, spot)]))
                continue
            iid = f"i-{len(self.instances)}"
            self.instances[iid] = Instance(iid, "pending", NOW, dict(tags))
            if self.lost:
                self.lost -= 1
                raise CloudUnavailable("CreateFleet: ReadTimeoutError")
            return FleetResult((iid,), opt, spot, tuple(errors))
        return FleetResult(errors=tuple(errors))

    def sweep_templates(self, tags: dict[str, str], keep: Any) -> int:
        assert set(tags) == {TAG_FACTORY, TAG_QUEUE}  # this queue's templates only
        self.calls.append(("sweep", dict(tags)))
        self.swept.append(set(keep))
        return 0


def fleet(**kw: Any) -> tuple[FleetCloud, Any, EC2Submit]:
    port, _cloud, env, _clock = setup()
    cloud = FleetCloud(port.calls)
    env.world.fake_cloud = cloud
    params = {"flavor": "a, b, c", "launch_via": "fleet", "spot_price": 0.05, **kw}
    return cloud, env, submit(env, EC2Submit, **params)


CAP = CloudCapacityError("InsufficientInstanceCapacity: no a")


def test_groups_tokens_and_launch_text() -> None:
    order = [Choice("a", spot=True), Choice("b", spot=True), Choice("a"), Choice("b")]
    assert [[c.label for c in g] for g in market_groups(order)] == [
        ["a/-/-/spot", "b/-/-/spot"],
        ["a/-/-", "b/-/-"],
    ]
    t = fleet_token("f", "q", "w", order[:2])
    assert len(t) == 64 and t == fleet_token("f", "q", "w", order[:2])
    assert t != fleet_token("f", "q", "w", order[1:2]) != fleet_token("f", "q", "w2", order[:2])
    assert launched_as(Choice("m5.large", "z1", spot=True), 0.05, True) == (
        "m5.large z1 spot <=0.05/h (bid)"
    )
    assert launched_as(Choice("m1.large", network="n1"), 0.1, False, market=False) == (
        "m1.large n1 0.1/h"
    )


def test_first_type_refused_launches_on_the_next_in_one_submit() -> None:
    cloud, _env, plugin = fleet(prices={"b": 0.04})
    cloud.refuse[("a", True)] = CAP
    ids = plugin.submit(3)
    assert len(ids) == 3
    # one fleet per worker, its own token; the refused type left out once refused
    assert [f[:2] for f in cloud.fleets] == [(["a", "b", "c"], True)] + [(["b", "c"], True)] * 2
    assert len({f[2] for f in cloud.fleets}) == 3
    assert plugin.choice_backoff.states["a/-/-/spot"].reason.startswith("capacity: ")
    # tags sent with the launch name the options and the dearest price; then the choice
    sent = [c[4] for c in cloud.calls if c[0] == "launch_fleet"]
    assert sent[0][TAG_LAUNCHED_AS] == "fleet spot over a, b, c" and sent[0][TAG_PRICE] == "0.05"
    fixes = [c for c in cloud.calls if c[0] == "set_tags"]
    assert [f[2] for f in fixes] == [{TAG_LAUNCHED_AS: "b spot 0.04/h", TAG_PRICE: "0.04"}] * 3
    assert {i.tags[TAG_LAUNCHED_AS] for i in cloud.instances.values()} == {"b spot 0.04/h"}
    # every worker's own user data and tags
    specs = [c[1] for c in cloud.calls if c[0] == "launch_fleet"]
    assert all(w in str(s.user_data) for w, s in zip(ids, specs, strict=True))
    assert [c[4][TAG_WORKER] for c in cloud.calls if c[0] == "launch_fleet"] == ids
    # templates swept once, before the first launch
    assert [c[0] for c in cloud.calls].count("sweep") == 1


def test_spot_refused_falls_back_to_the_on_demand_fleet() -> None:
    cloud, _env, plugin = fleet(flavor="a, b", on_demand_fallback=True)
    cloud.refuse.update({("a", True): CAP, ("b", True): CloudCapacityError("SpotMaxPriceTooLow")})
    assert len(plugin.submit(2)) == 2
    assert [f[:2] for f in cloud.fleets] == [(["a", "b"], True), (["a", "b"], False)] + [
        (["a", "b"], False)
    ]
    launches = [c for c in cloud.calls if c[0] == "launch_fleet"]
    assert [c[1].spot_price for c in launches] == [0.05, None, None]
    assert {i.tags[TAG_LAUNCHED_AS] for i in cloud.instances.values()} == {"a on-demand"}


def test_whole_call_throttled_backs_off_every_option_and_falls_through() -> None:
    cloud, _env, plugin = fleet(flavor="a", on_demand_fallback=True)
    cloud.raise_next.append(CloudThrottledError("RequestLimitExceeded"))
    assert len(plugin.submit(1)) == 1
    assert [f[1] for f in cloud.fleets] == [True, False]
    assert plugin.choice_backoff.states["a/-/-/spot"].reason.startswith("throttled: ")


def test_every_option_refused_everywhere_raises_and_keeps_backing_off() -> None:
    cloud, env, plugin = fleet(flavor="a, b")
    cloud.refuse.update({("a", True): CAP, ("b", True): CAP})
    with pytest.raises(SubmitError, match=r"launched 0 of 2: .*a/-/-/spot.*capacity"):
        plugin.submit(2)
    assert len(cloud.fleets) == 1  # the second worker found every choice backing off
    cloud.calls.clear()
    with pytest.raises(SubmitError):
        plugin.submit(1)
    assert not [c for c in cloud.calls if c[0] == "launch_fleet"]
    env.clock.advance(301)
    del cloud.refuse[("b", True)]
    assert len(plugin.submit(1)) == 1


def test_invalid_refusal_with_nothing_launched_stops_the_queue() -> None:
    cloud, _env, plugin = fleet(flavor="a, b")
    cloud.refuse.update({(f, True): CloudInvalidRequest("InvalidParameterValue") for f in "ab"})
    with pytest.raises(SubmitError, match=r"stopped: invalid error on fleet spot \(2 options\)"):
        plugin.submit(2)
    n = len(cloud.calls)
    with pytest.raises(SubmitError, match="stopped"):
        plugin.submit(1)
    assert len(cloud.calls) == n


def test_unknown_outcome_is_looked_up_then_retried_with_its_own_options_and_token() -> None:
    cloud, _env, plugin = fleet()
    cloud.lost = 1
    with pytest.raises(SubmitError, match="unknown outcome"):
        plugin.submit(1)
    (wid,) = plugin.intents
    intent = plugin.intents[wid]
    assert [c.flavor for c in intent.group] == ["a", "b", "c"]
    # found: not launched again
    cloud.calls.clear()
    ids = plugin.submit(1)
    assert wid not in ids and not plugin.intents
    workers = [i.tags[TAG_WORKER] for i in cloud.instances.values()]
    assert len(workers) == len(set(workers)) == 2
    assert cloud.swept == [set(), set()]  # settled: its kept template is swept
    # not found: the retry sends the same options and the same token, template kept
    cloud.lost = 1
    with pytest.raises(SubmitError):
        plugin.submit(1)
    (wid2,) = plugin.intents
    token = cloud.fleets[-1][2]
    cloud.instances = {k: v for k, v in cloud.instances.items() if v.tags[TAG_WORKER] != wid2}
    plugin._sweep_due = True
    cloud.refuse[("a", True)] = CAP  # refused since: the pinned options are still all sent
    assert plugin.submit(1) == [wid2]
    assert cloud.fleets[-1] == (["a", "b", "c"], True, token)
    assert cloud.swept[-1] == {fleet_template_name(str(token))}


def test_a_port_without_fleet_is_a_clear_error() -> None:
    port, _cloud, env, _clock = setup()
    env.world.fake_cloud = PickyCloud(port.calls)
    plugin = submit(env, EC2Submit, flavor="a", launch_via="fleet")
    with pytest.raises(SubmitError, match="launch_via = fleet needs EC2 Fleet"):
        plugin.submit(1)


def test_subnets_are_ec2_choices_and_exclude_zones() -> None:
    cloud, _env, plugin = fleet(flavor="a", subnets=["subnet-1", "subnet-2"])
    plugin.submit(1)
    (call,) = [c for c in cloud.calls if c[0] == "launch_fleet"]
    assert call[2] == [FleetOption("a", None, "subnet-1"), FleetOption("a", None, "subnet-2")]
    _c, _e, both = fleet(subnets=["subnet-1"], availability_zones=["z1"])
    with pytest.raises(SubmitError, match=r"subnets or batchsubmit\.ec2\.availability_zones"):
        both.submit(1)
    run = submit(_e, EC2Submit, flavor="a", subnets=["subnet-9"])
    spec = run.spec_for(run.spec(), run.choices(run.spec())[0])
    assert spec.extra == {"subnet_id": "subnet-9"}


# ---------------------------------------------------------------------------- reported per worker


def test_instance_reports_what_was_launched() -> None:
    tags = {TAG_WORKER: "w1", TAG_LAUNCHED_AS: "m5a.large us-east-1b spot 0.04/h"}
    rec = instance_record(Instance("i-1", "running", NOW, tags, placed="x y spot"), NOW)
    assert rec.launched_as == "m5a.large us-east-1b spot 0.04/h"
    # a fleet launch whose answer was never recorded: what the provider says, the price tag
    tags = {TAG_WORKER: "w1", TAG_LAUNCHED_AS: "fleet spot over a, b", TAG_PRICE: "0.05"}
    rec = instance_record(Instance("i-1", "running", NOW, tags, placed="b z1 spot"), NOW)
    assert rec.launched_as == "b z1 spot <=0.05/h"
    rec = instance_record(Instance("i-1", "running", NOW, {TAG_WORKER: "w1"}), NOW)
    assert rec.launched_as is None


def test_status_workers_show_what_each_worker_was_launched_on(tmp_path: Path) -> None:
    """Launched by a factory through the fleet path, read back by the status plugin, shown
    by ``status --workers`` (its text, and the view its ``--json`` prints)."""
    port = FakeCondor()
    cloud = FleetCloud(port.calls)
    cloud.refuse[("a", True)] = CAP
    extra = "batchsubmit.ec2.launch_via = fleet\nbatchsubmit.ec2.spot_price = 0.05\n"
    factory = start(tmp_path, cloud, port, NOW, "a, b", extra + "batchsubmit.ec2.prices = b=0.04")
    factory.cycle()
    factory.clock.advance(60)
    (t,) = factory.cycle()
    view = workers_view(t)
    ((row,),) = [view["unjoined"]]
    assert row["launched_as"] == "b spot 0.04/h" and row["state"] == "pending"
    assert "as=b spot 0.04/h" in format_workers(view)
    assert json.loads(json.dumps(view))["unjoined"][0]["launched_as"] == "b spot 0.04/h"


# ---------------------------------------------------------------------------- state file

QUEUES = """
[DEFAULT]
apfqueue.sleep = 60
boot_timeout = 3600

[ECM]
wmsqueue = ECM
wmsstatusplugin = Condor
schedplugin = Fixed
sched.fixed.pilotspercycle = 1
batchstatusplugin = EC2
batchsubmitplugin = EC2
batchsubmit.ec2.image = ami-1
batchsubmit.ec2.flavor = {flavors}
batchstatus.ec2.region = us-east-1
batchsubmit.ec2.region = us-east-1
{extra}
"""


def start(
    tmp_path: Path, cloud: FakeCloud, port: FakeCondor, now: float, flavors: str, extra: str = ""
) -> Any:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(QUEUES.format(flavors=flavors, extra=extra)))
    _env, clock = make_env(port, now)
    fcfg = replace(
        default_factory_config(),
        factory_id="f1",
        raw={"baseLogDir": str(tmp_path / "logs")},
        state_file=str(tmp_path / "state" / "state.json"),
    )
    res = load_queues([str(conf)])
    assert res.errors == [], res.problems
    return Factory(fcfg, res.queues, CloudWorld(port, cloud), clock)


@pytest.mark.parametrize("same", [True, False])
def test_a_restart_keeps_refused_choices_backing_off(tmp_path: Path, same: bool) -> None:
    port = FakeCondor()
    cloud = PickyCloud(port.calls)
    cloud.refuse[("a", None)] = CAP
    start(tmp_path, cloud, port, NOW, "a, b").cycle()
    assert [(c[1], c[2]) for c in port.calls if c[0] == "refused"] == [("a", None)]
    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    assert list(saved["queues"]["ECM"]["plugin"]["choice_backoff"]) == ["a/-/-"]

    # kill -9; a new process 30 s later, the instance it launched gone: one more to launch
    cloud.instances.clear()
    port.calls.clear()
    flavors = "a, b" if same else "a, b, c"
    second = start(tmp_path, cloud, port, NOW + 30, flavors)
    second.cycle()
    refused = [c for c in port.calls if c[0] == "refused"]
    launched = [c[1].flavor for c in port.calls if c[0] == "launch"]
    if same:  # "a" still backing off: not asked again
        assert refused == [] and launched == ["b"]
        q = second.queues["ECM"]
        assert q.submitter.choice_backoff.blocked(Choice("a"), NOW + 30) is not None
    else:  # another submit section: its choices start afresh
        assert [c[1] for c in refused] == ["a"] and launched == ["b"]


def test_malformed_choice_back_off_restores_nothing() -> None:
    with pytest.raises(ValueError, match=r"choice_backoff\.a/-/- is not \[until, delay, why\]"):
        ChoiceBackoff.parse({"a/-/-": [1.0, "x", "why"]})
    good = ChoiceBackoff(300, 3600)
    good.refused(Choice("a"), NOW, "capacity", "no a")
    again = ChoiceBackoff.parse(json.loads(json.dumps(good.to_json())))
    assert again == good.states


def test_a_reload_keeps_refused_choices_while_the_submit_section_is_the_same(
    tmp_path: Path,
) -> None:
    port = FakeCondor()
    cloud = PickyCloud(port.calls)
    cloud.refuse[("a", None)] = CAP
    old = start(tmp_path, cloud, port, NOW, "a, b").queues["ECM"]
    old.submitter.submit(1)
    same = start(tmp_path, cloud, port, NOW, "a, b").queues["ECM"]
    other = start(tmp_path, cloud, port, NOW, "a, c").queues["ECM"]
    same.carry_over(old, NOW)
    other.carry_over(old, NOW)
    assert list(same.submitter.choice_backoff.states) == ["a/-/-"]
    assert other.submitter.choice_backoff.states == {}
