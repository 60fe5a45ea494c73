"""Launch choices, error-classed back-off with fall-through, and idempotent launch (issue 19),
on the fake cloud port of ``test_cloud_plugins``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pilotfactory.factory.contract import TAG_FACTORY, TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.plugin import SubmitError
from pilotfactory.factory.ports import (
    CloudAuthError,
    CloudCapacityError,
    CloudError,
    CloudInvalidRequest,
    CloudQuotaError,
    CloudThrottledError,
    CloudUnavailable,
    Instance,
    LaunchSpec,
    error_class,
)
from pilotfactory.plugins.batchsubmit.cloud import EC2Submit, OpenStackSubmit
from pilotfactory.plugins.batchsubmit.cloud_launch import Choice, choices, client_token
from tests.unit.plugins.test_cloud_plugins import NOW, FakeCloud, Q, setup, submit


@dataclass
class PickyCloud(FakeCloud):
    """Refuses launches by (flavor, zone, network); ``lost`` launches happen but time out."""

    refuse: dict[tuple[str, str | None], Exception] = field(default_factory=dict)
    lost: int = 0
    tokens: list[str | None] = field(default_factory=list)

    def launch(self, spec: LaunchSpec, count: int, tags: dict[str, str]) -> list[str]:
        self.tokens.append(spec.client_token)
        where = spec.extra.get("availability_zone") or spec.extra.get("network_id")
        for key in ((spec.flavor, where), (spec.flavor, None)):
            if key in self.refuse:
                self.calls.append(("refused", spec.flavor, where))
                raise self.refuse[key]
        ids = super().launch(spec, count, tags)
        if self.lost > 0:
            self.lost -= 1
            raise CloudUnavailable("RunInstances: ReadTimeoutError")
        return ids


def picky() -> tuple[PickyCloud, Any]:
    port, _cloud, env, _clock = setup()
    cloud = PickyCloud(port.calls)
    env.world.fake_cloud = cloud
    return cloud, env


def launched(cloud: FakeCloud) -> list[tuple[str, str | None]]:
    return [
        (c[1].flavor, c[1].extra.get("availability_zone") or c[1].extra.get("network_id"))
        for c in cloud.calls
        if c[0] == "launch"
    ]


def test_error_classes() -> None:
    pairs = [
        (CloudCapacityError("x"), "capacity"),
        (CloudThrottledError("x"), "throttled"),
        (CloudQuotaError("x"), "quota"),
        (CloudAuthError("x"), "auth"),
        (CloudInvalidRequest("x"), "invalid"),
        (CloudUnavailable("x"), "unavailable"),
        (CloudError("x"), "error"),
    ]
    assert [error_class(e) for e, _ in pairs] == [k for _, k in pairs]


def test_choices_order_listed_price_and_on_demand_fallback() -> None:
    cs = choices(["a", "b"], ["z1", "z2"], None, spot=True, on_demand_fallback=True)
    assert [c.label for c in cs[:3]] == ["a/z1/-/spot", "a/z2/-/spot", "b/z1/-/spot"]
    assert [c.spot for c in cs] == [True] * 4 + [False] * 4
    by_price = choices(["a", "b", "c"], None, None, False, False, "price", {"b": 0.1, "a": 0.2})
    assert [c.flavor for c in by_price] == ["b", "a", "c"]
    t = client_token("f1", "q", "w1", Choice("a"))
    assert len(t) <= 64 and t == client_token("f1", "q", "w1", Choice("a"))
    assert t != client_token("f1", "q", "w1", Choice("b"))
    assert t != client_token("f1", "q", "w2", Choice("a"))


@pytest.mark.parametrize(
    "error",
    [
        CloudCapacityError("InsufficientInstanceCapacity"),
        CloudThrottledError("RequestLimitExceeded"),
        CloudQuotaError("HTTP 403: Quota exceeded"),
    ],
)
def test_refused_choice_falls_through_within_one_submit(error: Exception) -> None:
    cloud, env = picky()
    cloud.refuse[("m5.large", None)] = error
    plugin = submit(env, OpenStackSubmit, flavor="m5.large, m5a.large", networks=["n1", "n2"])
    ids = plugin.submit(3)
    assert len(ids) == 3
    # m5.large refused on n1, then on n2; every worker goes to m5a.large on n1 at once
    assert launched(cloud) == [("m5a.large", "n1")] * 3
    assert [c[1:] for c in cloud.calls if c[0] == "refused"] == [
        ("m5.large", "n1"),
        ("m5.large", "n2"),
    ]
    # the back-off is per choice and names the class; the next cycle skips those choices
    kind = error_class(error)
    assert plugin.choice_backoff.states["m5.large/-/n1"].reason.startswith(f"{kind}: ")
    cloud.calls.clear()
    plugin.submit(1)
    assert not [c for c in cloud.calls if c[0] == "refused"]
    assert "m5.large/-/n1" in plugin.preview()


def test_every_choice_refused_keeps_the_launched_and_backs_off() -> None:
    cloud, env = picky()
    plugin = submit(env, EC2Submit, flavor="a, b", availability_zones=["z1"])
    cloud.refuse[("a", "z1")] = CloudCapacityError("InsufficientInstanceCapacity")
    cloud.refuse[("b", "z1")] = CloudQuotaError("VcpuLimitExceeded")
    with pytest.raises(SubmitError, match=r"launched 0 of 2.*a/z1/-: capacity.*b/z1/-: quota"):
        plugin.submit(2)
    assert len([c for c in cloud.calls if c[0] == "refused"]) == 2  # not once per worker
    env.clock.advance(301)  # back-offs expired: tried again
    del cloud.refuse[("b", "z1")]
    assert len(plugin.submit(1)) == 1 and launched(cloud)[-1] == ("b", "z1")


def test_spot_falls_back_to_on_demand() -> None:
    cloud, env = picky()
    plugin = submit(env, EC2Submit, flavor="a", spot_price=0.05, on_demand_fallback=True)
    cloud.refuse[("a", None)] = CloudCapacityError("SpotMaxPriceTooLow")

    def launch(spec: LaunchSpec, count: int, tags: dict[str, str]) -> list[str]:
        if spec.spot_price is not None:
            raise CloudCapacityError("capacity-not-available")
        return FakeCloud.launch(cloud, spec, count, tags)

    cloud.launch = launch  # type: ignore[method-assign]
    assert len(plugin.submit(2)) == 2
    prices = [c[1].spot_price for c in cloud.calls if c[0] == "launch"]
    assert prices == [None, None]
    assert plugin.choice_backoff.blocked(Choice("a", spot=True), NOW) is not None


@pytest.mark.parametrize(
    "error", [CloudAuthError("AuthFailure"), CloudInvalidRequest("InvalidAMIID.NotFound")]
)
def test_auth_or_invalid_stops_the_queue_without_calling_again(error: Exception) -> None:
    cloud, env = picky()
    plugin = submit(env, EC2Submit, flavor="a, b")
    cloud.refuse[("a", None)] = error
    with pytest.raises(SubmitError, match=r"stopped: (auth|invalid) error on a/-/-"):
        plugin.submit(2)
    n = len(cloud.calls)
    with pytest.raises(SubmitError, match=r"stopped: .*fix the settings and reload"):
        plugin.submit(2)
    assert len(cloud.calls) == n  # no call to the provider while stopped
    env.clock.advance(3601)
    del cloud.refuse[("a", None)]
    assert len(plugin.submit(1)) == 1


def test_unknown_outcome_is_looked_up_and_never_launched_twice() -> None:
    cloud, env = picky()
    plugin = submit(env, EC2Submit, flavor="a, b")
    cloud.lost = 1  # the first launch happens but its answer is lost
    with pytest.raises(SubmitError, match="unknown outcome"):
        plugin.submit(2)
    (wid,) = plugin.intents
    token = cloud.tokens[0]
    assert token is not None and len(token) <= 64
    # next cycle: one list settles it; the worker exists, so it is not launched again
    cloud.calls.clear()
    ids = plugin.submit(1)
    assert wid not in ids and not plugin.intents
    assert [c[0] for c in cloud.calls] == ["list", "launch"]
    workers = [i.tags[TAG_WORKER] for i in cloud.instances.values()]
    assert len(workers) == len(set(workers)) == 2


def test_unknown_outcome_not_found_is_retried_with_the_same_choice_and_token() -> None:
    cloud, env = picky()
    plugin = submit(env, EC2Submit, flavor="a, b")
    cloud.lost = 1
    with pytest.raises(SubmitError):
        plugin.submit(1)
    (wid,) = plugin.intents
    first = cloud.tokens[-1]
    cloud.instances.clear()  # the launch did not happen after all
    assert plugin.submit(1) == [wid]
    assert cloud.tokens[-1] == first and not plugin.intents


def test_factory_and_queue_tags_on_every_launch() -> None:
    cloud, env = picky()
    plugin = submit(env, EC2Submit, flavor="a")
    plugin.submit(2)
    for inst in cloud.instances.values():
        assert isinstance(inst, Instance)
        assert inst.tags[TAG_FACTORY] == "f1" and inst.tags[TAG_QUEUE] == Q
