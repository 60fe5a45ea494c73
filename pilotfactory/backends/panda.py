"""PanDA server client: job statistics and site status over HTTP (requests).

Everything the network returns is untrusted: every request ends by its deadline and reads a
bounded, decoded size (``backends.http``), replies are validated strictly, server text is shown
clipped and inert, and every failure becomes a ``PandaError`` that names the (redacted) URL and
what was wrong, so a queue fails closed with a reason instead of acting on a guess. The legacy
pickle API is decoded with an unpickler that cannot import anything, because unpickling network
bytes otherwise runs arbitrary code.
Secrets (bearer token, key file contents) never reach a log line, an error or a ``repr``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import pickletools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from pilotfactory import secretfiles
from pilotfactory.backends.http import (
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_TIMEOUT,
    Cancel,
    FetchError,
    bounded_get,
)
from pilotfactory.factory.inifile import ConfigError, read_text
from pilotfactory.factory.ports import DetailedJobStats, JobStats, PandaError
from pilotfactory.factory.text import clip as text_clip
from pilotfactory.factory.text import redact_url as redact_url  # re-exported

log = logging.getLogger(__name__)

DEFAULT_URL = "http://pandaserver.cern.ch:25080/api/v1"
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
STATS_PATH = "/statistics/active_job_stats_by_site"
DETAILED_PATH = "/statistics/active_job_detailed_stats_by_site"
LEGACY_STATS_PATH = "/getJobStatisticsPerSite"
LEGACY_LABEL_PATH = "/getJobStatisticsWithLabel"
LEGACY_RESOURCE_TYPE = "ANY"
"""The legacy API has no resource types: its per-label counts appear under this one."""

_CLIP = 300


# ---------------------------------------------------------------------------- small helpers


def clip(text: str, limit: int = _CLIP) -> str:
    """Bounded, one-line, inert head + tail of outside text (``factory.text.clip``)."""
    return text_clip(text, limit)


def split_base(url: str) -> tuple[str, str]:
    """``(json_base, legacy_base)`` from any of the URL styles configs use.

    Accepts the JSON API base (``http://host:25080/api/v1``), APF's legacy base
    (``http://host:25080/server/panda``) or the bare server (``http://host:25080``).
    """
    base = url.strip().rstrip("/")
    root = base
    for suffix in ("/api/v1", "/server/panda"):
        if base.endswith(suffix):
            root = base[: -len(suffix)]
            break
    return root + "/api/v1", root + "/server/panda"


def _setting(settings: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = settings.get(name)
        if value is not None and value != "":
            return value
    return None


def as_bool(value: Any, default: bool, name: str) -> bool:
    """A typed bool from parsed params, or from a raw string when called programmatically."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "on", "1"}:
        return True
    if text in {"false", "no", "off", "0"}:
        return False
    raise PandaError(f"setting {name}={value!r} is not a boolean (true/false)")


def as_float(value: Any, default: float, name: str) -> float:
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise PandaError(f"setting {name}={value!r} is not a number") from None
    if out <= 0:
        raise PandaError(f"setting {name}={value!r} must be > 0")
    return out


def check_private(path: str, what: str) -> Path:
    """Refuse a secret file that is missing or open to group/others (as ssh does)."""
    try:
        return secretfiles.check_private(path, what)
    except secretfiles.SecretFileError as exc:
        raise PandaError(str(exc)) from None


def read_token(path: str) -> str:
    try:
        return secretfiles.read_secret(path, "token file")
    except secretfiles.SecretFileError as exc:
        raise PandaError(str(exc)) from None


class _Bearer(requests.auth.AuthBase):
    """Bearer auth whose repr hides the token; also keeps requests from using ~/.netrc."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:
        return "_Bearer(<hidden>)"


# ---------------------------------------------------------------------------- validation


def _bad(url: str, what: str) -> PandaError:
    """A validation error: the server's keys and values in ``what`` are clipped and inert (a
    site name can be a megabyte of escape sequences)."""
    return PandaError(f"{url}: {clip(what, 500)}")


def _count(value: Any, url: str, where: str) -> int:
    # bool is an int subclass, but True is not a job count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(url, f"{where} is {value!r}, expected an integer >= 0")
    return value


def _mapping(value: Any, url: str, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise PandaError(f"{url}: {where} is a {type(value).__name__}, expected a mapping")
    for key in value:
        if not isinstance(key, str):
            raise _bad(url, f"{where} has key {key!r}, expected strings")
    return value


def validate_stats(data: Any, url: str, where: str = "data") -> dict[str, dict[str, int]]:
    """``{site: {status: count}}``, every count an int >= 0."""
    out: dict[str, dict[str, int]] = {}
    for site, statuses in _mapping(data, url, where).items():
        w = f"{where}[{site!r}]"
        out[site] = {
            s: _count(n, url, f"{w}[{s!r}]") for s, n in _mapping(statuses, url, w).items()
        }
    return out


def validate_labelled(data: Any, url: str, where: str = "data") -> dict[str, Any]:
    """``{site: {label: {status: count}}}`` (one nesting level more than ``validate_stats``)."""
    return {
        site: validate_stats(labels, url, f"{where}[{site!r}]")
        for site, labels in _mapping(data, url, where).items()
    }


def validate_detailed(data: Any, url: str, where: str = "data") -> dict[str, Any]:
    """``{site: {resource_type: {label: {status: count}}}}``."""
    return {
        site: validate_labelled(rtypes, url, f"{where}[{site!r}]")
        for site, rtypes in _mapping(data, url, where).items()
    }


# ---------------------------------------------------------------------------- legacy pickle


# What protocol 0 writes for dicts of str and int, and nothing else: no globals, no object
# construction, no lists. Checked on the opcode stream before anything is unpickled.
LEGACY_OPCODES = frozenset(
    {"MARK", "STOP", "DICT", "SETITEM", "STRING", "UNICODE", "INT", "LONG", "PUT", "GET", "POP"}
)


class RestrictedUnpickler(pickle.Unpickler):
    """Loads only what protocol 0 writes without globals: dicts, lists, str, int.

    Any class, function or persistent id in the stream is refused before it is looked up, so
    a malicious reply (``os.system`` via ``GLOBAL`` + ``REDUCE``) cannot run anything.
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def restricted_loads(data: bytes, url: str) -> Any:
    """Decode a legacy reply; anything beyond plain data raises PandaError naming the URL."""
    try:
        for op, _arg, pos in pickletools.genops(data):
            if op.name not in LEGACY_OPCODES:
                raise pickle.UnpicklingError(
                    f"opcode {op.name} at byte {pos} is not allowed (only protocol-0 dict/str/int)"
                )
        return RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except pickle.UnpicklingError as exc:
        raise PandaError(f"{url}: refused legacy pickle reply: {exc}") from None
    except Exception as exc:  # every malformed stream is a PandaError
        raise PandaError(
            f"{url}: legacy reply is not a valid pickle ({type(exc).__name__}: {clip(str(exc))})"
        ) from None


# ---------------------------------------------------------------------------- HTTP


def as_size(value: Any, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise PandaError(f"setting {name}={value!r} is not a whole number of bytes") from None
    if isinstance(value, bool) or out <= 0:
        raise PandaError(f"setting {name}={value!r} must be > 0")
    return out


@dataclass
class HttpSettings:
    """TLS, auth and limits for one server; shared by the stats client and the site status source.

    ``timeout`` is the deadline of a whole request (connect, headers and every body byte), and
    ``max_reply_bytes`` bounds a reply after decompression (``backends.http.bounded_get``).
    ``cancel``, when given (a ``threading.Event`` set on SIGTERM, say), ends a request in flight
    within a fraction of a second.
    """

    timeout: float = DEFAULT_TIMEOUT
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    token: str | None = field(default=None, repr=False)
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    cancel: Cancel | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], with_token: bool = True, cancel: Cancel | None = None
    ) -> HttpSettings:
        timeout = as_float(settings.get("timeout"), DEFAULT_TIMEOUT, "timeout")
        max_reply_bytes = as_size(
            settings.get("max_reply_bytes"), DEFAULT_MAX_REPLY_BYTES, "max_reply_bytes"
        )
        verify: bool | str = as_bool(settings.get("verify"), True, "verify")
        ca_bundle = _setting(settings, "ca_bundle")
        if ca_bundle is not None:
            if not verify:
                log.warning(
                    "ca_bundle %s ignored: TLS verification is off (verify=false)", ca_bundle
                )
            elif not os.path.exists(os.path.expanduser(str(ca_bundle))):
                raise PandaError(f"ca_bundle {str(ca_bundle)!r} does not exist")
            else:
                verify = os.path.expanduser(str(ca_bundle))
        cert_path = _setting(settings, "cert")
        key_path = _setting(settings, "key")
        cert: str | tuple[str, str] | None = None
        if key_path is not None:
            if cert_path is None:
                raise PandaError("key is set but cert is not: both are needed")
            check_private(str(key_path), "key file")
            cert = (os.path.expanduser(str(cert_path)), os.path.expanduser(str(key_path)))
        elif cert_path is not None:
            # Without a separate key the file holds the private key too (an X.509 proxy).
            cert = str(check_private(str(cert_path), "certificate/proxy file"))
        token = _setting(settings, "token") if with_token else None
        token_file = _setting(settings, "token_file") if with_token else None
        if token is None and token_file is not None:
            token = read_token(str(token_file))
        return cls(
            timeout=timeout,
            verify=verify,
            cert=cert,
            token=token,
            max_reply_bytes=max_reply_bytes,
            cancel=cancel,
        )

    def get(self, url: str, *, headers: Mapping[str, str], send_token: bool) -> bytes:
        """The body of one bounded GET; every failure is a PandaError naming the URL."""
        auth = _Bearer(self.token) if (send_token and self.token) else None
        if auth is not None and urlsplit(url).scheme != "https":
            log.warning("sending a bearer token over plain http to %s", redact_url(url))
        try:
            return bounded_get(
                url,
                headers=headers,
                timeout=self.timeout,
                max_bytes=self.max_reply_bytes,
                verify=self.verify,
                cert=self.cert,
                auth=auth,
                cancel=self.cancel,
            )
        except FetchError as exc:
            raise PandaError(str(exc)) from None


