"""The condor port on the htcondor2 Python bindings (the production path).

Daemons are located through the collector on every call (one cheap query), so a restarted
schedd or startd, whose shared-port address changes, never leaves a stale handle behind.

Administrator operations (retire, unretire, drain) need an identity the pool lets run
ADMINISTRATOR commands. With IDTOKENS that is a second token, kept in its own directory so the
identity used is never ambiguous: pass ``admin_token_dir`` or set
``PILOTFACTORY_CONDOR_ADMIN_TOKEN_DIR`` (what ``RealWorld`` relies on). For the duration of an
admin call ``SEC_TOKEN_DIRECTORY`` is switched to that directory with ``htcondor2.param``; the
bindings read it when they authenticate a new session. The switch is process-wide, so a
readers/writer lock keeps ordinary calls out while it is in effect. Without an admin directory
the configured credentials are used as they are (e.g. FS or a token already trusted as admin).

htcondor2 25.x defects worked around here (measured, see docs/reference/real-htcondor.md):
``DaemonCommands.DaemonOffPeaceful`` carries DAEMON_ON's number, ``send_command`` refuses slot
and StartD ads, ``Collector.locate`` returns None for an unknown name (and ``Schedd(None)`` is
the local schedd), and ``Schedd.act`` ignores a plain-string reason.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import classad2
import htcondor2

from pilotfactory.factory.contract import UnsafeValue, inert, submit_key
from pilotfactory.factory.ports import (
    CondorError,
    CondorPermission,
    CondorRejected,
    CondorTarget,
    CondorUnreachable,
    SubmitResult,
    combine,
    render_match,
)
from pilotfactory.factory.text import clip
from pilotfactory.secretfiles import SecretFileError, check_private

log = logging.getLogger(__name__)
MESSAGE_LIMIT = 1600
"""Head + tail of an HTCondor error kept in a port error (the CLI backend keeps as much)."""

ADMIN_TOKEN_DIR_ENV = "PILOTFACTORY_CONDOR_ADMIN_TOKEN_DIR"  # noqa: S105 - a variable name
# condor_commands.h; htcondor2's DaemonCommands.DaemonOffPeaceful is 469 (DAEMON_ON) by mistake.
DAEMON_OFF_PEACEFUL = 483

T = TypeVar("T")
_MISSING = object()

_UNREACHABLE = re.compile(
    r"fail(ed)? to connect|failed communication|unable to connect|connection refused|"
    r"CEDAR:6001|timed? ?out|no route|unknown host|can't find address|unable to locate|"
    r"could not locate|failed to locate|couldn't contact|can't connect|communication error|"
    r"no record of",
    re.IGNORECASE,
)
_PERMISSION = re.compile(
    r"AUTHENTICATE|PERMISSION|denied|not authori[sz]ed|authoriz|SECMAN:20",
    re.IGNORECASE,
)


def classify(message: str, default: type[CondorError]) -> type[CondorError]:
    """Pick the port error for an HTCondor message; ``default`` when the text says nothing."""
    if _PERMISSION.search(message):
        return CondorPermission
    if _UNREACHABLE.search(message):
        return CondorUnreachable
    return default


def checked_constraint(constraint: str) -> str:
    """Parse a constraint locally: daemons answer a bad one with vague errors (the collector's
    reads as if it were down), so it is rejected here with a clear message instead."""
    try:
        classad2.ExprTree(constraint)
    except classad2.ClassAdException as exc:
        raise CondorRejected(
            f"invalid ClassAd constraint {clip(constraint)!r}: {clip(str(exc))}"
        ) from None
    return constraint


def to_python(value: Any) -> Any:
    """A ClassAd value as a plain Python value; ``_MISSING`` for undefined / error."""
    if isinstance(value, classad2.Value):  # before int: Value is an IntEnum (Undefined == 2)
        return _MISSING
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, classad2.ExprTree):
        return _expr_to_python(value, None)
    if isinstance(value, list):
        return [v for v in (to_python(x) for x in value) if v is not _MISSING]
    if isinstance(value, classad2.ClassAd):
        return plain_ad(value, ())
    return str(value)


def _expr_to_python(expr: classad2.ExprTree, ad: classad2.ClassAd | None) -> Any:
    """An expression's value when it evaluates to a literal, else its text (e.g. Requirements)."""
    try:
        result = expr.eval(ad) if ad is not None else expr.eval()
    except Exception:  # an unevaluable expression is still worth its text
        return str(expr)
    if isinstance(result, classad2.Value):
        return str(expr)
    value = to_python(result)
    return str(expr) if value is _MISSING else value


