"""Generated hostile configuration files: ``pilotfactory check`` answers 0, 1 or 2, never a
traceback, each case within a bounded time and a bounded memory peak.

Inputs: random bytes, seeded mutations of the shipped and shared example files, random
sections / keys / values with odd characters, deep and wide interpolation, and factory.conf
settings; then a few real processes fed /dev/zero, a FIFO and a directory. The line scan and
parser that replace configparser's are checked against configparser itself.
"""

from __future__ import annotations

import configparser
import os
import random
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfactory.cli import main
from pilotfactory.factory.config import FACTORY_PARAMS, QUEUE_PARAMS
from pilotfactory.factory.inifile import ConfigError, IniParser, scan
from tests.conftest import ROOT

CASE_SECONDS = 2.0
PEAK_BYTES = 200 * 1024 * 1024
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def examples() -> list[Path]:
    shared = ROOT.parent / "shared" / "examples"
    found = sorted(shared.glob("*.conf")) if shared.is_dir() else []
    return found + sorted((ROOT / "etc").glob("*.conf")) + sorted((ROOT / "etc").glob("*/*.conf"))


EXAMPLES = [p.read_bytes() for p in examples()]


class Checker:
    """Runs ``pilotfactory check`` in-process on one file and judges the answer: an exit code
    of 0, 1 or 2, no traceback, a file named when the load stops, within ``CASE_SECONDS`` and
    ``PEAK_BYTES`` (traced while the command runs: tracing the generator too would make the
    test ten times slower)."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.path = tmp / "fuzz.conf"
        self.capsys = capsys
        self.answers: Counter[int] = Counter()

    def __call__(self, data: bytes, *, as_factory: bool = False) -> int:
        self.path.write_bytes(data)
        argv = ["check", "-c" if as_factory else "-q", str(self.path)]
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            rc = main(argv)
        finally:
            elapsed = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        out, err = self.capsys.readouterr()
        self.answers[rc] += 1
        shown = data[:200]
        assert rc in (0, 1, 2), (rc, shown, out[-500:], err[-500:])
        assert "Traceback" not in out + err, (shown, err[-2000:])
        assert elapsed < CASE_SECONDS, (elapsed, shown)
        assert peak < PEAK_BYTES, (peak >> 20, shown)
        if rc == 2:  # what stopped the load is one line naming a file
            assert err.startswith("pilotfactory: /") and err.count("\n") == 1, (shown, err[-500:])
        return rc


@pytest.fixture
def check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Checker:
    return Checker(tmp_path, capsys)


# ---------------------------------------------------------------------------- random bytes


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(check: Checker, data: bytes) -> None:
    check(data)


# ---------------------------------------------------------------------------- mutated examples

SNIPPETS = [
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\xc3",
    b"%(",
    b"%(a9)s",
    b"%(wmsqueue)s",
    b"%%",
    b"%",
    b"[",
    b"]",
    b"[DEFAULT]\n",
    b"\n[BNL_CLOUD]\n",
    b"\n  continued",
    b'\n\t+Owner = "root"',
    b"\x1b[2J",
    b"\r",
    "\u2028".encode(),
    "\u202e".encode(),
    b"=",
    b":",
    b"..",
    b"/",
    b" nan",
    b" inf",
    b" -1",
    b" 1e309",
    b" " + b"9" * 40,
    b"\n= orphan\n",
    b"\nno delimiter here\n",
    b" " * 5000,
]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few random edits: snippets inserted, bytes flipped, lines deleted / repeated /
    swapped, the file cut short."""
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        at = rng.randint(0, len(data))
        if op == 0:
            data = data[:at] + rng.choice(SNIPPETS) + data[at:]
        elif op == 1 and data:
            i = rng.randrange(len(data))
            data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
        elif op == 2:
            data = data[:at]
        else:
            lines = data.split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 3:
                del lines[i]
            elif op == 4:
                lines.insert(j, lines[i])  # a duplicate key or section, often
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
    return data


def test_mutated_examples(check: Checker) -> None:
    assert EXAMPLES, "no example configurations found"
    rng = random.Random(20240611)
    for data in EXAMPLES:
        check(data)
    for _ in range(250):
        check(mutate(rng.choice(EXAMPLES), rng))
    assert sum(check.answers.values()) == 250 + len(EXAMPLES)
    assert set(check.answers) == {0, 1, 2}, check.answers  # loads, queue errors, refusals


# ---------------------------------------------------------------------------- random INI

KEYS = [p.name for p in QUEUE_PARAMS] + [
    "sched.maxpercycle.maximum",
    "sched.ready.offset",
    "sched.scale.factor",
    "batchsubmit.condorlocal.executable",
    "batchsubmit.condorlocal.condor_attributes",
    "batchsubmit.condorlocal.condor_attributes.request_cpus",
    "batchsubmit.condorlocal.environ",
    "batchstatus.condor.maxage",
    "wmsstatus.panda.timeout",
]
VALUES = [
    "Condor",
    "CondorLocal",
    "Panda",
    "Ready, MaxPerCycle",
    "Ready, Scale",
    "0",
    "-1",
    "5",
    "10%",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "9" * 25,
    "true",
    "drain",
    "%(wmsqueue)s",
    "%(nosuch)s",
    "%(x)s%(x)s%(x)s",
    "50%",
    "%%",
    "/bin/true",
    "a=1, b=2",
    "",
]
odd_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=12)
names = st.one_of(
    st.sampled_from(["Q", "BNL_CLOUD", "BNL_CLOUD-ec2-spot", "DEFAULT", "../x", "a b", ".h"]),
    odd_text,
)
keys = st.one_of(st.sampled_from(KEYS + ["x"]), odd_text)
values = st.one_of(st.sampled_from(VALUES), odd_text)
lines_of_a_value = st.lists(values, min_size=1, max_size=3)
sections = st.lists(
    st.tuples(names, st.lists(st.tuples(keys, lines_of_a_value), max_size=8)), max_size=5
)


