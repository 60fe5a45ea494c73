"""Condor WMS status: payload waiting in an HTCondor pool, counted per ``MATCH_APF_QUEUE`` label.

This is how the two-queue elastic pool works: payload jobs (which may be another queue's
pilots) carry a label, and a VM queue whose ``wmsqueue`` is that label grows the pool from
their idle count. One projected query per schedd per cycle serves every queue.

Demand the VMs can serve: a queue may describe the slot its VMs will advertise
(``wmsstatus.condor.slot_ad = [ Cpus = 4; Memory = 8192; OpSys = "LINUX"; ... ]``); an idle job
whose ``Requirements`` are false against that slot (evaluated with the htcondor2 ``classad2``
module) is counted as ``notready``, never as work to buy a VM for. Undefined is not false: a job
whose requirements name something the template does not say may still match. Jobs are grouped
by their requirements and requests, so each distinct kind is evaluated once per cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import replace
from typing import Any

from pilotfactory.factory.contract import TARGET_PARAMS, target_from, target_text
from pilotfactory.factory.info import SiteStatus, WMSQueueInfo
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import Env, WMSStatusPlugin
from pilotfactory.factory.ports import CondorTarget, World
from pilotfactory.factory.probe import Probe, schedd_probe

log = logging.getLogger(__name__)

ANY = "ANY"
# JobStatus -> WMSQueueInfo field (APF's Condor WMS mapping).
FIELD = {0: "ready", 1: "ready", 2: "running", 6: "running", 3: "done", 4: "done", 5: "failed"}
# VM jobs of any pilotfactory are supply, not payload.
CONSTRAINT = "MATCH_APF_QUEUE =!= undefined && !(JobUniverse == 9 && PilotFactoryId =!= undefined)"
PROJECTION = ("MATCH_APF_QUEUE", "JobStatus", "JobUniverse", "PilotFactoryId", "PilotFactoryQueue")
MATCH_ATTRS = ("Requirements", "RequestCpus", "RequestMemory", "RequestDisk", "RequestGPUs")
"""What an idle job's match against a queue's slot_ad reads (only fetched for labels whose
queue set one)."""


def parse_slot_ad(text: str) -> Any:
    """The ClassAd of ``slot_ad``; ValueError saying what is wrong."""
    import classad2

    try:
        ad = classad2.parseOne(text)
    except Exception as exc:  # the parser's own message names the problem
        raise ValueError(f"not a ClassAd: {exc}") from None
    if not isinstance(ad, classad2.ClassAd) or len(ad) == 0:
        raise ValueError('not a ClassAd; write e.g. [ Cpus = 4; Memory = 8192; OpSys = "LINUX" ]')
    return ad


def conjuncts(text: str) -> list[str]:
    """The top-level ``&&`` terms of an expression (outside parentheses, lists and strings)."""
    out, depth, start, i, quoted = [], 0, 0, 0, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith("&&", i):
            out.append(text[start:i])
            start = i + 2
            i += 1
        i += 1
    out.append(text[start:])
    return [t.strip() for t in out if t.strip()]


def unmatchable(job: tuple[Any, ...], slot: Any) -> bool:
    """Whether a job (``MATCH_ATTRS`` values) certainly cannot run on ``slot``: a top-level
    term of its Requirements is false there, so the whole is false or an error, no match
    either way. Terms are judged one by one because the template names only some of what a
    startd advertises: condor_submit's own terms (``versionGE(split(TARGET.CondorVersion)...``)
    are an error against it, which would hide a false ``TARGET.Cpus >= RequestCpus``.
    Undefined, an error or an unparsable term is never false."""
    import classad2

    requirements = job[0]
    if requirements is None or requirements is True:
        return False
    if requirements is False:
        return True
    ad = classad2.ClassAd()
    for name, value in zip(MATCH_ATTRS[1:], job[1:], strict=True):
        if value is not None:
            ad[name] = value
    for term in conjuncts(str(requirements)):
        try:
            if classad2.ExprTree(term).eval(ad, slot) is False:
                return True
        except Exception:  # noqa: S112 - an unparsable term says nothing
            continue
    return False


def is_payload(ad: Mapping[str, Any]) -> bool:
    if not ad.get("MATCH_APF_QUEUE"):
        return False
    return not (ad.get("JobUniverse") == 9 and ad.get("PilotFactoryId") is not None)


class CondorWMSStatus(WMSStatusPlugin):
    """Idle / running / done / held payload jobs per label; ``ANY`` sums every label."""

    NAME = "Condor"
    ALIASES = ("CondorLocal",)
    SLOT_AD = Param(
        "slot_ad",
        str,
        None,
        "ClassAd of a slot this queue's VMs advertise: idle jobs that cannot match it are notready",
        validate=parse_slot_ad,
    )
    PARAMS = (
        *TARGET_PARAMS,
        WMSStatusPlugin.MAXAGE,
        SLOT_AD,
    )

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self.target: CondorTarget = target_from(params)
        self._counts: dict[str, dict[str, int]] = {}
        self._own: dict[tuple[str, str], dict[str, int]] = {}  # (label, queue) -> its pilots
        self._match_labels: set[str] = set()  # labels some queue matches against its slot_ad
        self._kinds: dict[str, dict[tuple[Any, ...], int]] = {}  # label -> idle job kind -> n
        self._slots: dict[str, Any] = {}  # slot_ad text -> parsed ClassAd
        self._verdicts: dict[tuple[str, tuple[Any, ...]], bool] = {}

    @classmethod
    def source_key(cls, params: Mapping[str, Any]) -> Hashable:
        return (cls.NAME, target_from(params))

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The schedd whose idle jobs are the work."""
        return [schedd_probe(world, target_from(params))]

    def source_label(self) -> str:
        return target_text(self.target)

    def refresh(self) -> None:
        now = self.env.clock.now()
        port = self.env.world.condor(self.target)
        matching = self._match_labels
        projection = PROJECTION + MATCH_ATTRS if matching else PROJECTION
        ads = port.query_jobs({}, projection, CONSTRAINT)
        counts: dict[str, dict[str, int]] = {}
        own: dict[tuple[str, str], dict[str, int]] = {}
        kinds: dict[str, dict[tuple[Any, ...], int]] = {label: {} for label in matching}
        for ad in ads:
            if not is_payload(ad):
                continue
            label = str(ad["MATCH_APF_QUEUE"])
            name = FIELD.get(int(ad.get("JobStatus", -1)), "unknown")
            if name == "ready" and label in kinds:
                kind = tuple(ad.get(a) for a in MATCH_ATTRS)
                of_label = kinds[label]
                of_label[kind] = of_label.get(kind, 0) + 1
            bucket = counts.setdefault(label, {})
            bucket[name] = bucket.get(name, 0) + 1
            if ad.get("PilotFactoryId") == self.env.factory_id and ad.get("PilotFactoryQueue"):
                mine = own.setdefault((label, str(ad["PilotFactoryQueue"])), {})
                mine[name] = mine.get(name, 0) + 1
        self._counts, self._own, self._kinds = counts, own, kinds
        if len(self._verdicts) > 10_000:  # job kinds come and go; verdicts are cheap to redo
            self._verdicts.clear()
        self.snapshot_time = now
        log.debug("[%s] %d payload job(s) under %d label(s)", self.NAME, len(ads), len(counts))

    def info_for(self, queue: str, wmsqueue: str, params: Mapping[str, Any]) -> WMSQueueInfo | None:
        """A pilot queue whose ``wmsqueue`` is the label its own pilots carry does not count
        them as its waiting work (it would feed on itself until a cap stopped it); another
        queue's pilots under that label stay payload (the two-queue elastic pool)."""
        info = self.info(wmsqueue, params)
        if info is None:
            return None
        labels = list(self._counts) if wmsqueue == ANY else [wmsqueue]
        for label in labels:
            for name, n in self._own.get((label, queue), {}).items():
                info = replace(info, **{name: getattr(info, name) - n})
        slot_text = self.SLOT_AD.of(params)
        if slot_text:
            unfit = sum(self._unmatchable(label, slot_text, queue) for label in labels)
            if unfit:
                moved = min(unfit, info.ready)
                info = replace(info, ready=info.ready - moved, notready=info.notready + moved)
        return info

    def _unmatchable(self, label: str, slot_text: str, queue: str) -> int:
        """Idle jobs of ``label`` that cannot run on the queue's slot; the label is matched
        from the next refresh on when this is the first queue to ask."""
        if label not in self._kinds:
            if label not in self._match_labels:
                self._match_labels.add(label)
                log.info(
                    "[%s] matching idle jobs of %s against slot_ad from the next cycle",
                    queue,
                    label,
                )
            return 0
        slot = self._slots.get(slot_text)
        if slot is None:
            slot = self._slots[slot_text] = parse_slot_ad(slot_text)
        out = 0
        for kind, n in self._kinds[label].items():
            key = (slot_text, kind)
            verdict = self._verdicts.get(key)
            if verdict is None:
                verdict = self._verdicts[key] = unmatchable(kind, slot)
            if verdict:
                out += n
        if out:
            log.debug(
                "[%s] %d idle job(s) of %s cannot match the queue's slot_ad", queue, out, label
            )
        return out

    def info(self, wmsqueue: str, params: Mapping[str, Any]) -> WMSQueueInfo | None:
        maxage = float(self.MAXAGE.of(params if params.get("maxage") is not None else self.params))
        now = self.env.clock.now()
        if self.snapshot_time is None or now - self.snapshot_time > maxage:
            log.warning("[%s] no Condor WMS status (missing or older than %gs)", wmsqueue, maxage)
            return None
        labels = list(self._counts) if wmsqueue == ANY else [wmsqueue]
        info = WMSQueueInfo(wmsqueue, self.snapshot_time, site_status=SiteStatus.ONLINE)
        for label in labels:
            for name, n in self._counts.get(label, {}).items():
                info = replace(info, **{name: getattr(info, name) + n})
        return info
