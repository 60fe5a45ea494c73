"""PandaClient and SiteStatusSource against canned replies (responses): shapes and failures."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from pilotfactory.backends.panda import (
    HttpSettings,
    PandaClient,
    RestrictedUnpickler,
    SiteStatusSource,
    restricted_loads,
    split_base,
)
from pilotfactory.factory.ports import PandaError, PandaPort, SiteStatusPort

BASE = "http://panda.example:25080/api/v1"
STATS = BASE + "/statistics/active_job_stats_by_site"
DETAILED = BASE + "/statistics/active_job_detailed_stats_by_site"
LEGACY = "http://panda.example:25080/server/panda"


def ok(data: Any) -> dict[str, Any]:
    return {"success": True, "message": "", "data": data}


def client(**settings: Any) -> PandaClient:
    return PandaClient.from_settings({"baseurl": BASE, **settings})


def req_kwargs(i: int) -> dict[str, Any]:
    """The keyword arguments requests sent call ``i`` with (recorded by responses)."""
    kwargs: dict[str, Any] = getattr(responses.calls[i].request, "req_kwargs")  # noqa: B009
    return kwargs


def private_file(tmp_path: Path, name: str, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / name
    p.write_text(text)
    os.chmod(p, mode)
    return p


# ---------------------------------------------------------------------------- URLs and ports


@pytest.mark.parametrize(
    "url",
    [
        "http://h:25080/api/v1",
        "http://h:25080/api/v1/",
        "http://h:25080/server/panda",
        "http://h:25080",
    ],
)
def test_url_styles_give_the_same_bases(url: str) -> None:
    assert split_base(url) == ("http://h:25080/api/v1", "http://h:25080/server/panda")


def test_implements_the_ports(tmp_path: Path) -> None:
    assert isinstance(client(), PandaPort)
    assert isinstance(SiteStatusSource(path=str(tmp_path / "x.json")), SiteStatusPort)


def test_url_alias_and_bad_scheme() -> None:
    assert (
        PandaClient.from_settings({"url": "https://h:25443"}).api_base == "https://h:25443/api/v1"
    )
    with pytest.raises(PandaError, match="http"):
        PandaClient.from_settings({"baseurl": "ftp://h"})


# ---------------------------------------------------------------------------- JSON API


@responses.activate
def test_active_job_stats_sends_json_headers_and_validates() -> None:
    data = {"BNL_CLOUD": {"activated": 12, "running": 3, "assigned": 0}}
    responses.get(STATS, json=ok(data))
    assert client().active_job_stats() == data
    req = responses.calls[0].request
    assert req.headers["Accept"] == "application/json"
    assert req.headers["Content-Type"] == "application/json"
    assert "Authorization" not in req.headers


@responses.activate
def test_detailed_stats() -> None:
    data = {"BNL": {"SCORE": {"managed": {"activated": 4}, "user": {"running": 1}}}}
    responses.get(DETAILED, json=ok(data))
    assert client().active_job_detailed_stats() == data


@responses.activate
def test_empty_data_is_valid() -> None:
    responses.get(STATS, json=ok({}))
    assert client().active_job_stats() == {}


@responses.activate
def test_timeout_tls_and_cert_settings_are_passed(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cert = tmp_path / "cert.pem"
    cert.write_text("c")
    key = private_file(tmp_path, "key.pem", "k")
    responses.get(STATS, json=ok({}))
    c = client(timeout=7.5, ca_bundle=str(ca), cert=str(cert), key=str(key))
    c.active_job_stats()
    kwargs = req_kwargs(0)
    # (connect, read) timeouts are what is left of the 7.5 s deadline of the whole request
    connect, read = kwargs["timeout"]
    assert 7.0 < connect <= 7.5 and 7.0 < read <= 7.5
    assert kwargs["stream"] is True
    assert kwargs["verify"] == str(ca)
    assert kwargs["cert"] == (str(cert), str(key))


@responses.activate
def test_verify_false_wins_over_ca_bundle() -> None:
    responses.get(STATS, json=ok({}))
    client(verify=False, ca_bundle="/nonexistent").active_job_stats()
    assert req_kwargs(0)["verify"] is False


@pytest.mark.parametrize(
    ("value", "match"), [("abc", "not a whole number"), (0, "must be > 0"), (True, "> 0")]
)
def test_bad_max_reply_bytes(value: Any, match: str) -> None:
    with pytest.raises(PandaError, match=f"max_reply_bytes=.*{match}"):
        client(max_reply_bytes=value)


@responses.activate
def test_max_reply_bytes_and_defaults() -> None:
    assert client().http.max_reply_bytes == 16 * 1024 * 1024
    assert client(max_reply_bytes="2048").http.max_reply_bytes == 2048
    responses.get(STATS, json=ok({"S": {"running": 1}}))
    with pytest.raises(PandaError, match=r"larger than max_reply_bytes=10 \(as sent\)"):
        client(max_reply_bytes=10).active_job_stats()


def test_missing_ca_bundle_is_refused() -> None:
    with pytest.raises(PandaError, match="ca_bundle"):
        client(ca_bundle="/nonexistent/ca.pem")


def test_key_without_cert_is_refused(tmp_path: Path) -> None:
    key = private_file(tmp_path, "key.pem", "k")
    with pytest.raises(PandaError, match="cert"):
        client(key=str(key))


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (requests.exceptions.ConnectTimeout("slow"), "timed out after 30 s"),
        (requests.exceptions.ReadTimeout("slow"), "timed out"),
        (requests.exceptions.ConnectionError("refused"), "connection failed"),
        (requests.exceptions.SSLError("bad cert"), "TLS error"),
    ],
)
@responses.activate
def test_transport_failures(reply: Exception, match: str) -> None:
    responses.get(STATS, body=reply)
    with pytest.raises(PandaError, match=match) as err:
        client().active_job_stats()
    assert STATS in str(err.value)


@pytest.mark.parametrize(
    ("status", "match"),
    [(500, "HTTP 500 server error: boom"), (503, "HTTP 503"), (404, "HTTP 404 client error")],
)
@responses.activate
def test_http_errors(status: int, match: str) -> None:
    responses.get(STATS, body="boom", status=status)
    with pytest.raises(PandaError, match=match):
        client().active_job_stats()


@responses.activate
def test_huge_error_body_is_clipped() -> None:
    responses.get(STATS, body="x" * 100_000, status=502)
    with pytest.raises(PandaError) as err:
        client().active_job_stats()
    assert len(str(err.value)) < 500


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("<html>not json</html>", "not valid JSON"),
        ("", "not valid JSON"),
        (json.dumps([1, 2]), "reply is a list"),
        (json.dumps({"success": False, "message": "DB is down"}), "success=false: DB is down"),
        (json.dumps({"success": False}), r"success=false: \(no message\)"),
        (json.dumps({"success": "yes", "data": {}}), "success='yes'"),
        (json.dumps({"message": "", "data": {}}), "success=None"),
        (json.dumps({"success": True}), "no 'data'"),
        (json.dumps(ok([])), "data is a list, expected a mapping"),
        (json.dumps(ok({"S": [1]})), r"data\['S'\] is a list"),
        (json.dumps(ok({"S": {"running": -1}})), r"data\['S'\]\['running'\] is -1"),
        (json.dumps(ok({"S": {"running": 1.5}})), "is 1.5, expected an integer >= 0"),
        (json.dumps(ok({"S": {"running": "3"}})), "is '3'"),
        (json.dumps(ok({"S": {"running": True}})), "is True"),
        (json.dumps(ok({"S": {"running": None}})), "is None"),
    ],
)
@responses.activate
def test_bad_json_replies(body: str, match: str) -> None:
    responses.get(STATS, body=body, content_type="application/json")
    with pytest.raises(PandaError, match=match) as err:
        client().active_job_stats()
    assert STATS in str(err.value)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"S": {"SCORE": {"managed": {"activated": -2}}}}, "is -2"),
        ({"S": {"SCORE": {"managed": 5}}}, "is a int"),
        ({"S": {"SCORE": {"activated": 5}}}, "is a int"),
        ({"S": {"running": 1}}, "is a int"),
    ],
)
@responses.activate
def test_bad_detailed_shapes(data: Any, match: str) -> None:
    responses.get(DETAILED, json=ok(data))
    with pytest.raises(PandaError, match=match):
        client().active_job_detailed_stats()


# ---------------------------------------------------------------------------- tokens


@responses.activate
def test_token_file_is_sent_as_bearer_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = private_file(tmp_path, "token", "s3cr3t-token\n")
    responses.get(STATS, body="nope", status=500)
    caplog.set_level(logging.DEBUG)
    c = client(token_file=str(token))
    with pytest.raises(PandaError) as err:
        c.active_job_stats()
    assert responses.calls[0].request.headers["Authorization"] == "Bearer s3cr3t-token"
    assert "s3cr3t" not in caplog.text
    assert "s3cr3t" not in str(err.value)
    assert "s3cr3t" not in repr(c) + repr(c.http)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
def test_token_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    token = private_file(tmp_path, "token", "s3cr3t", mode)
    with pytest.raises(PandaError, match=r"group or others.*chmod 600") as err:
        client(token_file=str(token))
    assert "s3cr3t" not in str(err.value)


def test_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("c")
    key = private_file(tmp_path, "key.pem", "k", 0o644)
    with pytest.raises(PandaError, match=r"key file .* group or others"):
        client(cert=str(cert), key=str(key))


def test_proxy_without_key_must_be_private(tmp_path: Path) -> None:
    proxy = private_file(tmp_path, "x509up", "cert+key", 0o644)
    with pytest.raises(PandaError, match="proxy file"):
        client(cert=str(proxy))
    os.chmod(proxy, 0o600)
    assert client(cert=str(proxy)).http.cert == str(proxy)


def test_missing_or_empty_token_file(tmp_path: Path) -> None:
    with pytest.raises(PandaError, match="cannot be read"):
        client(token_file=str(tmp_path / "nope"))
    empty = private_file(tmp_path, "empty", "  \n")
    with pytest.raises(PandaError, match="empty"):
        client(token_file=str(empty))


@responses.activate
def test_credentials_in_url_are_redacted() -> None:
    responses.get(
        "http://user:pw@panda.example:25080/api/v1/statistics/active_job_stats_by_site",
        status=500,
    )
    with pytest.raises(PandaError) as err:
        PandaClient("http://user:pw@panda.example:25080/api/v1").active_job_stats()
    assert "pw" not in str(err.value)
    assert "panda.example:25080" in str(err.value)


# ---------------------------------------------------------------------------- legacy pickle


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch /tmp/pilotfactory-pwned",))


@responses.activate
def test_legacy_stats_and_labels() -> None:
    per_site = {"BNL": {"activated": 5, "running": 2}}
    labelled = {"BNL": {"managed": {"activated": 5}, "user": {"running": 2}}}
    responses.get(LEGACY + "/getJobStatisticsPerSite", body=pickle.dumps(per_site, protocol=0))
    responses.get(LEGACY + "/getJobStatisticsWithLabel", body=pickle.dumps(labelled, protocol=0))
    c = client(legacy=True)
    assert c.active_job_stats() == per_site
    assert c.active_job_detailed_stats() == {"BNL": {"ANY": labelled["BNL"]}}


@responses.activate
def test_legacy_python2_style_pickle() -> None:
    body = b"(dp0\nS'BNL'\np1\n(dp2\nS'activated'\np3\nL7L\nsS'running'\np4\nI2\nss."
    responses.get(LEGACY + "/getJobStatisticsPerSite", body=body)
    assert client(legacy=True).active_job_stats() == {"BNL": {"activated": 7, "running": 2}}


@responses.activate
def test_legacy_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"BNL": _Evil()}, protocol=0).replace(
        b"/tmp/pilotfactory-pwned", str(marker).encode()
    )
    assert b"system" in evil
    responses.get(LEGACY + "/getJobStatisticsPerSite", body=evil)
    with pytest.raises(PandaError, match=r"refused legacy pickle.*GLOBAL") as err:
        client(legacy=True).active_job_stats()
    assert "getJobStatisticsPerSite" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_unpickler_refuses_globals_by_itself(tmp_path: Path, protocol: int) -> None:
    """Second line of defence: even without the opcode check, find_class refuses everything."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"x": _Evil()}, protocol=protocol).replace(
        b"/tmp/pilotfactory-pwned", str(marker).encode()
    )
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        RestrictedUnpickler(io.BytesIO(evil)).load()
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "protocol", "match"),
    [
        ({"BNL": {"running": 1.5}}, 0, "FLOAT"),
        ({"BNL": [1, 2]}, 0, "LIST"),
        ({"BNL": {"running": 1}}, 2, "PROTO"),
        ({"BNL": None}, 0, "NONE"),
    ],
)
def test_legacy_refuses_anything_but_protocol0_dict_str_int(
    obj: Any, protocol: int, match: str
) -> None:
    with pytest.raises(PandaError, match=match):
        restricted_loads(pickle.dumps(obj, protocol=protocol), "u")


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"BNL": {"running": -1}}, "is -1"),
        ({"BNL": {"running": True}}, "is True"),
        ({"BNL": {"running": "5"}}, "is '5'"),
        ({"BNL": 3}, "is a int"),
        ({1: {"running": 3}}, "key 1"),
    ],
)
@responses.activate
def test_legacy_rejects_non_int_counts(obj: Any, match: str) -> None:
    responses.get(LEGACY + "/getJobStatisticsPerSite", body=pickle.dumps(obj, protocol=0))
    with pytest.raises(PandaError, match=match):
        client(legacy=True).active_job_stats()