def render(secs: list[tuple[str, list[tuple[str, list[str]]]]]) -> str:
    out = []
    for name, items in secs:
        out.append(f"[{name}]")
        for key, (first, *more) in items:
            out.append(f"{key} = {first}")
            out += [f"    {v}" for v in more]  # continuation lines
    return "\n".join(out) + "\n"


PLUGINS = (
    "[DEFAULT]\nwmsstatusplugin = Condor\nbatchstatusplugin = Condor\n"
    "batchsubmitplugin = CondorLocal\nschedplugin = Ready\nx = %(wmsqueue)s\n"
)


@FUZZ
@given(secs=sections, with_plugins=st.booleans())
def test_random_sections_keys_and_values(
    check: Checker, secs: list[tuple[str, list[tuple[str, list[str]]]]], with_plugins: bool
) -> None:
    check(((PLUGINS if with_plugins else "") + render(secs)).encode("utf-8", "surrogatepass"))


factory_keys = st.one_of(st.sampled_from([p.name for p in FACTORY_PARAMS]), keys)


@FUZZ
@given(items=st.lists(st.tuples(factory_keys, lines_of_a_value), max_size=8))
def test_random_factory_conf(check: Checker, items: list[tuple[str, list[str]]]) -> None:
    good = check.path.parent / "good-queues.conf"
    good.write_text(PLUGINS + "[Q]\n")
    text = render([("Factory", items)]).replace("[Factory]", f"[Factory]\nqueueConf = {good}", 1)
    check(text.encode("utf-8", "surrogatepass"), as_factory=True)


# ---------------------------------------------------------------------------- interpolation


def test_deep_and_wide_interpolation(check: Checker) -> None:
    """Chains of keys each naming the one before ``fanout`` times, some of them cycles."""
    rng = random.Random(7)
    for _ in range(60):
        levels, fanout = rng.randint(2, 14), rng.randint(1, 12)
        lines = [f"a0 = {'x' * rng.randint(0, 300)}"]
        lines += [f"a{i} = " + f"%(a{i - 1})s" * fanout for i in range(1, levels)]
        if rng.random() < 0.2:
            lines[0] = f"a0 = %(a{levels - 1})s"  # a cycle
        where = rng.choice(["[DEFAULT]", "[Q]"])
        text = f"{PLUGINS}{where}\n" + "\n".join(lines) + f"\n[Q2]\nvo = %(a{levels - 1})s\n"
        if where == "[DEFAULT]":
            text += "[Q]\n"
        check(text.encode())


# ---------------------------------------------------------------------------- vs configparser

ini_text = st.lists(
    st.sampled_from(
        ["[", "]", "a", "b", "=", ":", " ", "\t", "#", ";", "%", "(", ")s", "\n", "\n", "%(a)s"]
        + ["DEFAULT", "\n[s]\n", "a=", "b ="]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(text=ini_text)
def test_scan_and_parser_agree_with_configparser(text: str) -> None:
    """What configparser (strict) refuses the scan refuses; what it accepts reads the same
    through ours, raw and interpolated."""
    strict = configparser.ConfigParser()
    strict.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        strict.read_string(text)
        refused = None
    except configparser.Error as exc:
        refused = exc
    try:
        ours_refuse = bool(scan(text, "f").duplicates)
    except ConfigError:
        ours_refuse = True
    assert ours_refuse == (refused is not None), (text, refused)
    if refused is not None:
        return
    ours = IniParser()
    ours.read_string(text)
    assert ours.sections() == strict.sections()
    for section in strict.sections():
        assert dict(ours.items(section, raw=True)) == dict(strict.items(section, raw=True))
        for key in strict.options(section):
            try:
                want: object = strict.get(section, key)
            except configparser.Error as exc:
                want = type(exc)
            try:
                got: object = ours.get(section, key)
            except configparser.Error as exc:
                got = type(exc)
            assert got == want, (text, section, key)


# ---------------------------------------------------------------------------- real processes


def run_check(target: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PILOTFACTORY_SKIP_CONDOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pilotfactory.cli", "check", "-q", target],
        capture_output=True,
        text=True,
        timeout=30,  # a hang fails the test instead of the suite
        check=False,
        cwd=ROOT,
        env=env,
    )


def target(kind: str, tmp: Path) -> str:
    if kind == "fifo":
        os.mkfifo(tmp / "q.conf")  # no writer: a blocking open would wait forever
        return str(tmp / "q.conf")
    return {"dev-zero": "/dev/zero", "directory": str(tmp), "missing": str(tmp / "no.conf")}[kind]


@pytest.mark.parametrize(
    ("kind", "answer"),
    [
        ("dev-zero", "a character device, not a config file; refused"),
        ("fifo", "a FIFO, not a config file; refused"),
        ("directory", "a directory, not a config file; refused"),
        ("missing", "cannot read: No such file or directory"),
    ],
)
def test_the_command_refuses_what_is_not_a_file(tmp_path: Path, kind: str, answer: str) -> None:
    path = target(kind, tmp_path)
    t0 = time.monotonic()
    proc = run_check(path)
    assert time.monotonic() - t0 < 20
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"pilotfactory: {path}: {answer}\n"
