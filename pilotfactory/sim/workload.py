"""Declarative workloads: bursts of payload jobs (pool) or activated jobs (PanDA) over time.

Durations and arrival times are drawn once, from the workload's own seed, when the workload
is installed, so two runs that differ only in factory policy see exactly the same work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pilotfactory.sim.events import EventLoop, seeded_rng
from pilotfactory.sim.panda import SimPanda
from pilotfactory.sim.pool import SimPool


@dataclass(frozen=True)
class Burst:
    """``count`` jobs arriving ``at`` seconds after the start, spread evenly over ``spread``
    seconds; ``label`` puts them in the pool (``MATCH_APF_QUEUE``), ``site`` in PanDA."""

    at: float
    count: int
    label: str | None = None
    site: str | None = None
    duration: tuple[float, float] = (600.0, 600.0)
    spread: float = 0.0

    def __post_init__(self) -> None:
        if (self.label is None) == (self.site is None):
            raise ValueError("a burst goes to exactly one of label (pool) or site (PanDA)")
        if self.count < 0 or self.spread < 0 or self.duration[0] > self.duration[1]:
            raise ValueError(f"bad burst {self}")


@dataclass(frozen=True)
class Workload:
    bursts: tuple[Burst, ...]
    name: str = "custom"
    seed: int = 0

    @property
    def total_jobs(self) -> int:
        return sum(b.count for b in self.bursts)

    def install(
        self, loop: EventLoop, pool: SimPool, panda: SimPanda, start: float | None = None
    ) -> None:
        """Schedule every arrival on the loop; arrivals within one step share one cluster."""
        rng = seeded_rng(self.seed)
        origin = loop.now if start is None else start
        for burst in self.bursts:
            groups: dict[int, list[float]] = {}
            for i in range(burst.count):
                offset = burst.at + (burst.spread * i / burst.count if burst.spread else 0.0)
                lo, hi = burst.duration
                groups.setdefault(math.floor(offset / loop.step), []).append(rng.uniform(lo, hi))
            for bucket, durations in groups.items():
                when = origin + max(burst.at, bucket * loop.step)
                loop.at(when, _arrival(burst, durations, pool, panda))


def _arrival(
    burst: Burst, durations: list[float], pool: SimPool, panda: SimPanda
) -> Callable[[], None]:
    def arrive() -> None:
        if burst.label is not None:
            pool.add_payload_jobs(burst.label, durations)
        elif burst.site is not None:
            panda.add_jobs(burst.site, len(durations), durations)

    return arrive


PRESETS = ("burst", "spike", "steady", "panda", "idle")


def preset(
    name: str,
    *,
    label: str = "SIM_QUEUE",
    site: str = "SIM_SITE",
    scale: float = 1.0,
    seed: int = 0,
) -> Workload:
    """Named workloads; ``scale`` multiplies job counts.

    - ``burst``: 400 jobs (20-40 min) arrive over the first hour and stop: an elastic queue
      must grow, then shrink back to nothing.
    - ``spike``: 800 jobs (10-30 min) at once.
    - ``steady``: 40 jobs (20-40 min) every 30 min for 8 hours: a plateau to hold, no flapping.
    - ``panda``: 300 PanDA activated jobs (10-30 min) for ``site`` over the first hour.
    - ``idle``: no work at all (nothing must be bought).
    """

    def n(count: int) -> int:
        return max(0, round(count * scale))

    bursts: tuple[Burst, ...]
    if name == "burst":
        bursts = (Burst(0.0, n(400), label=label, duration=(1200.0, 2400.0), spread=3600.0),)
    elif name == "spike":
        bursts = (Burst(0.0, n(800), label=label, duration=(600.0, 1800.0)),)
    elif name == "steady":
        bursts = tuple(
            Burst(i * 1800.0, n(40), label=label, duration=(1200.0, 2400.0), spread=60.0)
            for i in range(16)
        )
    elif name == "panda":
        bursts = (Burst(0.0, n(300), site=site, duration=(600.0, 1800.0), spread=3600.0),)
    elif name == "idle":
        bursts = ()
    else:
        raise ValueError(f"unknown workload preset {name!r} (known: {', '.join(PRESETS)})")
    return Workload(bursts, name=name, seed=seed)