@responses.activate
def test_legacy_garbage_reply() -> None:
    responses.get(LEGACY + "/getJobStatisticsPerSite", body=b"<html>gone</html>")
    with pytest.raises(PandaError, match="not a valid pickle"):
        client(legacy=True).active_job_stats()


# ---------------------------------------------------------------------------- site status

QUEUES = "http://cric.example/api/atlas/pandaqueue/query/?json"


@responses.activate
def test_site_status_from_url_mapping() -> None:
    doc = {
        "BNL_CLOUD": {"status": "Online", "cloud": "US"},
        "CERN": {"status": "test"},
        "OLD": {"status": "OFFLINE"},
        "X": {"status": "brokeroff"},
        "WEIRD": {"status": "paused"},
        "NOSTATUS": {"cloud": "DE"},
    }
    responses.get(QUEUES, json=doc)
    src = SiteStatusSource.from_settings({"sitestatus_url": QUEUES})
    assert src.site_status() == {
        "BNL_CLOUD": "online",
        "CERN": "test",
        "OLD": "offline",
        "X": "brokeroff",
        "WEIRD": "paused",
    }


@responses.activate
def test_site_status_list_and_envelope_and_no_token(tmp_path: Path) -> None:
    token = private_file(tmp_path, "token", "s3cr3t")
    doc = [{"panda_queue": "A", "status": "online"}, {"name": "B", "status": "test"}]
    responses.get(QUEUES, json={"success": True, "message": "", "data": doc})
    src = SiteStatusSource.from_settings({"sitestatus_url": QUEUES, "token_file": str(token)})
    assert src.site_status() == {"A": "online", "B": "test"}
    assert "Authorization" not in responses.calls[0].request.headers