def _json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        text = clip(body.decode("utf-8", "replace"))
        raise PandaError(f"{url}: reply is not valid JSON: {text or '(empty)'}") from None


# ---------------------------------------------------------------------------- PanDA client


class PandaClient:
    """Implements ``PandaPort`` against a PanDA server (JSON API, or legacy pickle if opted in).

    One method call is one request; the WMS status plugin decides how often to call.
    """

    def __init__(
        self, url: str = DEFAULT_URL, http: HttpSettings | None = None, legacy: bool = False
    ) -> None:
        if not url.strip().lower().startswith(("http://", "https://")):
            raise PandaError(f"PanDA server URL {redact_url(url)!r} must be http:// or https://")
        self.api_base, self.legacy_base = split_base(url)
        self.http = http or HttpSettings()
        self.legacy = legacy

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], cancel: Cancel | None = None
    ) -> PandaClient:
        """Build from the Panda WMS plugin params (``baseurl``/``url``, TLS, token, limits,
        legacy); ``cancel`` ends a request in flight (see ``HttpSettings``)."""
        url = _setting(settings, "baseurl", "url") or DEFAULT_URL
        return cls(
            str(url),
            HttpSettings.from_settings(settings, cancel=cancel),
            as_bool(settings.get("legacy"), False, "legacy"),
        )

    def __repr__(self) -> str:
        base = self.legacy_base if self.legacy else self.api_base
        return f"PandaClient({redact_url(base)!r}, legacy={self.legacy})"

    def _get_json_data(self, path: str) -> Any:
        url = self.api_base + path
        shown = redact_url(url)
        reply = _json(self.http.get(url, headers=JSON_HEADERS, send_token=True), shown)
        if not isinstance(reply, Mapping):
            raise PandaError(f"{shown}: reply is a {type(reply).__name__}, expected an object")
        success = reply.get("success")
        if success is not True:
            if success is False:
                message = reply.get("message")
                text = clip(str(message)) if message else "(no message)"
                raise PandaError(f"{shown}: server answered success=false: {text}")
            raise _bad(shown, f"reply has success={success!r}, expected true/false")
        if "data" not in reply:
            raise PandaError(f"{shown}: reply has no 'data'")
        return reply["data"]

    def _get_legacy(self, path: str) -> Any:
        url = self.legacy_base + path
        shown = redact_url(url)
        body = self.http.get(url, headers={"Accept": "text/plain"}, send_token=True)
        return restricted_loads(body, shown)

    def active_job_stats(self) -> JobStats:
        if self.legacy:
            shown = redact_url(self.legacy_base + LEGACY_STATS_PATH)
            return validate_stats(self._get_legacy(LEGACY_STATS_PATH), shown, "reply")
        shown = redact_url(self.api_base + STATS_PATH)
        return validate_stats(self._get_json_data(STATS_PATH), shown)

    def active_job_detailed_stats(self) -> DetailedJobStats:
        if self.legacy:
            shown = redact_url(self.legacy_base + LEGACY_LABEL_PATH)
            labelled = validate_labelled(self._get_legacy(LEGACY_LABEL_PATH), shown, "reply")
            return {site: {LEGACY_RESOURCE_TYPE: labels} for site, labels in labelled.items()}
        shown = redact_url(self.api_base + DETAILED_PATH)
        return validate_detailed(self._get_json_data(DETAILED_PATH), shown)


