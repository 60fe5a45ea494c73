"""Panda WMS status: how many PanDA jobs wait for each site, shared by every queue of a server.

One instance serves every queue whose params name the same server and credentials
(``source_key``). Each ``refresh`` makes one ``active_job_stats_by_site`` request, plus one
``active_job_detailed_stats_by_site`` request only when some queue filters by production label
or resource type, plus one request per configured site status source. Queues then read their
slice in ``info``, which does no I/O. A snapshot is all or nothing: if the site status cannot
be read, the counts are not used either, since Activated must not take "offline" for "unknown".

A failed refresh raises (the factory fails the queues closed) and backs the source off
exponentially, so a dead server is not hammered by every cycle of every queue.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pilotfactory.backends.http import DEFAULT_MAX_REPLY_BYTES, DEFAULT_TIMEOUT
from pilotfactory.backends.panda import DEFAULT_URL, split_base
from pilotfactory.factory.info import SiteStatus, WMSQueueInfo
from pilotfactory.factory.params import DURATION_MAX, Param
from pilotfactory.factory.plugin import Env, WMSStatusPlugin
from pilotfactory.factory.ports import DetailedJobStats, JobStats, PandaError, World
from pilotfactory.factory.probe import TEXT_LIMIT, Finding, Need, Probe, Result
from pilotfactory.factory.text import clip, redact_url

log = logging.getLogger(__name__)

# PanDA jobStatus -> WMSQueueInfo field (apf-semantics.md); anything else counts as unknown.
STATUS_MAP: Mapping[str, str] = {
    "activated": "ready",
    "pending": "notready",
    "defined": "notready",
    "assigned": "notready",
    "waiting": "notready",
    "throttled": "notready",
    "starting": "running",
    "sent": "running",
    "running": "running",
    "holding": "running",
    "transferring": "running",
    "finished": "done",
    "failed": "failed",
    "cancelled": "failed",
}

ONCE_LIMIT = 1000
"""Distinct "first seen" warnings (unknown statuses...) logged per source at most."""
_REFUSED = re.compile(r"HTTP 40[13]\b")
"""A PanDA error that means the credentials were refused (``bounded_get``'s wording)."""
BACKOFF_START = 30.0
BACKOFF_MAX = 1800.0

SiteKey = tuple[str | None, str | None]
"""(sitestatus_url, sitestatus_file) of one site status source."""


@dataclass(frozen=True)
class PandaSnapshot:
    """Everything one refresh read; ``time`` is when the refresh started (conservative age)."""

    time: float
    stats: JobStats
    detailed: DetailedJobStats | None
    sites: Mapping[SiteKey, Mapping[str, str]]


def _text(params: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if value is not None and value != "":
            return str(value)
    return None


def _filter(value: Any) -> frozenset[str]:
    """A label / resource-type filter, case-folded; empty means "all"."""
    if value is None or value == "":
        return frozenset()
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    return frozenset(str(v).strip().casefold() for v in items if str(v).strip())


def _site_key(params: Mapping[str, Any]) -> SiteKey | None:
    key = (_text(params, "sitestatus_url"), _text(params, "sitestatus_file"))
    return None if key == (None, None) else key


def _legacy(params: Mapping[str, Any]) -> bool:
    value = params.get("legacy")
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "on", "1"}
    return bool(value)


class PandaWMSStatus(WMSStatusPlugin):
    """``wmsstatusplugin = Panda``: PanDA job counts and site status per ``wmsqueue``."""

    NAME = "Panda"
    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param(
            "baseurl",
            str,
            DEFAULT_URL,
            "PanDA server: .../api/v1, .../server/panda or bare",
            aliases=("url",),
        ),
        Param(
            "timeout",
            float,
            DEFAULT_TIMEOUT,
            "seconds one HTTP request may take in all (connect, headers, every body byte)",
            minimum=0.1,
            maximum=3600.0,
        ),
        Param(
            "max_reply_bytes",
            int,
            DEFAULT_MAX_REPLY_BYTES,
            "largest reply read, counted after gzip/deflate decoding",
            minimum=1,
            maximum=1 << 31,
        ),
        Param("verify", bool, True, "verify the server's TLS certificate"),
        Param("ca_bundle", str, None, "CA bundle file or directory for TLS verification"),
        Param(
            "cert",
            str,
            None,
            "client certificate (or X.509 proxy holding the key too)",
            secret=True,
        ),
        Param("key", str, None, "client private key (must be chmod 600)", secret=True),
        Param(
            "token_file", str, None, "file holding a bearer token (must be chmod 600)", secret=True
        ),
        Param("legacy", bool, False, "use the pre-2024 pickle API (opt-in, restricted decoder)"),
        WMSStatusPlugin.MAXAGE,
        Param("sitestatus_url", str, None, "queue configuration JSON (CRIC/schedconfig style)"),
        Param("sitestatus_file", str, None, "local queue configuration JSON file"),
        Param("prodsourcelabel", list, None, "count only these prodSourceLabels"),
        Param("resource_type", list, None, "count only these resource types"),
        Param(
            "sleep",
            float,
            None,
            "minimum seconds between two requests to the server",
            minimum=0,
            maximum=DURATION_MAX,
        ),
    )

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self.url = redact_url(_text(params, "baseurl", "url") or DEFAULT_URL)  # for messages
        self.legacy = _legacy(params)
        self.snapshot: PandaSnapshot | None = None
        self.failures = 0
        self.next_retry: float | None = None
        self.last_error: str | None = None
        self.need_detailed = False
        self.site_sources: dict[SiteKey, Mapping[str, Any]] = {}
        self._logged: set[str] = set()
        self.register(params)

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        """Same server, API mode and credentials -> one shared instance and one request.

        Filters, ``maxage`` and the site status source are per queue and not part of the key.
        """
        url = _text(params, "baseurl", "url") or DEFAULT_URL
        return (
            cls.NAME,
            split_base(url)[0],
            _legacy(params),
            params.get("verify", True),
            _text(params, "ca_bundle"),
            _text(params, "cert"),
            _text(params, "key"),
            _text(params, "token_file"),
        )

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The server (the one request every refresh makes, with the queue's credentials) and
        its site status source, each once however many queues share them."""
        ns = cls.namespaces()[0]
        url = redact_url(_text(params, "baseurl", "url") or DEFAULT_URL)
        creds = " / ".join(
            f"{ns}{name}" for name in ("token_file", "cert", "key") if _text(params, name)
        )

        def server(need: Need) -> list[Finding]:
            try:
                stats = world.panda(params).active_job_stats()
            except PandaError as exc:
                text = clip(str(exc), TEXT_LIMIT)
                if _REFUSED.search(text):
                    who = creds or "no credentials set"
                    return [Finding(Result.FAIL, f"credentials refused ({who}): {text}")]
                return [Finding(Result.FAIL, text)]
            return [Finding(Result.OK, f"job statistics read: {len(stats)} site(s)")]

        probes = [Probe(cls.source_key(params), f"PanDA {url}", server)]
        key = _site_key(params)
        if key is not None:
            where = redact_url(key[0]) if key[0] else f"file {key[1]}"

            def sites(need: Need) -> list[Finding]:
                try:
                    status = world.site_status(params).site_status()
                except PandaError as exc:
                    return [Finding(Result.FAIL, clip(str(exc), TEXT_LIMIT))]
                return [Finding(Result.OK, f"site status read: {len(status)} queue(s)")]

            probes.append(Probe(("site status", key), f"site status {clip(where, 200)}", sites))
        return probes

    def source_label(self) -> str:
        return self.url

    def refresh_lane(self) -> Hashable:
        """Its own: only this server (and the site status URLs) is asked."""
        return ("http", self.source_key(self.params))

    # ------------------------------------------------------------------------ registration

    def register(self, params: Mapping[str, Any]) -> None:
        """Tell the shared instance what one more queue needs from the next refresh.

        The factory may call this when it wires a queue; ``info`` calls it too, so a queue
        that was never registered is served from the following refresh on.
        """
        if _filter(params.get("prodsourcelabel")) or _filter(params.get("resource_type")):
            self.need_detailed = True
        key = _site_key(params)
        if key is not None and key not in self.site_sources:
            self.site_sources[key] = params

    # ------------------------------------------------------------------------ refresh

    def refresh(self) -> None:
        """Read the server (and site status sources) once; raise and back off on failure."""
        now = self.env.clock.now()
        if self.next_retry is not None and now < self.next_retry:
            raise PandaError(
                f"{self.url}: backing off after {self.failures} failed refresh(es), no request "
                f"made; next try in {self.next_retry - now:.0f} s (last error: {self.last_error})"
            )
        sleep = self.params.get("sleep")
        snap = self.snapshot
        if sleep and snap is not None and now - snap.time < float(sleep) and self._covers(snap):
            return
        try:
            port = self.env.world.panda(self.params)
            stats = port.active_job_stats()
            detailed = port.active_job_detailed_stats() if self.need_detailed else None
            sites = {
                key: self.env.world.site_status(p).site_status()
                for key, p in self.site_sources.items()
            }
        except Exception as exc:
            self._failed(now, exc)
            raise
        self.snapshot = PandaSnapshot(now, stats, detailed, sites)
        self.snapshot_time = now
        if self.failures:
            log.info("%s: refresh succeeded after %d failure(s)", self.url, self.failures)
        self.failures = 0
        self.next_retry = None
        self.last_error = None

    def _covers(self, snap: PandaSnapshot) -> bool:
        """Whether a snapshot already holds what every registered queue needs."""
        if self.need_detailed and snap.detailed is None:
            return False
        return all(key in snap.sites for key in self.site_sources)

    def _failed(self, now: float, exc: Exception) -> None:
        self.failures += 1
        delay = min(BACKOFF_START * 2 ** (self.failures - 1), BACKOFF_MAX)
        self.next_retry = now + delay
        self.last_error = f"{type(exc).__name__}: {clip(str(exc))}"
        log.warning(
            "%s: refresh failed (%d in a row), retry in %.0f s: %s",
            self.url,
            self.failures,
            delay,
            self.last_error,
        )

    # ------------------------------------------------------------------------ info

    def _once(self, key: str, level: int, msg: str, *args: Any) -> None:
        """Log once per key; a server inventing statuses without end cannot grow the set (or
        the log) past ``ONCE_LIMIT`` keys."""
        if key in self._logged or len(self._logged) > ONCE_LIMIT:
            return
        self._logged.add(key)
        if len(self._logged) > ONCE_LIMIT:
            log.warning(
                "%s: more than %d distinct oddities; no more are logged", self.url, ONCE_LIMIT
            )
            return
        log.log(level, msg, *args)

    def info(self, wmsqueue: str, params: Mapping[str, Any]) -> WMSQueueInfo | None:
        """This queue's counts from the last snapshot; None when missing, stale or unusable."""
        self.register(params)
        snap = self.snapshot
        if snap is None:
            return None
        maxage = float(self.MAXAGE.of(params))
        age = self.env.clock.now() - snap.time
        if age > maxage:
            log.warning(
                "%s: snapshot for %s is %.0f s old (maxage %.0f s): not used",
                self.url,
                wmsqueue,
                age,
                maxage,
            )
            return None

        counts = self._counts(wmsqueue, params, snap)
        if counts is None:
            return None
        totals = {"ready": 0, "notready": 0, "running": 0, "done": 0, "failed": 0, "unknown": 0}
        for status, n in counts.items():
            field = STATUS_MAP.get(status.lower())
            if field is None:
                field = "unknown"
                self._once(
                    f"status:{status}",
                    logging.WARNING,
                    "%s: unknown PanDA job status '%s' (first seen at %s): counted as unknown",
                    self.url,
                    clip(status, 80),
                    wmsqueue,
                )
            totals[field] += n

        site_status = SiteStatus.UNKNOWN
        key = _site_key(params)
        if key is not None:
            if key not in snap.sites:
                log.info(
                    "%s: site status source of %s is read from the next refresh", self.url, wmsqueue
                )
                return None
            text = snap.sites[key].get(wmsqueue)
            site_status = SiteStatus.parse(text)
            if text is not None and site_status is SiteStatus.UNKNOWN:
                self._once(
                    f"site:{text}",
                    logging.WARNING,
                    "site status '%s' of %s is not one PanDA defines: unknown",
                    clip(text, 80),
                    wmsqueue,
                )
        return WMSQueueInfo(queue=wmsqueue, time=snap.time, site_status=site_status, **totals)

    def _counts(
        self, wmsqueue: str, params: Mapping[str, Any], snap: PandaSnapshot
    ) -> Mapping[str, int] | None:
        """Status -> count for one site, summed over the labels and resource types asked for.

        A site absent from a successful reply has no active jobs: empty, not None.
        """
        labels = _filter(params.get("prodsourcelabel"))
        rtypes = _filter(params.get("resource_type"))
        if not labels and not rtypes:
            return snap.stats.get(wmsqueue, {})
        if rtypes and self.legacy:
            self._once(
                f"legacy-rtype:{wmsqueue}",
                logging.ERROR,
                "%s: queue %s filters by resource_type, which the legacy API cannot report",
                self.url,
                wmsqueue,
            )
            return None
        if snap.detailed is None:
            log.info(
                "%s: detailed statistics for %s are read from the next refresh", self.url, wmsqueue
            )
            return None
        out: dict[str, int] = {}
        for rtype, by_label in snap.detailed.get(wmsqueue, {}).items():
            if rtypes and rtype.casefold() not in rtypes:
                continue
            for label, by_status in by_label.items():
                if labels and label.casefold() not in labels:
                    continue
                for status, n in by_status.items():
                    out[status] = out.get(status, 0) + n
        return out
