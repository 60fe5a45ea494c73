"""Simulated PanDA server: per-site job queues that pilots pull from, and site statuses.

Pilots in the simulated pool pull one ``activated`` job of their site when they start; the
factory only ever sees the aggregated statistics, in the same shapes the real server answers
(``active_job_stats`` / ``active_job_detailed_stats`` / site status).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pilotfactory.factory.ports import DetailedJobStats, JobStats, PandaError
from pilotfactory.sim.metrics import SimMetrics

ONLINE = "online"


@dataclass
class PandaJob:
    """One PanDA job; ``status`` follows PanDA's names (activated, running, finished, failed)."""

    id: int
    site: str
    duration: float
    resource_type: str
    label: str
    created: float
    status: str


class SimPanda:
    """Implements ``PandaPort`` and ``SiteStatusPort``; ``down = True`` makes both raise."""

    def __init__(self, now: Callable[[], float], metrics: SimMetrics | None = None) -> None:
        self._now = now
        self.metrics = metrics or SimMetrics()
        self.down = False
        """Failure injection: every port call raises ``PandaError``."""
        self.url = "https://panda.sim:25443/server/panda"
        self._next_id = 1
        self._queues: dict[str, deque[PandaJob]] = {}
        self._counts: Counter[tuple[str, str, str, str]] = Counter()
        self._status: dict[str, str] = {}

    # ------------------------------------------------------------------ world side

    def add_jobs(
        self,
        site: str,
        count: int,
        duration: float | Sequence[float] = 600.0,
        *,
        status: str = "activated",
        resource_type: str = "SCORE",
        label: str = "managed",
    ) -> list[PandaJob]:
        """Add ``count`` jobs to a site; only ``activated`` ones can be pulled by pilots."""
        durations = [float(duration)] * count if isinstance(duration, int | float) else duration
        if len(durations) != count:
            raise ValueError("one duration per job, or a single duration")
        self._status.setdefault(site, ONLINE)
        now = self._now()
        jobs = []
        for d in durations:
            job = PandaJob(self._next_id, site, float(d), resource_type, label, now, status)
            self._next_id += 1
            self._counts[(site, resource_type, label, status)] += 1
            if status == "activated":
                self._queues.setdefault(site, deque()).append(job)
            jobs.append(job)
        return jobs

    def set_site_status(self, site: str, status: str) -> None:
        self._status[site] = status

    def pull(self, site: str) -> PandaJob | None:
        """A pilot asks for work: the oldest activated job of its site goes running."""
        if self.down:
            return None
        queue = self._queues.get(site)
        if not queue:
            return None
        job = queue.popleft()
        self._move(job, "running")
        return job

    def finish(self, job: PandaJob, ok: bool = True) -> None:
        """The pilot ended its payload: finished, or failed (pilot killed or evicted)."""
        if job.status == "running":
            self._move(job, "finished" if ok else "failed")

    def counts(self, site: str | None = None) -> dict[str, int]:
        """Jobs per status, for one site or all (for tests and snapshots)."""
        out: Counter[str] = Counter()
        for (s, _rt, _label, status), n in self._counts.items():
            if site is None or s == site:
                out[status] += n
        return {k: v for k, v in out.items() if v}

    def _move(self, job: PandaJob, status: str) -> None:
        key = (job.site, job.resource_type, job.label)
        self._counts[(*key, job.status)] -= 1
        self._counts[(*key, status)] += 1
        job.status = status

    def _call(self, kind: str) -> None:
        self.metrics.count(kind)
        if self.down:
            self.metrics.failed(kind)
            raise PandaError(f"{self.url}: simulated outage (connection refused)")

    # ------------------------------------------------------------------ ports

    def active_job_stats(self) -> JobStats:
        self._call("panda_job_stats")
        out: dict[str, dict[str, int]] = {}
        for (site, _rt, _label, status), n in sorted(self._counts.items()):
            if n:
                per = out.setdefault(site, {})
                per[status] = per.get(status, 0) + n
        return out

    def active_job_detailed_stats(self) -> DetailedJobStats:
        self._call("panda_detailed_stats")
        out: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
        for (site, rt, label, status), n in sorted(self._counts.items()):
            if n:
                out.setdefault(site, {}).setdefault(rt, {}).setdefault(label, {})[status] = n
        return out

    def site_status(self) -> Mapping[str, str]:
        self._call("panda_site_status")
        return dict(sorted(self._status.items()))
