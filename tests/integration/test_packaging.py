"""What ``make dist`` ships works on its own: the wheel, installed into a fresh venv, runs.

The sdist and the wheel are built by ``scripts/build_dist.py`` (what ``make dist`` runs; the
wheel from the sdist). The wheel goes into a new venv with ``--no-deps --no-index`` (CI may be
offline); the dependencies are made visible through a ``.pth`` line naming this interpreter's
site-packages, which is only appended to ``sys.path``: the nested ``.pth`` files there, among
them the editable install's finder, are not run, and the fresh venv's own site-packages comes
first. Everything below then runs the installed ``pilotfactory`` from a directory with no
``etc/`` and without PYTHON* variables, so neither this checkout nor its configs can stand in
for what the wheel forgot: a missing ``etc/`` file, entry point or console script fails here.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import PathDistribution
from pathlib import Path
from typing import Any

import pytest

from pilotfactory import __version__

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc"
TIMEOUT = 300  # a build on a loaded 2-core machine; each run below takes about a second
GROUPS = [f"pilotfactory.{kind}" for kind in ("wmsstatus", "batchstatus", "sched", "batchsubmit")]

# Run by the fresh venv's python: where pilotfactory, its metadata and its etc/ are, and every
# entry point of each group, loaded (so each resolves to a class in the installed package).
PROBE = """
import importlib.metadata as md, json, sys
import pilotfactory, pilotfactory.cli
dist = md.distribution("pilotfactory")
groups = {}
for group in sys.argv[1:]:
    groups[group] = {ep.name: ep.load().__module__ for ep in md.entry_points(group=group)}
print(json.dumps({
    "module": pilotfactory.__file__,
    "metadata": str(dist.locate_file("")),
    "version": dist.version,
    "etc": pilotfactory.cli.shipped_etc_dir(),
    "groups": groups,
}))
"""


def _etc_files() -> set[str]:
    """Every file under the repository's etc/, relative to it."""
    return {p.relative_to(ETC).as_posix() for p in ETC.rglob("*") if p.is_file()}


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    prefix: Path
    script: Path
    env: dict[str, str]
    cwd: Path  # holds no etc/ and no pilotfactory/
    probe: dict[str, Any]  # what PROBE printed

    @property
    def share(self) -> Path:
        """The etc/ the wheel installed, as the installed pilotfactory finds it."""
        return Path(self.probe["etc"])

    def pilotfactory(self, *args: str | Path) -> str:
        return _run([self.script, *args], cwd=self.cwd, env=self.env)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("dist")
    lines = _run([sys.executable, ROOT / "scripts" / "build_dist.py", out], cwd=out).split()
    sdist, wheel = (Path(line) for line in lines)
    assert sdist.name.endswith(".tar.gz") and wheel.name.endswith(".whl")
    return Built(sdist, wheel)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("fresh")
    prefix, cwd = base / "venv", base / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("VIRTUAL_ENV", None)
    _run([sys.executable, "-m", "venv", prefix], cwd=cwd, env=env)
    python = prefix / "bin" / "python"
    pip: list[str | Path] = [python, "-I", "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # Before the .pth below exists: pip must not see the project's own pilotfactory install.
    _run([*pip, "install", "--quiet", "--no-deps", "--no-index", built.wheel], cwd=cwd, env=env)
    site = _run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd, env
    )
    ours = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    Path(site.strip(), "zz_pilotfactory_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    probe = json.loads(_run([python, "-I", "-c", PROBE, *GROUPS], cwd, env))
    return Installed(prefix, prefix / "bin" / "pilotfactory", env, cwd, probe)


def test_sdist_has_etc_readme_and_metadata(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        top = built.sdist.name.removesuffix(".tar.gz")
        names = {n.removeprefix(top + "/") for n in tar.getnames()}
    assert {f"etc/{f}" for f in _etc_files()} <= names
    assert {"README.md", "setup.cfg", "pyproject.toml", "pilotfactory/cli.py"} <= names


class _CaseKeepingParser(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr  # entry point names are case-sensitive


def _declared_entry_points() -> dict[str, dict[str, str]]:
    """setup.cfg's plugin entry points: group -> name -> target."""
    cfg = _CaseKeepingParser()
    cfg.read(ROOT / "setup.cfg")
    out: dict[str, dict[str, str]] = {}
    for group in GROUPS:
        lines = cfg["options.entry_points"][group].strip().splitlines()
        pairs = (line.split("=", 1) for line in lines)
        out[group] = {name.strip(): target.strip() for name, target in pairs}
    return out


def test_wheel_has_etc_as_data_and_the_entry_points(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as whl:
        names = set(whl.namelist())
        (info,) = {n.split("/", 1)[0] for n in names if ".dist-info/" in n}
        eps = PathDistribution(zipfile.Path(whl, f"{info}/")).entry_points
    (data,) = {n.split("/", 1)[0] for n in names if ".data/" in n}
    prefix = f"{data}/data/share/pilotfactory/"
    assert {n.removeprefix(prefix) for n in names if n.startswith(prefix)} == _etc_files()
    assert eps.select(group="console_scripts", name="pilotfactory")
    for group, declared in _declared_entry_points().items():
        assert {ep.name: ep.value for ep in eps.select(group=group)} == declared, group


def test_installed_package_and_entry_points_are_the_fresh_venvs(installed: Installed) -> None:
    probe, fresh = installed.probe, installed.prefix.resolve()
    for what in ("module", "metadata", "etc"):
        assert Path(probe[what]).resolve().is_relative_to(fresh), (what, probe[what])
    assert probe["version"] == __version__
    for group, declared in _declared_entry_points().items():
        got = probe["groups"][group]
        assert set(got) == set(declared), group
        assert all(m.startswith("pilotfactory.plugins.") for m in got.values()), got


def test_installed_examples_are_etc(installed: Installed) -> None:
    got = {
        p.relative_to(installed.share).as_posix() for p in installed.share.rglob("*") if p.is_file()
    }
    assert got == _etc_files()
    for rel in got:
        assert (installed.share / rel).read_bytes() == (ETC / rel).read_bytes(), rel


def test_console_script_help_and_version(installed: Installed) -> None:
    assert "usage: pilotfactory" in installed.pilotfactory("--help")
    assert installed.pilotfactory("--version").split() == ["pilotfactory", __version__]
    assert "usage: pilotfactory check" in installed.pilotfactory("check", "--help")


def test_check_passes_on_every_shipped_example(installed: Installed) -> None:
    """factory.conf with its own queueConf, then with each shipped queues file instead."""
    factory = installed.share / "factory.conf"
    queue_files = [
        installed.share / "queues.conf",
        *sorted((installed.share / "examples").glob("*.conf")),
    ]
    assert len(queue_files) == 1 + len(list((ETC / "examples").glob("*.conf")))
    runs: list[tuple[str | Path, ...]] = [("-c", factory)]
    runs += [("-c", factory, "-q", q) for q in queue_files]
    for args in runs:
        report = json.loads(installed.pilotfactory("check", *args, "--json"))
        assert report["ok"] is True and report["queues"] and not report["broken"], (args, report)


def test_demo_runs_on_the_installed_queues_conf(installed: Installed) -> None:
    """No -q, no etc/ in the working directory: demo finds the examples the wheel installed."""
    summary = json.loads(installed.pilotfactory("demo", "--hours", "1", "--json"))
    assert set(summary["queues"]) == {"BNL_CLOUD", "BNL_CLOUD-ec2-spot"}
