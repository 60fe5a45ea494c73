"""The PanDA port: job statistics and site status, as plain mappings.

Implemented by ``pilotfactory.backends.panda`` (requests to a real server) and by the simulated
PanDA in ``pilotfactory.sim``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

# site -> jobStatus -> count
JobStats = Mapping[str, Mapping[str, int]]
# site -> resource_type -> prodSourceLabel -> jobStatus -> count
DetailedJobStats = Mapping[str, Mapping[str, Mapping[str, Mapping[str, int]]]]


class PandaError(Exception):
    """The server could not be read or answered something unusable (names the URL)."""


@runtime_checkable
class PandaPort(Protocol):
    def active_job_stats(self) -> JobStats:
        """``active_job_stats_by_site`` (one request)."""
        ...

    def active_job_detailed_stats(self) -> DetailedJobStats:
        """``active_job_detailed_stats_by_site`` (one request)."""
        ...


@runtime_checkable
class SiteStatusPort(Protocol):
    def site_status(self) -> Mapping[str, str]:
        """PanDA queue name -> status text (online / test / offline / brokeroff)."""
        ...
