"""Pre-flight probes (``pilotfactory check --preflight``): what a plugin asks of the outside world
before the factory runs, answered in one line each.

A plugin names its endpoints (``Plugin.preflight`` returns ``Probe``s) instead of contacting
them itself, so the caller can probe each distinct endpoint once however many queues share it
(one schedd serves every pilot queue) and tell the probe what those queues want of it (their
summed maximum, for a cloud quota). The condor and cloud probes are built here, on the ports
alone, so every plugin that talks to a schedd, a collector or a cloud account uses the same one.
Every text that comes from outside is clipped; a probe never shows a secret, only the name of
the setting that holds it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from pilotfactory.factory.ports import (
    CloudAccount,
    CloudAuthError,
    CloudError,
    CondorError,
    CondorPermission,
    CondorPort,
    CondorTarget,
    CondorUnreachable,
    Ec2Account,
    World,
)
from pilotfactory.factory.text import clip, redact_url

TEXT_LIMIT = 300
"""Outside text kept in one finding."""
CONDOR_LANE = ("condor",)


class Result(enum.IntEnum):
    """Ordered: an endpoint's result is its worst finding's."""

    OK = 0
    WARN = 1
    FAIL = 2

    @property
    def label(self) -> str:
        return {0: "ok", 1: "warn", 2: "FAIL"}[self.value]


@dataclass(frozen=True)
class Finding:
    result: Result
    what: str
    """One line: what was checked and why it failed (outside text clipped)."""


@dataclass(frozen=True)
class Need:
    """What the queues sharing one endpoint may ask of it."""

    queues: tuple[str, ...]
    maximum: int | None
    """Their maxima summed (``SchedPlugin.cap``); None when some queue has none."""
    unbounded: tuple[str, ...] = ()
    """The queues without a maximum."""


@dataclass(frozen=True)
class Probe:
    """One endpoint to reach. Probes with equal ``key`` reach the same endpoint: the first one
    runs, for all the queues that named it."""

    key: Hashable
    endpoint: str
    """Shown: the kind and address (credentials redacted)."""
    check: Callable[[Need], list[Finding]]
    """Contacts the endpoint; bounded by the endpoint's own timeouts. May raise: the caller
    turns an exception into a FAIL."""
    lane: Hashable = None
    """Probes of one lane run one after another on one thread (the HTCondor bindings are kept
    to one, as the factory's own refreshes keep them); None: a lane of its own."""


def failed(exc: BaseException) -> Finding:
    """An unexpected exception as a FAIL (type and clipped message, never a traceback)."""
    return Finding(Result.FAIL, f"{type(exc).__name__}: {clip(str(exc), TEXT_LIMIT)}")


# ---------------------------------------------------------------------------- condor


def _condor_finding(what: str, call: Callable[[], None]) -> list[Finding]:
    try:
        call()
    except CondorPermission as exc:
        return [Finding(Result.FAIL, f"{what}: refused (identity or authorization): {_c(exc)}")]
    except CondorUnreachable as exc:
        return [Finding(Result.FAIL, f"{what}: unreachable: {_c(exc)}")]
    except CondorError as exc:
        return [Finding(Result.FAIL, f"{what}: {_c(exc)}")]
    return [Finding(Result.OK, f"{what}: answered")]


def _c(exc: BaseException) -> str:
    return clip(str(exc), TEXT_LIMIT)


def schedd_probe(world: World, target: CondorTarget) -> Probe:
    """The schedd a queue submits to or reads (located through its collector)."""
    where = f"schedd {target.schedd or '(local)'}"
    if target.collector:
        where += f" via collector {target.collector}"

    def check(need: Need) -> list[Finding]:
        port: CondorPort = world.condor(target)
        return _condor_finding("job query (1 job, 1 attribute)", port.ping_schedd)

    return Probe(("schedd", target.schedd, target.collector), clip(where, 200), check, CONDOR_LANE)


def collector_probe(world: World, target: CondorTarget) -> Probe:
    """The collector a queue reads startd / master ads from."""
    where = f"collector {target.collector or '(local)'}"

    def check(need: Need) -> list[Finding]:
        port: CondorPort = world.condor(CondorTarget(collector=target.collector))
        return _condor_finding("collector ad query", port.ping_collector)

    return Probe(("collector", target.collector), clip(where, 200), check, CONDOR_LANE)


# ---------------------------------------------------------------------------- cloud


def cloud_endpoint(account: CloudAccount) -> str:
    if isinstance(account, Ec2Account):
        url = redact_url(account.endpoint_url) if account.endpoint_url else "AWS"
        return clip(f"EC2 {url} region {account.region or 'us-east-1'}", 200)
    who = account.project_name or f"application credential {account.application_credential_id}"
    region = f" region {account.region}" if account.region else ""
    return clip(f"OpenStack {redact_url(account.auth_url or '(no auth_url)')} {who}{region}", 200)


def cloud_probe(world: World, account: CloudAccount, credentials: str) -> Probe:
    """A cloud account: credentials (one authenticated call) and instance quota headroom
    against the summed maximum of its queues. ``credentials`` names the settings that hold
    them (shown on a refusal, never their contents)."""

    def check(need: Need) -> list[Finding]:
        try:
            quota = world.cloud(account).quota()
        except CloudAuthError as exc:
            return [Finding(Result.FAIL, f"credentials refused ({credentials}): {_c(exc)}")]
        except CloudError as exc:
            return [Finding(Result.FAIL, _c(exc))]
        found = [Finding(Result.OK, "credentials accepted")]
        if quota is None:
            return [*found, Finding(Result.OK, "the provider states no instance quota")]
        extra = f"; {quota.detail}" if quota.detail else ""
        if quota.limit is None:
            return [*found, Finding(Result.OK, f"instances: {quota.used} used, no limit{extra}")]
        free = quota.limit - quota.used
        said = f"instances: {quota.used} of {quota.limit} used, {free} free{extra}"
        if need.maximum is None:
            why = f"queue(s) {', '.join(need.unbounded)} have no maximum (MaxVMs / MaxToRun)"
            return [*found, Finding(Result.WARN, f"{said}; {why}, headroom not judged")]
        if need.maximum > free:
            return [
                *found,
                Finding(
                    Result.WARN,
                    f"{said}; the queues' maximum {need.maximum} exceeds it: launches past "
                    f"{max(free, 0)} will meet quota errors",
                ),
            ]
        return [*found, Finding(Result.OK, f"{said}; the queues' maximum {need.maximum} fits")]

    return Probe(("cloud", account), cloud_endpoint(account), check)


def worst(findings: Sequence[Finding]) -> Result:
    return max((f.result for f in findings), default=Result.OK)
