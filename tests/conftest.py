"""Shared test helpers: where the users' example configurations are, and polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
_SHARED = ROOT.parent / "shared" / "examples"


def example(name: str) -> Path:
    """The project's shared example if it is beside the clone (CI), else the shipped copy."""
    shared = _SHARED / name
    return shared if shared.exists() else ROOT / "etc" / "examples" / name


def wait_for(what: str, probe: Callable[[], T], timeout: float = 90.0, interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
