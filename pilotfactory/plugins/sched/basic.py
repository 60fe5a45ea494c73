"""Constant and arithmetic scheduler plugins: Fixed, Null, KeepNRunning, Scale."""

from __future__ import annotations

import math
from fractions import Fraction

from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class Fixed(SchedPlugin):
    """The same number every cycle, whatever came before (static pools, tests)."""

    NAME = "Fixed"
    PARAMS = (Param("pilotspercycle", int, 0),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        out = self.params["pilotspercycle"]
        return out, f"Fixed: in={n} pilotspercycle={out} ret={out}"


class Null(SchedPlugin):
    """Always 0: a queue that only reports (and reaps), never submits or retires."""

    NAME = "Null"

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        return 0, f"Null: in={n} ret=0"


class KeepNRunning(SchedPlugin):
    """Turn a target size into a delta: ``keep - (running + pending)``; may be negative.

    ``keep_running`` unset means the target is the input n (an earlier plugin computed it);
    ``keep_running = 0`` is a real target and retires everything. No batch info gives 0.
    """

    NAME = "KeepNRunning"
    PARAMS = (Param("keep_running", int, doc="target size; unset = use the input n"),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if ctx.batch is None:
            return 0, "KeepNRunning: no batch info, ret=0"
        keep = self.params["keep_running"]
        target = n if keep is None else keep
        running, pending = ctx.batch.running, ctx.batch.pending
        out = target - (running + pending)
        shown = "unset" if keep is None else keep
        return out, (
            f"KeepNRunning: in={n} keep_running={shown} running={running} "
            f"pending={pending} ret={out}"
        )


class Scale(SchedPlugin):
    """Multiply n by ``factor``: ceil for n > 0, toward zero for n < 0.

    Rounding up to add and down to remove means a small demand is never lost and constant
    demand converges instead of oscillating. The factor is taken as the decimal written in the
    config, so ``10 * 0.3`` is 3, not ``ceil(3.0000000000000004) = 4``.
    """

    NAME = "Scale"
    PARAMS = (Param("factor", float, 1.0, "n is multiplied by this", minimum=0.0, maximum=100.0),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        factor = self.params["factor"]
        exact = n * Fraction(repr(float(factor)))
        out = math.ceil(exact) if n > 0 else int(exact)  # int() truncates toward zero
        return out, f"Scale: in={n} factor={factor} ret={out}"
