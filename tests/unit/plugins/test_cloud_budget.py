"""Budgets and the factory-wide cap (issue 19 item 4): buying stops when the next VM would
exceed a queue's or the factory's spend limit, or the factory's instance cap, counted from the
status source's census (no list of its own); a cheaper choice may still fit; nothing retires."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pilotfactory.factory.contract import TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.plugin import SubmitError
from pilotfactory.plugins import cloudaccount
from pilotfactory.plugins.batchsubmit.cloud import OpenStackSubmit
from pilotfactory.plugins.cloudaccount import TAG_PRICE
from tests.unit.plugins.test_cloud_plugins import setup, status, submit


@pytest.fixture(autouse=True)
def fresh_census() -> Iterator[None]:
    cloudaccount._CENSUS.clear()
    yield
    cloudaccount._CENSUS.clear()


def launched(cloud):  # type: ignore[no-untyped-def]
    return [c[1].flavor for c in cloud.calls if c[0] == "launch"]


def test_queue_budget_per_hour_falls_through_to_a_cheaper_flavor_then_stops() -> None:
    _port, cloud, env, _ = setup()
    status(env).refresh()
    prices = {"big": "2", "small": "0.5"}
    plugin = submit(env, OpenStackSubmit, flavor="big, small", prices=prices, budget_per_hour=2.5)
    with pytest.raises(SubmitError, match=r"would exceed budget_per_hour=2\.5"):
        plugin.submit(4)
    assert launched(cloud) == ["big", "small"]
    assert sorted(i.tags[TAG_PRICE] for i in cloud.instances.values()) == ["0.5", "2"]
    # the next refresh counts them from their price tags: still no room
    status(env).refresh()
    with pytest.raises(SubmitError, match="budget"):
        plugin.submit(1)
    assert launched(cloud) == ["big", "small"]
    assert not [c for c in cloud.calls if c[0] in ("terminate", "set_tags")]  # nothing retired


def test_budget_per_day_and_missing_price_say_why() -> None:
    _port, cloud, env, _ = setup()
    status(env).refresh()
    plugin = submit(env, OpenStackSubmit, prices={"m1.large": "1"}, budget_per_day=50)
    with pytest.raises(
        SubmitError, match=r"spends 48/day; one more VM at 1/h would exceed budget_per_day=50"
    ):
        plugin.submit(3)
    assert len(launched(cloud)) == 2
    with pytest.raises(SubmitError, match=r"no price for m1\.large"):
        submit(env, OpenStackSubmit, budget_per_hour=10).submit(1)


def test_factory_cap_and_factory_budget_count_every_queue() -> None:
    _port, cloud, env, _ = setup()
    cloud.add("i-7", "running", **{TAG_WORKER: "other-1", TAG_QUEUE: "OTHER", TAG_PRICE: "3"})
    cloud.add("i-8", "running", **{TAG_WORKER: "old-1", TAG_QUEUE: "REMOVED"})
    status(env, factory_max_instances=3).refresh()
    plugin = submit(env, OpenStackSubmit)
    with pytest.raises(SubmitError, match="factory cap: 3 live instances, factory_max_instances=3"):
        plugin.submit(2)
    assert len(launched(cloud)) == 1
    status(env, factory_budget_per_hour=4).refresh()
    priced = submit(env, OpenStackSubmit, prices={"m1.large": "1"})
    assert len(priced.submit(1)) == 1  # 3 + 1 = 4: at the limit, not past it
    with pytest.raises(SubmitError, match="the factory spends 4/h"):
        priced.submit(1)
