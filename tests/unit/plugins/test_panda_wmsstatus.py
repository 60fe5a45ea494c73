"""PandaWMSStatus: status mapping, filters, staleness, sharing, back-off (responses, fake clock)."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import responses

from pilotfactory.backends.panda import PandaClient, SiteStatusSource
from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.info import SiteStatus
from pilotfactory.factory.params import defaults
from pilotfactory.factory.plugin import Env
from pilotfactory.factory.ports import PandaError, PandaPort, SiteStatusPort
from pilotfactory.plugins.wmsstatus.panda import PandaWMSStatus

BASE = "http://panda.example:25080/api/v1"
STATS = BASE + "/statistics/active_job_stats_by_site"
DETAILED = BASE + "/statistics/active_job_detailed_stats_by_site"
QUEUES = "http://cric.example/queues.json"


class TinyWorld:
    """Only what the Panda plugin asks of a world: the real client and site status source."""

    def __init__(self) -> None:
        self.panda_calls = 0
        self.site_calls = 0

    def condor(self, target: Any) -> Any:
        raise NotImplementedError

    def cloud(self, account: Any) -> Any:
        raise NotImplementedError

    def panda(self, settings: Mapping[str, Any]) -> PandaPort:
        self.panda_calls += 1
        return PandaClient.from_settings(settings)

    def site_status(self, settings: Mapping[str, Any]) -> SiteStatusPort:
        self.site_calls += 1
        return SiteStatusSource.from_settings(settings)


def params(**over: Any) -> dict[str, Any]:
    p = defaults(PandaWMSStatus.PARAMS)
    p["baseurl"] = BASE
    p.update(over)
    return p


def ok(data: Any) -> dict[str, Any]:
    return {"success": True, "message": "", "data": data}


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def plugin(clock: VirtualClock, **over: Any) -> PandaWMSStatus:
    return PandaWMSStatus(params(**over), Env("test-factory", TinyWorld(), clock))


# ---------------------------------------------------------------------------- declaration


def test_declaration() -> None:
    assert PandaWMSStatus.NAME == "Panda"
    assert PandaWMSStatus.namespaces() == ("wmsstatus.panda.",)
    names = {p.name for p in PandaWMSStatus.PARAMS}
    assert names >= {
        "baseurl",
        "timeout",
        "verify",
        "ca_bundle",
        "cert",
        "key",
        "token_file",
        "legacy",
        "maxage",
        "sitestatus_url",
        "sitestatus_file",
        "prodsourcelabel",
        "resource_type",
        "sleep",
    }
    d = defaults(PandaWMSStatus.PARAMS)
    assert d["baseurl"] == "http://pandaserver.cern.ch:25080/api/v1"
    assert (d["timeout"], d["verify"], d["legacy"], d["maxage"]) == (30.0, True, False, 600.0)
    baseurl = next(p for p in PandaWMSStatus.PARAMS if p.name == "baseurl")
    assert baseurl.aliases == ("url",)


def test_source_key_shares_server_not_filters() -> None:
    k = PandaWMSStatus.source_key
    assert k(params()) == k(params(prodsourcelabel=["user"], maxage=60.0, sitestatus_file="x"))
    assert k(params()) == k(params(baseurl="http://panda.example:25080/server/panda"))
    assert k(params()) == k({"url": BASE})
    assert k(params()) != k(params(legacy=True))
    assert k(params()) != k(params(baseurl="http://other:25080/api/v1"))
    assert k(params()) != k(params(token_file="/t"))
    assert k(params()) != k(params(verify=False))


# ---------------------------------------------------------------------------- mapping


@responses.activate
def test_status_mapping_and_unknown_counted(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    counts = {
        "activated": 10,
        "pending": 1,
        "defined": 2,
        "assigned": 3,
        "waiting": 4,
        "throttled": 5,
        "starting": 1,
        "sent": 2,
        "running": 3,
        "holding": 4,
        "transferring": 5,
        "finished": 7,
        "failed": 2,
        "cancelled": 1,
        "merging": 6,
        "closed": 1,
    }
    responses.get(STATS, json=ok({"BNL_CLOUD": counts}))
    p = plugin(clock)
    p.refresh()
    caplog.set_level(logging.WARNING)
    info = p.info("BNL_CLOUD", params())
    assert info is not None
    assert (info.ready, info.notready, info.running, info.done, info.failed, info.unknown) == (
        10,
        15,
        15,
        7,
        3,
        7,
    )
    assert info.time == clock.now()
    assert info.site_status is SiteStatus.UNKNOWN
    assert "'merging'" in caplog.text and "'closed'" in caplog.text
    caplog.clear()
    p.info("BNL_CLOUD", params())
    assert "merging" not in caplog.text  # logged once per status


@responses.activate
def test_site_absent_from_reply_has_zero_jobs(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({"OTHER": {"activated": 3}}))
    p = plugin(clock)
    p.refresh()
    info = p.info("BNL_CLOUD", params())
    assert info is not None
    assert (info.ready, info.running, info.unknown) == (0, 0, 0)


def test_no_snapshot_means_none(clock: VirtualClock) -> None:
    assert plugin(clock).info("BNL_CLOUD", params()) is None


# ---------------------------------------------------------------------------- filters

DETAIL = {
    "BNL": {
        "SCORE": {"managed": {"activated": 5, "running": 1}, "user": {"activated": 100}},
        "MCORE": {"managed": {"activated": 7}, "test": {"activated": 1000}},
    }
}


@pytest.mark.parametrize(
    ("over", "ready"),
    [
        ({"prodsourcelabel": ["managed"]}, 12),
        ({"prodsourcelabel": ["managed", "user"]}, 112),
        ({"prodsourcelabel": "MANAGED"}, 12),
        ({"resource_type": ["SCORE"]}, 105),
        ({"resource_type": ["mcore"], "prodsourcelabel": ["managed"]}, 7),
        ({"resource_type": ["HIMEM"]}, 0),
    ],
)
@responses.activate
def test_label_and_resource_type_filters(clock: VirtualClock, over: Any, ready: int) -> None:
    responses.get(STATS, json=ok({"BNL": {"activated": 1112, "running": 1}}))
    responses.get(DETAILED, json=ok(DETAIL))
    p = plugin(clock, **over)
    p.refresh()
    info = p.info("BNL", params(**over))
    assert info is not None and info.ready == ready
    plain = p.info("BNL", params())
    assert plain is not None and plain.ready == 1112  # unfiltered queues read the plain stats


@responses.activate
def test_detailed_fetched_only_when_a_queue_filters(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({"BNL": {"activated": 1112}}))
    responses.get(DETAILED, json=ok(DETAIL))
    p = plugin(clock)
    p.refresh()
    assert [c.request.url for c in responses.calls] == [STATS]
    # A filtering queue first seen in info() fails closed this cycle and is served next cycle.
    assert p.info("BNL", params(prodsourcelabel=["managed"])) is None
    clock.advance(60)
    p.refresh()
    assert [c.request.url for c in responses.calls] == [STATS, STATS, DETAILED]
    info = p.info("BNL", params(prodsourcelabel=["managed"]))
    assert info is not None and info.ready == 12


@responses.activate
def test_register_before_refresh_avoids_the_lost_cycle(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({}))
    responses.get(DETAILED, json=ok(DETAIL))
    p = plugin(clock)
    p.register(params(resource_type=["SCORE"]))
    p.refresh()
    info = p.info("BNL", params(resource_type=["SCORE"]))
    assert info is not None and info.ready == 105


@responses.activate
def test_legacy_cannot_filter_by_resource_type(clock: VirtualClock) -> None:
    legacy = "http://panda.example:25080/server/panda"
    responses.get(legacy + "/getJobStatisticsPerSite", body=pickle.dumps({}, protocol=0))
    labelled = {"BNL": {"managed": {"activated": 4}, "user": {"activated": 1}}}
    responses.get(legacy + "/getJobStatisticsWithLabel", body=pickle.dumps(labelled, protocol=0))
    p = plugin(clock, legacy=True, prodsourcelabel=["managed"])
    p.refresh()
    info = p.info("BNL", params(legacy=True, prodsourcelabel=["managed"]))
    assert info is not None and info.ready == 4
    assert p.info("BNL", params(legacy=True, resource_type=["SCORE"])) is None


# ---------------------------------------------------------------------------- staleness


@responses.activate
def test_maxage(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({"BNL": {"activated": 1}}))
    p = plugin(clock)
    p.refresh()
    clock.advance(600)
    assert p.info("BNL", params()) is not None
    clock.advance(1)
    assert p.info("BNL", params()) is None
    assert p.info("BNL", params(maxage=3600.0)) is not None  # maxage is the queue's own


@responses.activate
def test_failed_refresh_keeps_old_snapshot_until_maxage(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({"BNL": {"activated": 1}}))
    p = plugin(clock)
    p.refresh()
    t0 = clock.now()
    responses.replace(responses.GET, STATS, status=500)
    clock.advance(100)
    with pytest.raises(PandaError):
        p.refresh()
    info = p.info("BNL", params())
    assert info is not None and info.time == t0


# ---------------------------------------------------------------------------- site status


@responses.activate
def test_site_status_from_url(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({}))
    doc = {"A": {"status": "online"}, "B": {"status": "TEST"}, "C": {"status": "offline"}}
    doc |= {"D": {"status": "brokeroff"}, "E": {"status": "paused"}}
    responses.get(QUEUES, json=doc)
    over = {"sitestatus_url": QUEUES}
    p = plugin(clock, **over)
    p.refresh()
    got = {}
    for site in "ABCDEF":
        info = p.info(site, params(**over))
        assert info is not None
        got[site] = info.site_status
    assert got == {
        "A": SiteStatus.ONLINE,
        "B": SiteStatus.TEST,
        "C": SiteStatus.OFFLINE,
        "D": SiteStatus.BROKEROFF,
        "E": SiteStatus.UNKNOWN,
        "F": SiteStatus.UNKNOWN,
    }


@responses.activate
def test_site_status_from_file(clock: VirtualClock, tmp_path: Path) -> None:
    f = tmp_path / "queues.json"
    f.write_text(json.dumps([{"panda_queue": "BNL_CLOUD", "status": "test"}]))
    responses.get(STATS, json=ok({"BNL_CLOUD": {"activated": 3}}))
    p = plugin(clock, sitestatus_file=str(f))
    p.refresh()
    info = p.info("BNL_CLOUD", params(sitestatus_file=str(f)))
    assert info is not None and info.site_status is SiteStatus.TEST and info.ready == 3


@responses.activate
def test_site_status_failure_fails_the_refresh(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({"A": {"activated": 3}}))
    responses.get(QUEUES, body="{oops")
    p = plugin(clock, sitestatus_url=QUEUES)
    with pytest.raises(PandaError, match="not valid JSON"):
        p.refresh()
    assert p.snapshot is None and p.info("A", params(sitestatus_url=QUEUES)) is None


# ---------------------------------------------------------------------------- sharing


@responses.activate
def test_one_request_per_server_per_cycle(clock: VirtualClock, tmp_path: Path) -> None:
    f = tmp_path / "queues.json"
    f.write_text(json.dumps({"A": {"status": "online"}}))
    responses.get(STATS, json=ok({"A": {"activated": 1}, "B": {"activated": 2}}))
    responses.get(DETAILED, json=ok({"C": {"SCORE": {"user": {"activated": 9}}}}))
    responses.get(QUEUES, json={"B": {"status": "offline"}})
    queues = {
        "A": params(sitestatus_file=str(f)),
        "B": params(sitestatus_url=QUEUES, maxage=60.0),
        "C": params(prodsourcelabel=["user"]),
        "D": params(),
    }
    # What the factory does: one instance per source key, every queue registered.
    assert len({PandaWMSStatus.source_key(p) for p in queues.values()}) == 1
    p = plugin(clock, **{"sitestatus_file": str(f)})
    for q in queues.values():
        p.register(q)
    for _cycle in range(3):
        p.refresh()
        infos = {name: p.info(name, q) for name, q in queues.items()}
        assert all(i is not None for i in infos.values())
        clock.advance(360)
    urls = [c.request.url for c in responses.calls]
    assert urls.count(STATS) == 3
    assert urls.count(DETAILED) == 3
    assert urls.count(QUEUES) == 3
    assert infos["A"] is not None and infos["A"].site_status is SiteStatus.ONLINE
    assert infos["B"] is not None and infos["B"].site_status is SiteStatus.OFFLINE
    assert infos["C"] is not None and infos["C"].ready == 9
    assert infos["D"] is not None and infos["D"].ready == 0


@responses.activate
def test_sleep_limits_request_rate(clock: VirtualClock) -> None:
    responses.get(STATS, json=ok({}))
    p = plugin(clock, sleep=300.0)
    p.refresh()
    clock.advance(100)
    p.refresh()
    assert len(responses.calls) == 1
    clock.advance(200)
    p.refresh()
    assert len(responses.calls) == 2


# ---------------------------------------------------------------------------- back-off


@responses.activate
def test_backoff_doubles_to_30_minutes_and_resets(clock: VirtualClock) -> None:
    responses.get(STATS, status=503)
    p = plugin(clock)
    expected = [30, 60, 120, 240, 480, 960, 1800, 1800]
    for i, delay in enumerate(expected, start=1):
        with pytest.raises(PandaError, match="HTTP 503"):
            p.refresh()
        assert len(responses.calls) == i
        assert p.next_retry == clock.now() + delay
        # Before next_retry: fails at once, without a request, and says so.
        clock.advance(delay - 1)
        with pytest.raises(PandaError, match=r"backing off .* no request made; next try in 1 s"):
            p.refresh()
        assert len(responses.calls) == i
        clock.advance(1)
    responses.replace(responses.GET, STATS, json=ok({"A": {"activated": 1}}))
    p.refresh()
    assert (p.failures, p.next_retry) == (0, None)
    responses.replace(responses.GET, STATS, status=500)
    with pytest.raises(PandaError):
        p.refresh()
    assert p.next_retry == clock.now() + 30  # reset after the success


@responses.activate
def test_backoff_error_names_the_last_error(clock: VirtualClock) -> None:
    responses.get(STATS, json={"success": False, "message": "maintenance"})
    p = plugin(clock)
    with pytest.raises(PandaError, match="maintenance"):
        p.refresh()
    with pytest.raises(PandaError, match=r"last error: PandaError: .*maintenance"):
        p.refresh()


def test_bad_settings_fail_the_refresh_and_back_off(clock: VirtualClock, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cr3t")
    token.chmod(0o644)
    p = plugin(clock, token_file=str(token))
    with pytest.raises(PandaError, match="group or others"):
        p.refresh()
    assert p.failures == 1 and p.next_retry == clock.now() + 30