TEXT_ATTRS = frozenset({"requirements", "rank"})
"""Match expressions: kept as their text, never evaluated in the ad alone, where every TARGET
reference is undefined (``TARGET.X =!= undefined`` is then false: a job that runs on any slot
with X read back as one that runs nowhere)."""


def plain_ad(ad: classad2.ClassAd, projection: Sequence[str]) -> dict[str, Any]:
    """The projected attributes of ``ad`` (all when ``projection`` is empty), undefined dropped.

    Attribute names keep the spelling the caller asked for (ClassAd names are case-insensitive,
    the daemons answer with their own case)."""
    return _plain(ad, _names(projection))


def plain_ads(ads: Iterable[classad2.ClassAd], projection: Sequence[str]) -> list[dict[str, Any]]:
    """``plain_ad`` of every ad of an answer, the names worked out once.

    Once per job of a schedd answer (200,000 at a large site), where the binding's own calls
    (one per key, one per value) are most of the cost: plain values skip ``to_python``, and
    names are looked up as the daemon spells them before lower-casing (12.5 -> 5 µs per job
    ad of 11 attributes)."""
    names = _names(projection)
    return [_plain(ad, names) for ad in ads]


_PLAIN = frozenset({int, float, str, bool})


def _names(projection: Sequence[str]) -> dict[str, str] | None:
    """Answer spelling (as asked, and lower-cased) -> the caller's spelling; None: all."""
    if not projection:
        return None
    names = {name.lower(): name for name in projection}
    names.update({name: name for name in projection})
    return names


