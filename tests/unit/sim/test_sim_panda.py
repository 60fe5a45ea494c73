"""Simulated PanDA: the statistics shapes the real server answers, site status, outages."""

from __future__ import annotations

import pytest

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.ports import PandaError, PandaPort, SiteStatusPort
from pilotfactory.sim.world import SimConfig, SimWorld


def panda_world() -> SimWorld:
    return SimWorld(VirtualClock(), SimConfig(sites={"OFF_SITE": "offline"}))


def test_panda_satisfies_both_ports() -> None:
    w = panda_world()
    assert isinstance(w.panda({}), PandaPort)
    assert isinstance(w.site_status({}), SiteStatusPort)


def test_stats_shapes() -> None:
    w = panda_world()
    p = w.sim_panda
    p.add_jobs("A", 3, 100)
    p.add_jobs("A", 2, 100, resource_type="MCORE", label="user")
    p.add_jobs("A", 4, 100, status="assigned")
    p.add_jobs("B", 1, [50])
    assert p.pull("A") is not None
    assert p.active_job_stats() == {
        "A": {"activated": 4, "assigned": 4, "running": 1},
        "B": {"activated": 1},
    }
    assert p.active_job_detailed_stats() == {
        "A": {
            "SCORE": {"managed": {"activated": 2, "assigned": 4, "running": 1}},
            "MCORE": {"user": {"activated": 2}},
        },
        "B": {"SCORE": {"managed": {"activated": 1}}},
    }


def test_pull_is_fifo_and_only_takes_activated_jobs() -> None:
    w = panda_world()
    p = w.sim_panda
    p.add_jobs("A", 1, 10, status="defined")
    first, second = p.add_jobs("A", 2, [10, 20])
    assert p.pull("A") is first and p.pull("A") is second
    assert p.pull("A") is None and p.pull("nowhere") is None
    p.finish(first)
    p.finish(second, ok=False)
    assert p.counts("A") == {"defined": 1, "finished": 1, "failed": 1}


def test_site_status_defaults_online_and_is_settable() -> None:
    w = panda_world()
    w.sim_panda.add_jobs("A", 1)
    w.sim_panda.set_site_status("T", "test")
    assert w.sim_panda.site_status() == {"A": "online", "OFF_SITE": "offline", "T": "test"}


def test_panda_down_raises_and_starves_pilots() -> None:
    w = panda_world()
    p = w.sim_panda
    p.add_jobs("A", 1)
    p.down = True
    for call in (p.active_job_stats, p.active_job_detailed_stats, p.site_status):
        with pytest.raises(PandaError):
            call()
    assert p.pull("A") is None
    assert w.metrics.failures["panda_job_stats"] == 1
    p.down = False
    assert p.active_job_stats() == {"A": {"activated": 1}}


def test_bad_durations_are_refused() -> None:
    with pytest.raises(ValueError):
        panda_world().sim_panda.add_jobs("A", 2, [1.0])
