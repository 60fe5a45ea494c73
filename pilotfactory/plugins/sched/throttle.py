"""Throttle: a black-hole guard that stops feeding a site where workers die at once."""

from __future__ import annotations

from pilotfactory.factory.params import DURATION_MAX, Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class Throttle(SchedPlugin):
    """Of the jobs started within ``interval``, if more than ``ratio`` ran < ``maxtime``: submit.

    A job counts as short only once it has ended; a running job is long once it passed
    ``maxtime`` and undecided before (not counted either way), so a fresh burst of healthy
    workers is not taken for a black hole. When tripped the result is ``submit``, replacing n
    as APF does. No history, or nothing decided yet, leaves n unchanged.
    """

    NAME = "Throttle"
    NEEDS_HISTORY = True
    PARAMS = (
        Param(
            "interval",
            float,
            3600.0,
            doc="seconds of history looked at",
            minimum=0.0,
            maximum=DURATION_MAX,
        ),
        Param(
            "maxtime",
            float,
            10.0,
            doc="wall time (s) below which a job is short",
            minimum=0.0,
            maximum=DURATION_MAX,
        ),
        Param(
            "ratio",
            float,
            0.5,
            doc="short fraction above which the site is a black hole",
            minimum=0.0,
            maximum=1.0,
        ),
        Param("submit", int, 1, doc="workers per cycle while throttled", minimum=0),
    )

    def history_window(self) -> float:
        return float(self.params["interval"])

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        history = ctx.batch.history if ctx.batch is not None else None
        if not history:
            return n, f"Throttle: in={n} no history, ret={n}"
        p = self.params
        since = ctx.now - p["interval"]
        total = short = 0
        for job in history:
            if job.started < since:
                continue
            if job.walltime(ctx.now) >= p["maxtime"]:
                total += 1
            elif job.ended is not None:
                total += 1
                short += 1
        tripped = total > 0 and short / total > p["ratio"]
        out = p["submit"] if tripped else n
        return out, (
            f"Throttle: in={n} total={total} short={short} ratio={p['ratio']} "
            f"submit={p['submit']} ret={out}"
        )