# ---------------------------------------------------------------------------- site status


def parse_site_status(doc: Any, where: str) -> dict[str, str]:
    """Queue name -> lower-cased status from CRIC/schedconfig-style JSON.

    Accepts ``{queue: {"status": ...}}``, a list of objects naming the queue in
    ``panda_queue`` or ``name``, and either wrapped in PanDA's ``{"success", "data"}``.
    Entries without a status are left out (the caller reads absent as unknown).
    """
    if isinstance(doc, Mapping) and isinstance(doc.get("success"), bool) and "data" in doc:
        if not doc["success"]:
            raise PandaError(f"{where}: success=false: {clip(str(doc.get('message', '')))}")
        doc = doc["data"]
    entries: list[tuple[str, Any]] = []
    if isinstance(doc, Mapping):
        entries = [(str(k), v) for k, v in doc.items()]
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            if not isinstance(item, Mapping):
                raise PandaError(f"{where}: entry {i} is a {type(item).__name__}, expected object")
            name = item.get("panda_queue") or item.get("name")
            if not isinstance(name, str) or not name:
                raise PandaError(f"{where}: entry {i} has no 'panda_queue' or 'name'")
            entries.append((name, item))
    else:
        raise PandaError(f"{where}: is a {type(doc).__name__}, expected an object or a list")
    out: dict[str, str] = {}
    for name, entry in entries:
        if not isinstance(entry, Mapping):
            raise _bad(where, f"[{name!r}] is a {type(entry).__name__}, expected object")
        status = entry.get("status")
        if status is None:
            continue
        if not isinstance(status, str):
            raise _bad(where, f"[{name!r}]['status'] is {status!r}, expected a string")
        out[name] = status.strip().lower()
    return out