def test_site_status_from_file(tmp_path: Path) -> None:
    f = tmp_path / "queues.json"
    f.write_text(json.dumps({"BNL_CLOUD": {"status": "offline"}}))
    assert SiteStatusSource.from_settings({"sitestatus_file": str(f)}).site_status() == {
        "BNL_CLOUD": "offline"
    }


def test_site_status_file_is_read_bounded(tmp_path: Path) -> None:
    """A FIFO without a writer, a device or a runaway file cannot stall or exhaust a cycle."""
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for path, match in [
        (str(fifo), "a FIFO, not a config file"),
        ("/dev/zero", "a character device"),
        (str(tmp_path), "a directory"),
        (str(tmp_path / "missing.json"), "cannot read"),
    ]:
        with pytest.raises(PandaError, match=f"site status file: .*{match}"):
            SiteStatusSource.from_settings({"sitestatus_file": path}).site_status()
    big = tmp_path / "big.json"
    big.write_text("[" + " " * 2000 + "]")
    src = SiteStatusSource(path=str(big), http=HttpSettings(max_reply_bytes=1000))
    with pytest.raises(PandaError, match="larger than"):
        src.site_status()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("42", "expected an object or a list"),
        ('[{"status": "online"}]', "no 'panda_queue' or 'name'"),
        ('["A"]', "entry 0 is a str"),
        ('{"A": "online"}', r"\['A'\] is a str"),
        ('{"A": {"status": 1}}', "expected a string"),
        ('{"success": false, "message": "no", "data": null}', "success=false"),
    ],
)
def test_bad_site_status_files(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "queues.json"
    f.write_text(text)
    with pytest.raises(PandaError, match=match):
        SiteStatusSource(path=str(f)).site_status()


def test_site_status_missing_file_and_settings(tmp_path: Path) -> None:
    with pytest.raises(PandaError, match=r"none\.json: cannot read"):
        SiteStatusSource(path=str(tmp_path / "none.json")).site_status()
    with pytest.raises(PandaError, match="exactly one"):
        SiteStatusSource.from_settings({})
    with pytest.raises(PandaError, match="only one"):
        SiteStatusSource.from_settings({"sitestatus_url": QUEUES, "sitestatus_file": "x"})


@responses.activate
def test_site_status_url_failure() -> None:
    responses.get(QUEUES, status=503)
    with pytest.raises(PandaError, match="HTTP 503"):
        SiteStatusSource(url=QUEUES).site_status()
