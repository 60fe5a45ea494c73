"""Limiters: each bounds the n it is given; an unset bound leaves n unchanged (0 is a value)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SchedContext, SchedPlugin


class MaxPerCycle(SchedPlugin):
    """At most ``maximum`` new workers per cycle; retirements (n < 0) pass unchanged."""

    NAME = "MaxPerCycle"
    PARAMS = (Param("maximum", int, minimum=0),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        maximum = self.params["maximum"]
        if maximum is None:
            return n, f"MaxPerCycle: in={n} maximum unset, ret={n}"
        out = n if n < 0 else min(n, maximum)
        return out, f"MaxPerCycle: in={n} maximum={maximum} ret={out}"


class MinPerCycle(SchedPlugin):
    """``max(n, minimum)``: a floor on additions, or with ``minimum = -2`` a cap on removals."""

    NAME = "MinPerCycle"
    PARAMS = (Param("minimum", int),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        minimum = self.params["minimum"]
        if minimum is None:
            return n, f"MinPerCycle: in={n} minimum unset, ret={n}"
        out = max(n, minimum)
        return out, f"MinPerCycle: in={n} minimum={minimum} ret={out}"


class MaxPending(SchedPlugin):
    """Keep at most ``maximum`` workers queued: ``min(n, maximum - pending)``.

    With nothing pending there may be free slots, so n passes unchanged (APF). Unless
    ``allow_negative``, the bound ``maximum - pending`` is clamped at 0 before the ``min``, so
    the plugin itself never asks for retirements but still passes a negative n through.
    """

    NAME = "MaxPending"
    PARAMS = (Param("maximum", int, minimum=0), Param("allow_negative", bool, True))

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        maximum = self.params["maximum"]
        if ctx.batch is None:
            return n, f"MaxPending: in={n} no batch info, ret={n}"
        if maximum is None:
            return n, f"MaxPending: in={n} maximum unset, ret={n}"
        pending = ctx.batch.pending
        if pending == 0:
            return n, f"MaxPending: in={n} pending=0 ret={n}"
        bound = maximum - pending
        if not self.params["allow_negative"]:
            bound = max(0, bound)
        out = min(n, bound)
        return out, f"MaxPending: in={n} pending={pending} maximum={maximum} ret={out}"


class MinPending(SchedPlugin):
    """Keep at least ``minimum`` workers queued: ``max(n, minimum - pending)``."""

    NAME = "MinPending"
    PARAMS = (Param("minimum", int),)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        minimum = self.params["minimum"]
        if ctx.batch is None:
            return n, f"MinPending: in={n} no batch info, ret={n}"
        if minimum is None:
            return n, f"MinPending: in={n} minimum unset, ret={n}"
        pending = ctx.batch.pending
        out = max(n, minimum - pending)
        return out, f"MinPending: in={n} pending={pending} minimum={minimum} ret={out}"


class MaxToRun(SchedPlugin):
    """Cap the queue's size: ``min(n, maximum - (pending + running))``; may be negative.

    Without batch info the size is unknown, so it returns 0 (fail closed, as APF did).
    """

    NAME = "MaxToRun"
    PARAMS = (Param("maximum", int, minimum=0),)

    @classmethod
    def cap(cls, params: Mapping[str, Any]) -> int | None:
        value = params.get("maximum")
        return None if value is None else int(value)

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        maximum = self.params["maximum"]
        if ctx.batch is None:
            return 0, f"MaxToRun: in={n} no batch info, ret=0"
        if maximum is None:
            return n, f"MaxToRun: in={n} maximum unset, ret={n}"
        pending, running = ctx.batch.pending, ctx.batch.running
        out = min(n, maximum - (pending + running))
        return out, (
            f"MaxToRun: in={n} pending={pending} running={running} maximum={maximum} ret={out}"
        )


class MaxPerFactory(SchedPlugin):
    """Cap the whole factory (``[Factory] maxperfactory.maximum``) at running + pending, as APF
    does: over the cap → 0 (whatever n was); n would cross it → what is left; else n."""

    NAME = "MaxPerFactory"

    def calc(self, n: int, ctx: SchedContext) -> tuple[int, str]:
        if ctx.factory is None or ctx.factory.maximum is None:
            return n, f"MaxPerFactory: in={n} maximum unset, ret={n}"
        maximum = ctx.factory.maximum
        total = ctx.factory.running + ctx.factory.pending
        if total > maximum:
            out = 0
        elif n + total > maximum:
            out = maximum - total
        else:
            out = n
        return out, f"MaxPerFactory: in={n} total={total} maximum={maximum} ret={out}"