class SiteStatusSource:
    """Implements ``SiteStatusPort`` from a queue-configuration URL or a local JSON file.

    The PanDA bearer token is never sent here: the URL may belong to another service (CRIC).
    """

    def __init__(
        self, url: str | None = None, path: str | None = None, http: HttpSettings | None = None
    ) -> None:
        if (url is None) == (path is None):
            raise PandaError("site status needs exactly one of sitestatus_url / sitestatus_file")
        self.url = url
        self.path = path
        self.http = http or HttpSettings()

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], cancel: Cancel | None = None
    ) -> SiteStatusSource:
        url = _setting(settings, "sitestatus_url")
        path = _setting(settings, "sitestatus_file")
        if url is not None and path is not None:
            raise PandaError("set only one of sitestatus_url / sitestatus_file")
        http = (
            HttpSettings.from_settings(settings, with_token=False, cancel=cancel)
            if url is not None
            else None
        )
        return cls(
            str(url) if url is not None else None, str(path) if path is not None else None, http
        )

    def __repr__(self) -> str:
        where = redact_url(self.url) if self.url else self.path
        return f"SiteStatusSource({where!r})"

    def site_status(self) -> dict[str, str]:
        if self.url is not None:
            shown = redact_url(self.url)
            body = self.http.get(self.url, headers=JSON_HEADERS, send_token=False)
            return parse_site_status(_json(body, shown), shown)
        assert self.path is not None
        p = Path(self.path).expanduser()
        try:  # bounded like a reply: a FIFO, a device or a runaway file cannot stall the cycle
            text = read_text(str(p), limit=self.http.max_reply_bytes)
        except ConfigError as exc:
            raise PandaError(f"site status file: {exc}") from None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise PandaError(f"site status file {str(p)!r} is not valid JSON: {exc}") from None
        return parse_site_status(doc, f"site status file {str(p)!r}")
