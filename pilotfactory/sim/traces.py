"""Job traces for ``pilotfactory sim``: built-in shapes and a replayed CSV, one job per row.

A trace lists every job (submit time, duration, cores, queue label) before the run starts, so
the user's configuration, the elastiq-style baseline and the oracle all see exactly the same
work, and the oracle can be computed from the trace alone.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby

from pilotfactory.factory.config import ConfigError
from pilotfactory.factory.inifile import read_text
from pilotfactory.sim.events import EventLoop, seeded_rng
from pilotfactory.sim.panda import SimPanda
from pilotfactory.sim.pool import SimExpr, SimPool

SHAPES = ("burst", "trickle", "diurnal", "quiet", "heavy")
CSV_COLUMNS = ("submit", "duration", "cores", "queue")
MAX_CSV_ERRORS = 20
CORES_REQ = "TARGET.Cpus >= RequestCpus"


@dataclass(frozen=True)
class TraceJob:
    submit: float
    """Seconds after the start of the simulation."""
    duration: float
    cores: int = 1
    label: str = "SIM_QUEUE"
    """The queue label: ``MATCH_APF_QUEUE`` of a pool job, or a PanDA site."""


@dataclass(frozen=True)
class Trace:
    jobs: tuple[TraceJob, ...]
    name: str = "trace"
    sites: frozenset[str] = frozenset()
    """Labels that are PanDA sites: their jobs become activated PanDA jobs, not pool jobs."""
    activation_rate: float | None = None
    """PanDA jobs activated per minute and site (None: at submit time); the rest wait."""
    seed: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def total_jobs(self) -> int:
        return len(self.jobs)

    @property
    def end(self) -> float:
        """When the last job would end if it started at once."""
        return max((j.submit + j.duration for j in self.jobs), default=0.0)

    def core_seconds(self) -> float:
        return sum(j.duration * j.cores for j in self.jobs)

    def arrivals(self) -> list[TraceJob]:
        """Jobs in the order they reach the queue, PanDA activation rate applied."""
        if self.activation_rate is None or not self.sites:
            return sorted(self.jobs, key=lambda j: j.submit)
        gap = 60.0 / self.activation_rate
        ready: dict[str, float] = {}
        out = []
        for j in sorted(self.jobs, key=lambda j: j.submit):
            if j.label in self.sites:
                at = max(j.submit, ready.get(j.label, -math.inf))
                ready[j.label] = at + gap
                j = replace(j, submit=at)
            out.append(j)
        return sorted(out, key=lambda j: j.submit)

    def install(
        self, loop: EventLoop, pool: SimPool, panda: SimPanda, start: float | None = None
    ) -> None:
        """Schedule every arrival; jobs arriving together with one label and size share one
        cluster, as one condor_submit would make them."""
        origin = loop.now if start is None else start

        def key(j: TraceJob) -> tuple[float, str, int]:
            return (j.submit, j.label, j.cores)

        for (submit, label, cores), group in groupby(sorted(self.arrivals(), key=key), key):
            durations = [j.duration for j in group]
            loop.at(origin + submit, self._arrival(label, cores, durations, pool, panda))

    def _arrival(
        self, label: str, cores: int, durations: list[float], pool: SimPool, panda: SimPanda
    ) -> Callable[[], None]:
        def arrive() -> None:
            if label in self.sites:
                panda.add_jobs(label, len(durations), durations)
            elif cores > 1:  # as condor_submit writes it, so a slot_ad can judge the job
                pool.add_payload_jobs(
                    label, durations, RequestCpus=cores, Requirements=SimExpr(CORES_REQ)
                )
            else:
                pool.add_payload_jobs(label, durations)

        return arrive


def shape(
    name: str,
    labels: Sequence[str] = ("SIM_QUEUE",),
    *,
    seed: int = 0,
    scale: float = 1.0,
    cores: int = 1,
) -> Trace:
    """The built-in shapes; ``scale`` multiplies job counts, jobs go round-robin over labels.

    - ``burst``: 400 jobs (20-40 min) within 10 minutes, then nothing: grow, then shrink.
    - ``trickle``: one job every 90 s for 8 h (20-40 min): a plateau to hold without flapping.
    - ``diurnal``: 24 h of Poisson arrivals peaking at 40 jobs/h in the afternoon, near none
      at night (30-60 min).
    - ``quiet``: four bursts of 100 jobs (20-40 min) four hours apart: scale to zero between.
    - ``heavy``: 300 jobs over 1 h with Pareto durations (alpha 1.5, 5 min up, capped at 12 h):
      a few very long jobs keep VMs.
    """
    if name not in SHAPES:
        raise ConfigError(f"unknown workload {name!r} (known: {', '.join(SHAPES)}, or a .csv)")
    if not labels:
        raise ConfigError("no queue label to send the workload to")
    rng = seeded_rng(seed)

    def n(count: int) -> int:
        return max(0, round(count * scale))

    def uniform(lo: float, hi: float) -> float:
        return rng.uniform(lo, hi)

    times: list[float] = []
    durations: list[float] = []
    if name == "burst":
        k = n(400)
        times = [600.0 * i / max(1, k) for i in range(k)]
        durations = [uniform(1200, 2400) for _ in times]
    elif name == "trickle":
        times = [i * 90.0 / scale for i in range(n(320))]
        durations = [uniform(1200, 2400) for _ in times]
    elif name == "diurnal":
        peak = 40.0 * scale / 3600.0
        t = 0.0
        while True:  # thinning: draw at the peak rate, keep with the rate's share at t
            t += rng.expovariate(peak) if peak > 0 else math.inf
            if t >= 86400.0:
                break
            share = 0.5 * (1 - math.cos(2 * math.pi * (t - 3 * 3600.0) / 86400.0))
            if rng.random() < share:
                times.append(t)
        durations = [uniform(1800, 3600) for _ in times]
    elif name == "quiet":
        k = n(100)
        times = [b * 4 * 3600.0 + 300.0 * i / max(1, k) for b in range(4) for i in range(k)]
        durations = [uniform(1200, 2400) for _ in times]
    elif name == "heavy":
        k = n(300)
        times = [3600.0 * i / max(1, k) for i in range(k)]
        durations = [min(43200.0, 300.0 * rng.paretovariate(1.5)) for _ in times]
    jobs = tuple(
        TraceJob(round(t, 3), round(d, 3), cores, labels[i % len(labels)])
        for i, (t, d) in enumerate(zip(times, durations, strict=True))
    )
    return Trace(jobs, name=name, seed=seed)


def load_csv(path: str, default_label: str = "SIM_QUEUE") -> Trace:
    """A trace from a CSV file: ``submit,duration[,cores[,queue]]`` per row, seconds.

    An optional header row names the columns (in any order); ``#`` lines and blank lines are
    skipped. Every bad row is reported with ``file:line`` and what is wrong, all at once (up to
    20), so one edit fixes the file."""
    text = read_text(path)
    rows = [
        (no, line)
        for no, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    order = list(CSV_COLUMNS)
    errors: list[str] = []
    jobs: list[TraceJob] = []
    parsed = list(csv.reader([line for _, line in rows]))
    if parsed and parsed[0] and not _is_number(parsed[0][0].strip()):
        header = [c.strip().lower() for c in parsed[0]]
        unknown = [c for c in header if c not in CSV_COLUMNS]
        missing = [c for c in ("submit", "duration") if c not in header]
        if unknown or missing:
            what = [f"unknown column {c!r}" for c in unknown]
            what += [f"no {c!r} column" for c in missing]
            raise ConfigError(
                f"{path}:{rows[0][0]}: header {', '.join(what)} (columns: {', '.join(CSV_COLUMNS)})"
            )
        order = header
        rows, parsed = rows[1:], parsed[1:]
    for (no, _), cells in zip(rows, parsed, strict=True):
        where = f"{path}:{no}"
        if len(cells) > len(order) or len(cells) < 2:
            errors.append(f"{where}: {len(cells)} fields, expected 2 to {len(order)}")
            continue
        values = dict(zip(order, (c.strip() for c in cells), strict=False))
        problem, job = _row(values, default_label)
        if problem:
            errors.append(f"{where}: {problem}")
        elif job is not None:
            jobs.append(job)
        if len(errors) >= MAX_CSV_ERRORS:
            errors.append(f"{path}: stopped after {MAX_CSV_ERRORS} bad rows")
            break
    if errors:
        raise ConfigError("bad trace:\n  " + "\n  ".join(errors))
    if not jobs:
        raise ConfigError(f"{path}: no jobs in the trace")
    return Trace(tuple(jobs), name=path.rsplit("/", 1)[-1])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _row(values: dict[str, str], default_label: str) -> tuple[str | None, TraceJob | None]:
    numbers: dict[str, float] = {}
    for col in ("submit", "duration"):
        raw = values.get(col, "")
        try:
            numbers[col] = float(raw)
        except ValueError:
            return f"{col} {raw!r} is not a number", None
        if not math.isfinite(numbers[col]) or numbers[col] < 0:
            return f"{col} {raw!r} must be a finite number >= 0", None
    if numbers["duration"] <= 0:
        return f"duration {values['duration']!r} must be > 0", None
    raw_cores = values.get("cores", "") or "1"
    try:
        cores = int(raw_cores)
    except ValueError:
        return f"cores {raw_cores!r} is not a whole number", None
    if not 1 <= cores <= 1024:
        return f"cores {raw_cores!r} must be 1 to 1024", None
    label = values.get("queue", "") or default_label
    if any(ord(ch) < 32 or ch.isspace() for ch in label):
        return f"queue {label!r} has spaces or control characters", None
    return None, TraceJob(numbers["submit"], numbers["duration"], cores, label)
