#!/usr/bin/env python3
"""Build pilotfactory's sdist, then its wheel from that sdist, into one directory.

Usage: build_dist.py OUTDIR (prints the sdist's and the wheel's paths, one a line).

``make dist`` and ``tests/integration/test_packaging.py`` both run this, so the test checks
what ``make dist`` ships. The wheel is built from the unpacked sdist, not from the work tree,
so a file the sdist leaves out is missing from the wheel too and the test sees it. Only the
running interpreter's setuptools, wheel and pip are used (no build isolation, no index): it
works offline and adds no build tool to the project's dependencies.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _run(argv: list[str], cwd: Path) -> str:
    """Its stdout; on failure its whole output goes to stderr and the script exits 1."""
    proc = subprocess.run(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.exit(f"build_dist: {argv[:4]} failed with exit code {proc.returncode}")
    return proc.stdout


def build(outdir: Path) -> tuple[Path, Path]:
    """The sdist through the backend pyproject.toml names, then ``pip wheel`` on it."""
    outdir = outdir.resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    with (ROOT / "pyproject.toml").open("rb") as f:
        backend = tomllib.load(f)["build-system"]["build-backend"]
    hook = (  # PEP 517's build_sdist, as a frontend calls it: in the source tree, own process
        "import importlib, sys\n"
        "print(importlib.import_module(sys.argv[1]).build_sdist(sys.argv[2]))"
    )
    out = _run([sys.executable, "-c", hook, backend, str(outdir)], cwd=ROOT)
    sdist = outdir / out.strip().splitlines()[-1]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(outdir),
            str(sdist),
        ],
        cwd=outdir,
    )
    name = sdist.name.removesuffix(".tar.gz")  # pilotfactory-<version>, as the wheel starts
    wheels = sorted(outdir.glob(f"{name}-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"build_dist: expected one {name} wheel in {outdir}, found {len(wheels)}")
    return sdist, wheels[0]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit(__doc__)
    for path in build(Path(argv[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
