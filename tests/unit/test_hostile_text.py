"""Outside text reaches logs, traces and errors inert, wherever it enters: HoldReasons from
job ads, provider faults and errors, HTCondor daemon errors, PanDA replies, and any log record.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import responses
from botocore.exceptions import ClientError

from pilotfactory.backends.cloud.ec2 import Ec2Cloud
from pilotfactory.backends.panda import PandaClient
from pilotfactory.factory.ports import CloudError, Instance, PandaError
from pilotfactory.factory.text import one_line
from pilotfactory.logs import OneLineFormatter
from pilotfactory.plugins.batchstatus.cloud import instance_record
from pilotfactory.plugins.batchstatus.condor import pilot_worker, vm_record

NOW = 1_800_000_000.0
FORGED = "disk quota\r\n2026-01-01 00:00:00 INFO pilotfactory: all good\x1b]0;pwned\x07\x1b[2J"
HUGE = "\x1b[31m" + "A" * 1_000_000 + "\x00"


def inert(text: str) -> bool:
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def job(status: int, **kw: Any) -> dict[str, Any]:
    return {"ClusterId": 7, "ProcId": 0, "JobStatus": status, "QDate": NOW - 10, **kw}


# ---------------------------------------------------------------------------- job ads


@pytest.mark.parametrize("reason", [FORGED, HUGE])
def test_hold_reason_of_a_pilot_is_inert_and_bounded(reason: str) -> None:
    w = pilot_worker(job(5, HoldReason=reason), "Q", NOW)
    assert w is not None and w.hold_reason is not None
    assert inert(w.hold_reason) and len(w.hold_reason) <= 310


def test_hold_reason_of_a_vm_job_is_inert() -> None:
    rec = vm_record(job(5, JobUniverse=9, HoldReason=FORGED), NOW)
    assert rec.hold_reason is not None and inert(rec.hold_reason)
    assert "\\x1b]0;pwned\\x07" in rec.hold_reason and "all good" in rec.hold_reason
    unavailable = job(1, JobUniverse=9, GridResource=FORGED, GridResourceUnavailableTime=NOW)
    rec = vm_record(unavailable, NOW)
    assert rec.hold_reason is not None and inert(rec.hold_reason)
    resource = "ec2 https://k:s3cr3t@ec2.example/?X-Amz-Signature=f00"
    rec = vm_record(job(1, GridResource=resource, GridResourceUnavailableTime=NOW), NOW)
    assert rec.hold_reason is not None
    assert "grid resource ec2 https://ec2.example/?X-Amz-Signature=*** unavailable" in (
        rec.hold_reason
    )


def test_held_job_without_reason() -> None:
    w = pilot_worker(job(5), "Q", NOW)
    assert w is not None and w.hold_reason is None


# ---------------------------------------------------------------------------- clouds


@pytest.mark.parametrize("state", ["error", "pending", "terminated"])
def test_instance_cause_is_inert(state: str) -> None:
    rec = instance_record(Instance(id="i-1\r\nX", state=state, launched_at=NOW, fault=HUGE), NOW)
    assert rec.hold_reason is not None
    assert inert(rec.hold_reason) and len(rec.hold_reason) <= 310


class _Events:
    def register(self, *_: Any, **__: Any) -> None:
        """The port hooks its pacing and call counts here."""


class _Meta:
    endpoint_url = "https://u:s3cr3t@ec2.example/?X-Amz-Security-Token=t0k3n&Action=x"
    events = _Events()


class _Client:
    meta = _Meta()


def test_ec2_error_text_and_endpoint() -> None:
    cloud = Ec2Cloud(_Client())
    err = {"Error": {"Code": "Bad\x1b[5mCode", "Message": FORGED + HUGE}}
    with pytest.raises(CloudError) as info, cloud._calling("RunInstances"):
        raise ClientError(err, "RunInstances")  # type: ignore[arg-type]
    text = str(info.value)
    assert inert(text) and len(text) < 700
    assert "Bad\\x1b[5mCode" in text
    assert "s3cr3t" not in text and "t0k3n" not in text
    assert "EC2 https://ec2.example/?X-Amz-Security-Token=***&Action=x RunInstances" in text


# ---------------------------------------------------------------------------- PanDA


BASE = "http://panda.example:25080/api/v1"
STATS = BASE + "/statistics/active_job_stats_by_site"


@responses.activate
def test_panda_message_and_keys_are_inert() -> None:
    responses.get(STATS, json={"success": False, "message": FORGED})
    with pytest.raises(PandaError) as info:
        PandaClient(BASE).active_job_stats()
    assert inert(str(info.value)) and "\\x1b]0;pwned\\x07" in str(info.value)

    responses.get(STATS, json={"success": True, "data": {HUGE: {"running": -1}}})
    with pytest.raises(PandaError) as info:
        PandaClient(BASE).active_job_stats()
    assert inert(str(info.value)) and len(str(info.value)) < 700


@responses.activate
def test_panda_site_status_keys_are_inert() -> None:
    from pilotfactory.backends.panda import SiteStatusSource

    url = "http://cric.example/queues.json?access_token=abc"
    responses.get(url, body=json.dumps({FORGED: {"status": 1}}))
    with pytest.raises(PandaError) as info:
        SiteStatusSource(url=url).site_status()
    text = str(info.value)
    assert inert(text) and "abc" not in text and "access_token=***" in text


# ---------------------------------------------------------------------------- every log line


def test_one_line_formatter_keeps_records_on_one_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("pilotfactory.test.hostile")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("machine %s said: %s", "vm\r\n1", FORGED)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with a traceback\nkept")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("WARNING pilotfactory.test.hostile: machine vm\\r\\n1 said:")
    assert "\x1b" not in lines[0] and "\\x1b]0;pwned\\x07" in lines[0]
    assert lines[1] == "ERROR pilotfactory.test.hostile: with a traceback\\nkept"
    assert lines[2].startswith("Traceback") and lines[-1] == "ValueError: boom"


def test_one_line_keeps_tabs_and_spacing() -> None:
    assert one_line("a\tb  c") == "a\tb  c"
    assert one_line("a\u2028b\x85c") == "a\\u2028b\\x85c"


# ---------------------------------------------------------------------------- HTCondor


def test_htcondor_error_text_is_inert_and_bounded() -> None:
    import htcondor2

    from pilotfactory.backends.condor.bindings import BindingsCondor
    from pilotfactory.factory.ports import CondorError, CondorRejected, CondorTarget

    def fails() -> None:
        raise htcondor2.HTCondorException(FORGED + HUGE)

    with pytest.raises(CondorError) as info:
        BindingsCondor(CondorTarget())._call("schedd", "query", fails, CondorRejected)
    assert inert(str(info.value)) and len(str(info.value)) < 1700
    assert inert(info.value.detail)


# ---------------------------------------------------------------------------- the Panda plugin


@responses.activate
def test_panda_plugin_logs_server_inventions_inert_and_finitely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pilotfactory.factory.clock import VirtualClock
    from pilotfactory.factory.params import defaults
    from pilotfactory.factory.plugin import Env
    from pilotfactory.plugins.wmsstatus.panda import ONCE_LIMIT, PandaWMSStatus
    from tests.unit.plugins.test_panda_wmsstatus import TinyWorld

    statuses = {f"{FORGED}{i}": 1 for i in range(ONCE_LIMIT + 50)}
    responses.get(STATS, json={"success": True, "message": "", "data": {"S": statuses}})
    p = {**defaults(PandaWMSStatus.PARAMS), "baseurl": BASE}
    plugin = PandaWMSStatus(p, Env("f", TinyWorld(), VirtualClock()))
    plugin.refresh()
    caplog.set_level(logging.WARNING)
    info = plugin.info("S", p)
    assert info is not None and info.unknown == ONCE_LIMIT + 50
    records = [r.getMessage() for r in caplog.records]
    assert len(records) == ONCE_LIMIT + 1 and "no more are logged" in records[-1]
    assert all(inert(m) for m in records)

    responses.replace(responses.GET, STATS, json={"success": False, "message": HUGE})
    with pytest.raises(PandaError):
        plugin.refresh()
    assert plugin.last_error is not None
    assert inert(plugin.last_error) and len(plugin.last_error) < 500