def _plain(ad: classad2.ClassAd, names: dict[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ad:
        name = key
        if names is not None:
            asked = names.get(key)
            if asked is None:
                asked = names.get(key.lower())
                if asked is None:
                    continue
            name = asked
        raw = ad[key]
        if type(raw) in _PLAIN:
            out[name] = raw
            continue
        if isinstance(raw, classad2.ExprTree):
            value = str(raw) if key.lower() in TEXT_ATTRS else _expr_to_python(raw, ad)
        else:
            value = to_python(raw)
        if value is not _MISSING:
            out[name] = value
    return out


class _TokenSwitch:
    """Readers/writer lock: ordinary calls share it, an admin token switch holds it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_SWITCH = _TokenSwitch()


class BindingsCondor:
    """CondorPort on htcondor2 for one pool, addressed like APF (scheddhost / collectorhost)."""

    def __init__(self, target: CondorTarget, admin_token_dir: str | None = None) -> None:
        self.target = target
        self.admin_token_dir = admin_token_dir or os.environ.get(ADMIN_TOKEN_DIR_ENV) or None
        if self.admin_token_dir:
            check_token_dir(self.admin_token_dir)

    def __repr__(self) -> str:
        return f"BindingsCondor({self.target!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, daemon: str, what: str, fn: Callable[[], T], default: type[CondorError]) -> T:
        """Run one bindings call; HTCondor's exceptions become port errors with its message."""
        try:
            return fn()
        except CondorError:
            raise
        except (htcondor2.HTCondorException, classad2.ClassAdException, RuntimeError) as exc:
            message = str(exc) or type(exc).__name__
            cls = classify(message, default)
            message = clip(message, MESSAGE_LIMIT)  # a daemon's text: bounded and inert
            raise cls(f"{what}: {message}", daemon=daemon, detail=message) from exc

    def _collector(self) -> htcondor2.Collector:
        pool = self.target.collector
        return self._call(
            pool or "collector",
            "contact collector",
            lambda: htcondor2.Collector(pool) if pool else htcondor2.Collector(),
            CondorUnreachable,
        )

    def _schedd(self) -> htcondor2.Schedd:
        name = self.target.schedd
        collector = self._collector()

        def locate() -> classad2.ClassAd:
            if name:
                ad = collector.locate(htcondor2.DaemonTypes.Schedd, name)
            else:
                ad = collector.locate(htcondor2.DaemonTypes.Schedd)
            # htcondor2 answers an unknown name with None, and Schedd(None) would then silently
            # mean "the local schedd".
            if ad is None:
                raise CondorUnreachable(
                    f"no schedd {name or '(local)'} in collector {self.target.collector or ''}",
                    daemon=name,
                )
            return ad

        ad = self._call(name or "schedd", "locate schedd", locate, CondorUnreachable)
        return htcondor2.Schedd(ad)

    def _daemon_ad(self, ad_type: htcondor2.AdType, machine: str, kind: str) -> classad2.ClassAd:
        """The first ad of ``kind`` for ``machine`` (by Machine or Name), with its address."""
        constraint = f"{render_match({'Machine': machine})} || {render_match({'Name': machine})}"
        with _SWITCH.shared():
            collector = self._collector()
            ads = self._call(
                self.target.collector or "collector",
                f"query {kind} of {machine}",
                lambda: collector.query(ad_type, constraint, ["MyAddress", "Name", "Machine"]),
                CondorUnreachable,
            )
        ads = [ad for ad in ads if ad.get("MyAddress")]
        if not ads:
            raise CondorRejected(f"no {kind} for machine {machine!r} in the collector", daemon=kind)
        return ads[0]

    @contextmanager
    def _admin(self) -> Iterator[None]:
        """Run admin commands with the administrator token directory (if one is configured)."""
        if not self.admin_token_dir:
            with _SWITCH.shared():
                yield
            return
        with _SWITCH.exclusive():
            old = htcondor2.param.get("SEC_TOKEN_DIRECTORY")
            htcondor2.param["SEC_TOKEN_DIRECTORY"] = self.admin_token_dir
            try:
                yield
            finally:
                if old is None:
                    del htcondor2.param["SEC_TOKEN_DIRECTORY"]
                else:
                    htcondor2.param["SEC_TOKEN_DIRECTORY"] = old

    def _require_admin(self, address: str, daemon: str) -> None:
        """Fail early and clearly: admin commands are fire-and-forget and report no denial."""
        try:
            htcondor2.ping(address, "ADMINISTRATOR")
            return
        except htcondor2.HTCondorException as exc:
            denied = clip(str(exc), MESSAGE_LIMIT)
        try:
            htcondor2.ping(address, "DC_NOP")
        except htcondor2.HTCondorException as exc:
            text = clip(str(exc), MESSAGE_LIMIT)
            raise CondorUnreachable(f"{daemon}: {text}", daemon=daemon, detail=text) from exc
        hint = "" if self.admin_token_dir else f" (no admin token dir; set {ADMIN_TOKEN_DIR_ENV})"
        raise CondorPermission(
            f"ADMINISTRATOR refused by {daemon}: {denied}{hint}", daemon=daemon, detail=denied
        )

    # -- queries -----------------------------------------------------------------------------

    def query_jobs(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        with _SWITCH.shared():
            schedd = self._schedd()
            ads = self._call(
                self.target.schedd or "schedd",
                "query jobs",
                lambda: schedd.query(
                    checked_constraint(combine(match, constraint)), list(projection)
                ),
                CondorRejected,
            )
        return plain_ads(ads, projection)

    def query_history(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        since: float,
        limit: int,
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        constraint = render_match(match)
        stop: classad2.ExprTree | None = None
        if since > 0:
            # The history file is newest first: stop the scan at the first older record.
            constraint = f"({constraint}) && EnteredCurrentStatus >= {int(since)}"
            stop = classad2.ExprTree(f"EnteredCurrentStatus < {int(since)}")
        with _SWITCH.shared():
            schedd = self._schedd()
            ads = self._call(
                self.target.schedd or "schedd",
                "query history",
                lambda: schedd.history(constraint, list(projection), match=limit, since=stop),
                CondorRejected,
            )
        return plain_ads(ads[:limit], projection)

    def _query_collector(
        self,
        ad_type: htcondor2.AdType,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None,
    ) -> list[dict[str, Any]]:
        with _SWITCH.shared():
            collector = self._collector()
            ads = self._call(
                self.target.collector or "collector",
                f"query {ad_type.name} ads",
                lambda: collector.query(
                    ad_type, checked_constraint(combine(match, constraint)), list(projection)
                ),
                CondorUnreachable,
            )
        return plain_ads(ads, projection)

    def query_startds(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        return self._query_collector(htcondor2.AdTypes.Startd, match, projection, constraint)

    def query_masters(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        return self._query_collector(htcondor2.AdTypes.Master, match, projection, constraint)

    def ping_schedd(self) -> None:
        """One attribute of at most one job: reaches and authenticates to the schedd (READ)
        while costing it next to nothing, however long its queue."""
        with _SWITCH.shared():
            schedd = self._schedd()
            self._call(
                self.target.schedd or "schedd",
                "query schedd",
                lambda: schedd.query("true", ["ClusterId"], limit=1),
                CondorUnreachable,
            )

    def ping_collector(self) -> None:
        """The collector's own ad (one small query)."""
        self._query_collector(htcondor2.AdTypes.Collector, {}, ["Name"], None)

    # -- schedd actions ----------------------------------------------------------------------

    def advertise(self, ads: Sequence[Mapping[str, Any]]) -> None:
        if not ads:
            return
        built = [classad2.ClassAd(dict(ad)) for ad in ads]
        collector = self._collector()
        self._call(
            self.target.collector or "collector",
            f"advertise {len(built)} ad(s)",
            lambda: collector.advertise(built, "UPDATE_AD_GENERIC"),
            CondorRejected,
        )

    def submit(self, description: Mapping[str, str], count: int) -> SubmitResult:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        try:  # the same rules as a submit file written for condor_submit
            for key, value in description.items():
                inert(str(value), submit_key(key), macros=True)
        except UnsafeValue as exc:
            raise CondorRejected(f"submit description: {exc}") from None
        with _SWITCH.shared():
            schedd = self._schedd()

            def submit() -> SubmitResult:
                result = schedd.submit(htcondor2.Submit(dict(description)), count=count)
                return SubmitResult(cluster=result.cluster(), count=result.num_procs())

            submitted = self._call(self.target.schedd or "schedd", "submit", submit, CondorRejected)
        log.debug("submitted %d job(s) as cluster %d", submitted.count, submitted.cluster)
        return submitted

    def remove(self, job_ids: Sequence[str], reason: str) -> int:
        if not job_ids:
            return 0
        with _SWITCH.shared():
            schedd = self._schedd()
            # A plain-string reason is dropped by htcondor2; the (text, code) form is kept.
            result = self._call(
                self.target.schedd or "schedd",
                "remove jobs",
                lambda: schedd.act(htcondor2.JobAction.Remove, list(job_ids), (reason, None)),
                CondorUnreachable,
            )
        if result is None:
            return 0
        denied = int(result.get("TotalPermissionDenied", 0) or 0)
        if denied:
            raise CondorPermission(
                f"remove: permission denied for {denied} of {len(job_ids)} job(s)",
                daemon=self.target.schedd,
            )
        return int(result.get("TotalSuccess", 0) or 0)

    def edit(self, job_ids: Sequence[str], attr: str, value: str) -> None:
        if not job_ids:
            return
        with _SWITCH.shared():
            schedd = self._schedd()
            self._call(
                self.target.schedd or "schedd",
                f"edit {attr}",
                lambda: schedd.edit(list(job_ids), attr, value),
                CondorRejected,
            )

    # -- startd commands (ADMINISTRATOR) -----------------------------------------------------

    def retire_peaceful(self, machine: str) -> None:
        startd = self._daemon_ad(htcondor2.AdTypes.Startd, machine, "startd")
        master = self._daemon_ad(htcondor2.AdTypes.Master, machine, "master")
        # send_command only accepts daemon types it can map; the address is what matters.
        startd_loc = classad2.ClassAd({"MyType": "DaemonMaster", "MyAddress": startd["MyAddress"]})
        master_loc = classad2.ClassAd({"MyType": "DaemonMaster", "MyAddress": master["MyAddress"]})
        with self._admin():
            self._require_admin(startd["MyAddress"], f"startd of {machine}")
            self._require_admin(master["MyAddress"], f"master of {machine}")
            # What condor_off -peaceful does: tell the startd first, then have its master stop it.
            self._call(
                machine,
                "set peaceful shutdown",
                lambda: htcondor2.send_command(
                    startd_loc, htcondor2.DaemonCommands.SetPeacefulShutdown
                ),
                CondorUnreachable,
            )
            self._call(
                machine,
                "peaceful off of the startd",
                lambda: htcondor2.send_command(
                    master_loc, htcondor2.DaemonCommand(DAEMON_OFF_PEACEFUL), "STARTD"
                ),
                CondorUnreachable,
            )
        log.debug("retire (peaceful) sent to the startd of %s", machine)

    def unretire(self, machine: str) -> None:
        master = self._daemon_ad(htcondor2.AdTypes.Master, machine, "master")
        master_loc = classad2.ClassAd({"MyType": "DaemonMaster", "MyAddress": master["MyAddress"]})
        with self._admin():
            self._require_admin(master["MyAddress"], f"master of {machine}")
            self._call(
                machine,
                "start the startd",
                lambda: htcondor2.send_command(
                    master_loc, htcondor2.DaemonCommands.DaemonOn, "STARTD"
                ),
                CondorUnreachable,
            )
        log.debug("unretire (daemon on) sent to the master of %s", machine)

    def drain(self, machine: str, reason: str) -> None:
        slot = self._daemon_ad(htcondor2.AdTypes.Startd, machine, "startd")
        with self._admin():
            self._require_admin(slot["MyAddress"], f"startd of {machine}")
            request = self._call(
                machine,
                "drain",
                lambda: htcondor2.Startd(slot).drainJobs(
                    htcondor2.DrainTypes.Graceful, htcondor2.CompletionType.Exit, reason=reason
                ),
                CondorRejected,
            )
        log.debug("drain of %s requested (request id %s)", machine, request)

    def cancel_drain(self, machine: str) -> None:
        slot = self._daemon_ad(htcondor2.AdTypes.Startd, machine, "startd")
        with self._admin():
            self._require_admin(slot["MyAddress"], f"startd of {machine}")
            self._call(
                machine,
                "cancel drain",
                lambda: htcondor2.Startd(slot).cancelDrainJobs(),
                CondorRejected,
            )
        log.debug("drain of %s cancelled", machine)

    def vacate(self, machine: str, reason: str) -> None:
        slot = self._daemon_ad(htcondor2.AdTypes.Startd, machine, "startd")
        with self._admin():
            self._require_admin(slot["MyAddress"], f"startd of {machine}")
            self._call(
                machine,
                "vacate (quick drain)",
                lambda: htcondor2.Startd(slot).drainJobs(
                    htcondor2.DrainTypes.Quick, htcondor2.CompletionType.Nothing, reason=reason
                ),
                CondorRejected,
            )
        log.debug("vacate (quick drain) of %s requested", machine)

    # -- worker tokens -----------------------------------------------------------------------

    def create_token(
        self,
        identity: str | None,
        authz: Sequence[str],
        lifetime: int,
        key_file: str | None = None,
    ) -> str:
        """The bindings cannot sign with a chosen key: the same tool as the CLI backend."""
        from pilotfactory.backends.condor.tokens import create_token

        return create_token(identity, authz, lifetime, key_file)


def check_token_dir(path: str) -> None:
    """Refuse a token directory others can read: a token is a password (never logged)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CondorPermission(f"token dir {path!r} cannot be read: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise CondorPermission(f"token dir {path!r} is accessible by others; chmod 700 it")
    try:
        for name in sorted(os.listdir(path)):
            check_private(os.path.join(path, name), "token file")
    except SecretFileError as exc:
        raise CondorPermission(str(exc)) from None
