"""Runs a queue's scheduler plugins in order and records why each step decided what it did."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pilotfactory.factory.plugin import SchedContext, SchedPlugin


@dataclass(frozen=True)
class ChainStep:
    plugin: str
    n_in: int
    n_out: int
    reason: str


@dataclass(frozen=True)
class ChainResult:
    n: int
    steps: tuple[ChainStep, ...]

    def summary(self) -> str:
        return " | ".join(s.reason for s in self.steps)


class ChainError(Exception):
    """A scheduler plugin raised: that queue's cycle fails, the factory goes on."""

    def __init__(self, plugin: str, exc: BaseException, steps: tuple[ChainStep, ...]) -> None:
        super().__init__(f"scheduler plugin {plugin} failed: {type(exc).__name__}: {exc}")
        self.plugin = plugin
        self.steps = steps


def run_chain(plugins: Sequence[SchedPlugin], ctx: SchedContext) -> ChainResult:
    """``n`` starts at 0 and flows through every plugin in ``schedplugin`` order."""
    n = 0
    steps: list[ChainStep] = []
    for plugin in plugins:
        try:
            out, reason = plugin.calc(n, ctx)
        except Exception as exc:
            raise ChainError(plugin.NAME, exc, tuple(steps)) from exc
        if not isinstance(out, int) or isinstance(out, bool):
            raise ChainError(plugin.NAME, TypeError(f"returned {out!r}, not an int"), tuple(steps))
        steps.append(ChainStep(plugin.NAME, n, out, reason))
        n = out
    return ChainResult(n=n, steps=tuple(steps))
