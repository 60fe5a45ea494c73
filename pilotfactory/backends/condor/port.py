"""The condor port: everything the factory asks of an HTCondor pool.

Three implementations share this protocol: ``bindings`` (htcondor2), ``cli`` (condor_* tools)
and the simulated pool in ``pilotfactory.sim``. Queries take an equality filter (``match``) that
every implementation can honour cheaply, plus an optional raw ClassAd ``constraint`` for the
real pool. Ads come back as plain dicts holding only the projected attributes (missing ones
are absent, never ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


class CondorError(Exception):
    """Base of every error the condor port raises; carries the daemon's own message."""

    def __init__(self, message: str, *, daemon: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.daemon = daemon
        self.detail = detail


class CondorUnreachable(CondorError):
    """The schedd / collector / startd could not be contacted (down, wrong host, timeout)."""


class CondorPermission(CondorError):
    """Authentication or authorization failed (token, identity, ADMINISTRATOR needed)."""


class CondorRejected(CondorError):
    """The daemon answered but refused the request (bad submit description, unknown job)."""


@dataclass(frozen=True)
class SubmitResult:
    cluster: int
    count: int

    @property
    def job_ids(self) -> list[str]:
        return [f"{self.cluster}.{proc}" for proc in range(self.count)]


@dataclass(frozen=True)
class CondorTarget:
    """Which pool to talk to: APF's ``scheddhost`` / ``collectorhost``; None means local."""

    schedd: str | None = None
    collector: str | None = None


def render_match(match: Mapping[str, Any]) -> str:
    """Render an equality filter as a ClassAd constraint (``true`` when empty)."""
    parts: list[str] = []
    for key, value in match.items():
        if isinstance(value, bool):
            parts.append(f"{key} =?= {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            parts.append(f"{key} == {value}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key} == "{escaped}"')
    return " && ".join(parts) if parts else "true"


def combine(match: Mapping[str, Any], constraint: str | None) -> str:
    base = render_match(match)
    if constraint:
        return f"({base}) && ({constraint})" if match else constraint
    return base


@runtime_checkable
class CondorPort(Protocol):
    """Schedd, collector and startd operations of one pool."""

    def query_jobs(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs in the schedd queue (one query)."""
        ...

    def query_history(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        since: float,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Jobs that left the queue after ``since`` (bounded by ``limit``, newest first)."""
        ...

    def query_startds(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        """Slot ads (``MyType == "Machine"``) from the collector."""
        ...

    def query_masters(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        """Master ads (``MyType == "DaemonMaster"``) from the collector."""
        ...

    def submit(self, description: Mapping[str, str], count: int) -> SubmitResult:
        """Submit ``count`` jobs of one description as one transaction (one cluster)."""
        ...

    def remove(self, job_ids: Sequence[str], reason: str) -> int:
        """Remove jobs by ``cluster.proc``; returns how many were removed."""
        ...

    def edit(self, job_ids: Sequence[str], attr: str, value: str) -> None:
        """Set ``attr`` to the ClassAd expression ``value`` on each job."""
        ...

    def retire_peaceful(self, machine: str) -> None:
        """``condor_off -peaceful -daemon startd -name <machine>``."""
        ...

    def unretire(self, machine: str) -> None:
        """``condor_on -daemon startd -name <machine>`` (the master restarts it after it exits)."""
        ...

    def drain(self, machine: str, reason: str) -> None:
        """Graceful drain that exits the startd when its last job ends."""
        ...

    def cancel_drain(self, machine: str) -> None:
        """Cancel a drain: running jobs untouched, slots take new jobs at once."""
        ...
