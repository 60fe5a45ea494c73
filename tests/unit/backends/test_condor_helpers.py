"""The condor backends' pure helpers, without a pool: constraints, ads, submit files, errors."""

from __future__ import annotations

import classad2
import pytest

from pilotfactory.backends.condor.bindings import checked_constraint, classify, plain_ad, to_python
from pilotfactory.backends.condor.cli import (
    _job_constraint,
    parse_json_ads,
    render_ads,
    render_submit,
)
from pilotfactory.factory.ports import (
    CondorPermission,
    CondorRejected,
    CondorUnreachable,
    combine,
    render_match,
)


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({}, "true"),
        ({"PilotFactoryId": "f1"}, 'PilotFactoryId == "f1"'),
        ({"A": 3, "B": True}, "A == 3 && B =?= true"),
        ({"Q": 'we"ird\\'}, 'Q == "we\\"ird\\\\"'),
    ],
)
def test_render_match(match: dict, expected: str) -> None:
    assert render_match(match) == expected
    classad2.ExprTree(render_match(match))  # always a valid expression


def test_combine() -> None:
    assert combine({}, None) == "true"
    assert combine({}, "X > 1") == "X > 1"
    assert combine({"A": 1}, "X > 1") == "(A == 1) && (X > 1)"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("AUTHENTICATE:1003:Failed to authenticate", CondorPermission),
        ("PERMISSION DENIED to unauthenticated user", CondorPermission),
        ("Failed to connect to schedd", CondorUnreachable),
        ("something else entirely", CondorRejected),
    ],
)
def test_classify(message: str, expected: type) -> None:
    assert classify(message, CondorRejected) is expected


def test_checked_constraint_rejects_bad_expressions_locally() -> None:
    assert checked_constraint("JobStatus == 2") == "JobStatus == 2"
    with pytest.raises(CondorRejected, match="invalid ClassAd constraint"):
        checked_constraint("JobStatus == ")


def test_plain_ad_projects_keeps_caller_spelling_and_drops_undefined() -> None:
    """Regression: classad2.Value is an IntEnum, so an undefined attribute (as the factory
    writes ``PilotFactoryRetireRequested = undefined`` on un-retire) came back as the int 2."""
    ad = classad2.ClassAd({"jobstatus": 2, "Name": "slot1", "X": classad2.ExprTree("undefined")})
    assert plain_ad(ad, ("JobStatus", "X")) == {"JobStatus": 2}
    assert to_python([1, "a", classad2.Value.Undefined]) == [1, "a"]


def test_match_expressions_come_back_as_text() -> None:
    """Evaluated in the job ad alone, TARGET.EC2InstanceID =!= undefined is false: a job that
    runs on any VM read back as one that runs nowhere (found on the real pool)."""
    ad = classad2.ClassAd({"RequestCpus": 1})
    ad["Requirements"] = classad2.ExprTree("TARGET.EC2InstanceID =!= undefined")
    ad["Other"] = classad2.ExprTree("RequestCpus + 1")
    out = plain_ad(ad, ("Requirements", "Other"))
    assert out == {"Requirements": "TARGET.EC2InstanceID isnt undefined", "Other": 2}


def test_parse_json_ads() -> None:
    assert parse_json_ads("", ("A",)) == []
    text = '[{"ClusterId": 7, "ProcId": 0, "Req": "/Expr(1 + 1)/", "Other": 1}]'
    assert parse_json_ads(text, ("ClusterId", "ProcId", "Req")) == [
        {"ClusterId": 7, "ProcId": 0, "Req": 2}
    ]
    with pytest.raises(CondorRejected, match="unparseable"):
        parse_json_ads("{not json", ())


def test_job_constraint_accepts_only_job_ids() -> None:
    assert _job_constraint(["1.0", "22.3"]) == (
        "(ClusterId == 1 && (ProcId == 0)) || (ClusterId == 22 && (ProcId == 3))"
    )
    with pytest.raises(ValueError, match=r"not a cluster\.proc"):
        _job_constraint(["1.0 || true"])


def test_render_submit_refuses_injected_lines() -> None:
    assert render_submit({"executable": "/bin/true"}, 3) == "executable = /bin/true\nqueue 3\n"
    with pytest.raises(CondorRejected, match="control character"):
        render_submit({"arguments": "a\nqueue 1000"}, 1)
    with pytest.raises(CondorRejected, match="control character"):
        render_submit({"arguments": "a\rqueue 1000"}, 1)
    with pytest.raises(CondorRejected, match="not a submit description key"):
        render_submit({"executable = /bin/sh\n+x": "1"}, 1)
    with pytest.raises(CondorRejected, match="not a submit description key"):
        render_submit({"a b": "1"}, 1)
    with pytest.raises(ValueError, match="count is an argument"):
        render_submit({"Queue": "5"}, 1)


def test_render_ads_one_blank_line_between_ads_that_parse_back() -> None:
    """The lease ads of one collector in one condor_advertise -multiple file."""
    ads = [
        {"MyType": "PilotFactoryLease", "Name": f"f1/{q}", "PilotFactoryLeaseUntil": 1700000600}
        for q in ("A", 'we"ird')
    ]
    text = render_ads(ads)
    assert text.count("\n\n") == 1
    back = list(classad2.parseAds(text, classad2.ParserType.Old))
    assert [dict(ad) for ad in back] == ads
