"""Shared test settings: where the users' example configurations are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SHARED = ROOT.parent / "shared" / "examples"


def example(name: str) -> Path:
    """The project's shared example if it is beside the clone (CI), else the shipped copy."""
    shared = _SHARED / name
    return shared if shared.exists() else ROOT / "etc" / "examples" / name
