"""Hostile configuration input: every file either loads or is refused with its name, quickly.

Reading (FIFOs, devices, directories, encodings, sizes), configparser's own errors, bounded
interpolation, duplicates, multi-line and control characters, numbers, and queue names.
"""

from __future__ import annotations

import configparser
import os
import textwrap
import time
from pathlib import Path

import pytest

from pilotfactory import cli
from pilotfactory.backends import world
from pilotfactory.cli import main
from pilotfactory.factory import inifile
from pilotfactory.factory.config import (
    FACTORY_PARAMS,
    MAX_KEYS_READ,
    QUEUE_PARAMS,
    ConfigError,
    ConfigProblem,
    load_factory_config,
    load_queues,
    name_problem,
)
from pilotfactory.factory.inifile import MAX_FILE_BYTES, read_text
from pilotfactory.factory.params import Param, ParamValueError
from pilotfactory.factory.registry import KINDS, default_registry
from tests.unit.fakecondor import FakeCondor, FakeWorld

PLUGINS = """\
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
schedplugin = Ready
"""


def write(tmp_path: Path, text: str | bytes, name: str = "q.conf") -> str:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def errors_of(res: object, section: str) -> dict[str | None, str]:
    return {p.key: p.message for p in res.errors if p.section == section}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- reading a file


def test_a_utf8_bom_is_accepted_silently(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + (PLUGINS + "[Q]\n").encode())
    res = load_queues([path])
    assert res.problems == [] and [q.name for q in res.queues] == ["Q"]


@pytest.mark.parametrize("end", ["\r\n", "\r"])
def test_line_ends_read_as_text_mode_reads_them(tmp_path: Path, end: str) -> None:
    path = write(tmp_path, (PLUGINS + "[Q]\nwmsqueue = L\n").replace("\n", end).encode())
    (q,) = load_queues([path]).queues
    assert q.wmsqueue == "L"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[Q]\nwmsqueue = caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9)"),
        (b"\xff\xfe[\x00Q\x00]\x00", "line 1: not UTF-8 text (byte 0xff)"),  # UTF-16
        (b"[Q]\n\nwmsqueue = a\x00b\n", "line 3: a NUL byte: binary, not INI text"),
        (b"\x7fELF\x02\x01\x01\x00", "line 1: a NUL byte"),
        (b"x" * (MAX_FILE_BYTES + 1), f"larger than {MAX_FILE_BYTES // 1024} KiB"),
    ],
    ids=["latin-1", "utf-16", "nul", "elf", "too-big"],
)
def test_files_that_are_not_config_text_are_refused(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_queues([path])
    assert str(err.value).startswith(f"{path}: {message}")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "queues.conf"
    os.mkfifo(fifo)  # nobody writes: an open() without O_NONBLOCK would wait forever
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="a FIFO, not a config file"):
        read_text(str(fifo))
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/dev/zero", "a character device, not a config file; refused"),
        ("/dev/null", "a character device, not a config file; refused"),
        ("/", "a directory, not a config file; refused"),
        ("/nonexistent/queues.conf", "cannot read: No such file or directory"),
        ("bad\0path", "cannot read: not a valid path"),
    ],
)
def test_what_is_not_a_regular_file_is_refused(path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        read_text(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, PLUGINS)
    os.chmod(path, 0)
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        read_text(path)


def test_a_read_error_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What an unreadable file gives where the test runs as root (EACCES, or EIO from a disk)."""
    path = write(tmp_path, PLUGINS)

    def denied(fd: int, n: int) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(inifile.os, "read", denied)
    with pytest.raises(ConfigError) as err:
        read_text(path)
    assert str(err.value) == f"{path}: cannot read: Permission denied"


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    real = write(tmp_path, PLUGINS + "[Q]\n", "real.conf")
    (tmp_path / "link.conf").symlink_to(real)
    assert [q.name for q in load_queues([str(tmp_path / "link.conf")]).queues] == ["Q"]


def test_queue_dir_conf_entries_are_judged_one_by_one(tmp_path: Path) -> None:
    d = tmp_path / "queues.d"
    d.mkdir()
    (d / "00-default.conf").write_text(PLUGINS)
    (d / "10-q.conf").write_text("[Q]\n")
    assert [q.name for q in load_queues([], str(d)).queues] == ["Q"]
    os.mkfifo(d / "20-fifo.conf")
    with pytest.raises(ConfigError, match=r"20-fifo\.conf: a FIFO"):
        load_queues([], str(d))
    os.unlink(d / "20-fifo.conf")
    (d / "30-dir.conf").mkdir()
    with pytest.raises(ConfigError, match=r"30-dir\.conf: a directory"):
        load_queues([], str(d))


def test_the_queue_files_of_one_load_are_bounded_together(tmp_path: Path) -> None:
    big = "#" * (MAX_FILE_BYTES - 10) + "\n"
    paths = [write(tmp_path, big, f"{k}.conf") for k in range(5)]
    with pytest.raises(ConfigError, match=r"4\.conf: the queue files reach 16 MiB in all"):
        load_queues(paths)


# ---------------------------------------------------------------------------- INI structure


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wmsqueue = x\n[Q]\n", "line 1: not INI: 'wmsqueue = x' comes before any [section]"),
        ("[Q]\njust words\n", "line 2: not INI: 'just words' is not a key = value line"),
        ("[Q]\n= value\n", "line 2: not INI: '= value' is not a key before the '='"),
        ("[Q]\n[ ]\n  a = b\n\tnot a key\n", "line 4: not INI: 'not a key'"),
    ],
    ids=["missing-section-header", "parsing-error", "empty-key", "after-a-header"],
)
def test_syntax_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_queues([path])
    assert str(err.value).startswith(f"{path}: {message}")


def test_a_million_bad_lines_are_refused_at_the_first(tmp_path: Path) -> None:
    """configparser collects every bad line into a message it grows quadratically."""
    path = write(tmp_path, "[Q]\n" + "x\n" * 1_000_000)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="line 2: not INI"):
        load_queues([path])
    assert time.monotonic() - t0 < 2.0


def test_a_long_run_of_blanks_in_a_key_is_linear(tmp_path: Path) -> None:
    """configparser's own key pattern takes ~10 s for 40,000 blanks; ours is linear."""
    path = write(tmp_path, PLUGINS + "[Q]\na" + " " * 1_000_000 + "b = c\n")
    t0 = time.monotonic()
    res = load_queues([path])
    assert time.monotonic() - t0 < 2.0
    assert res.queues[0].generic["a" + " " * 1_000_000 + "b"] == "c"


def test_too_many_keys_to_read_is_refused(tmp_path: Path) -> None:
    """Every queue reads every [DEFAULT] key: 1,000 sections x 1,000 defaults is 10**6 reads
    from 20 KB of text."""
    text = "[DEFAULT]\n" + "".join(f"k{i} = 1\n" for i in range(1000))
    text += "".join(f"[q{i}]\n" for i in range(1000))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"1000000 keys to read, more than {MAX_KEYS_READ}"):
        load_queues([path])


def test_duplicates_in_one_file_break_their_queue_and_name_the_lines(tmp_path: Path) -> None:
    text = PLUGINS + textwrap.dedent(
        """\
        [DUPKEY]
        wmsqueue = A
        wmsqueue = B
        [DUPSEC]
        wmsqueue = A
        [OK]
        [DUPSEC]
        vo = atlas
        """
    )
    path = write(tmp_path, text)
    res = load_queues([path])
    assert [q.name for q in res.queues] == ["OK"]
    assert sorted(res.broken) == ["DUPKEY", "DUPSEC"]
    assert errors_of(res, "DUPKEY") == {"wmsqueue": "line 8: set again (first at line 7); keep one"}
    assert errors_of(res, "DUPSEC") == {None: "line 12: [DUPSEC] again (first at line 9)"}
    assert all(p.file == path for p in res.errors)


def test_a_default_key_written_twice_breaks_the_queues_that_inherit_it(tmp_path: Path) -> None:
    text = PLUGINS + "vo = a\nvo = b\n[INHERITS]\n[OWN]\nvo = c\n"
    res = load_queues([write(tmp_path, text)])
    assert [q.name for q in res.queues] == ["OWN"]
    assert errors_of(res, "INHERITS") == {
        "vo": "line 7: set again in [DEFAULT] (first at line 6); keep one"
    }


def test_a_later_file_overriding_a_key_is_not_a_duplicate(tmp_path: Path) -> None:
    a = write(tmp_path, PLUGINS + "[Q]\nwmsqueue = A\n", "a.conf")
    b = write(tmp_path, "[DEFAULT]\nschedplugin = Ready\n[Q]\nwmsqueue = B\n", "b.conf")
    res = load_queues([a, b])
    assert res.problems == []
    assert res.queues[0].wmsqueue == "B"


def test_factory_conf_duplicates_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "[Factory]\nfactoryId = a\nfactoryId = b\n", "factory.conf")
    _, problems = load_factory_config(path)
    assert [(p.severity, p.key, p.message) for p in problems] == [
        ("error", "factoryId", "line 3: set again (first at line 2); keep one")
    ]


# ---------------------------------------------------------------------------- interpolation


def laughs(levels: int = 10, fanout: int = 10, seed: str = "x" * 100) -> str:
    lines = ["[DEFAULT]", f"a0 = {seed}"]
    lines += [f"a{i} = " + f"%(a{i - 1})s" * fanout for i in range(1, levels)]
    return PLUGINS + "\n".join(lines) + f"\n[Q]\nwmsqueue = %(a{levels - 1})s\n[OK]\n"


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("x" * 100, "expands to more than 64 KiB; refused"),
        ("", "takes more than 1000 %(key)s substitutions"),  # 10**9 empty strings
    ],
    ids=["gigabytes", "billion-substitutions"],
)
def test_a_billion_laughs_is_cut_short_and_names_the_key(
    tmp_path: Path, seed: str, message: str
) -> None:
    text = laughs(seed=seed)
    assert len(text) < 1200
    path = write(tmp_path, text)
    t0 = time.monotonic()
    res = load_queues([path])
    assert time.monotonic() - t0 < 0.5
    assert errors_of(res, "Q")["wmsqueue"] == message
    assert "OK" in res.broken  # [OK] inherits the [DEFAULT] keys that blow up too
    assert errors_of(res, "OK")["a9"] == message


def test_a_long_run_of_percent_escapes_is_linear(tmp_path: Path) -> None:
    path = write(tmp_path, PLUGINS + "[Q]\nvo = " + "%%" * 30000 + "\n")
    t0 = time.monotonic()
    (q,) = load_queues([path]).queues
    assert q.generic["vo"] == "%" * 30000
    assert time.monotonic() - t0 < 1.0


def test_a_raw_value_too_long_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, PLUGINS + "[Q]\nvo = " + "v" * (inifile.MAX_VALUE_CHARS + 1) + "\n")
    res = load_queues([path])
    assert errors_of(res, "Q") == {"vo": "longer than 64 KiB; refused"}


def test_expansion_over_a_whole_load_is_bounded(tmp_path: Path) -> None:
    """Each value within its bound, but 1,000 queues x 100 of them is 6 GB of text."""
    text = "[DEFAULT]\nbig = " + "b" * 60000 + "\n"
    text += "".join(f"k{i} = %(big)s\n" for i in range(100))
    text += "".join(f"[q{i}]\n" for i in range(1000))
    path = write(tmp_path, text)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"expand to more than 64 MiB .* in all"):
        load_queues([path])
    assert time.monotonic() - t0 < 5.0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("%(nosuch)s", "which is not a valid option name"),  # InterpolationMissingOptionError
        ("50%", "'%' must be followed by '%' or '('"),  # InterpolationSyntaxError
        ("%(broken", "bad interpolation variable reference"),  # InterpolationSyntaxError
        ("%(wmsqueue)s", "Recursion limit exceeded"),  # InterpolationDepthError
    ],
)
def test_interpolation_errors_name_file_section_key(
    tmp_path: Path, value: str, fragment: str
) -> None:
    path = write(tmp_path, PLUGINS + f"[Q]\nwmsqueue = {value}\n[OK]\n")
    res = load_queues([path])
    assert res.broken == ["Q"]
    (err,) = res.errors
    assert (err.file, err.section, err.key) == (path, "Q", "wmsqueue")
    assert err.message.startswith("interpolation failed: ") and fragment in err.message


def test_bounded_interpolation_agrees_with_configparser() -> None:
    text = "[DEFAULT]\nd = D\n[s]\na = 1\nb = %(a)s-%(d)s-%%\nc = %(b)s/%(b)s\n"
    stock = configparser.ConfigParser()
    stock.read_string(text)
    ours = inifile.IniParser()
    ours.read_string(text)
    assert {k: ours.get("s", k) for k in "abcd"} == {k: stock.get("s", k) for k in "abcd"}


# ---------------------------------------------------------------------------- values


def test_a_continuation_line_never_reaches_a_single_line_setting(tmp_path: Path) -> None:
    text = PLUGINS + textwrap.dedent(
        """\
        [EXE]
        batchsubmit.condorlocal.executable = /bin/true
          +Owner = "root"
        [ATTR]
        batchsubmit.condorlocal.condor_attributes.request_cpus = 8
          +Evil = True
        [SITE]
        site_setting = a
          b
        [WMS]
        wmsqueue = A
         B
        [LIST]
        schedplugin = Ready,
            MaxPerCycle
            MaxToRun
        sched.maxpercycle.maximum = 3
        sched.maxtorun.maximum = 5
        batchsubmit.condorlocal.condor_attributes = request_memory = 2000
            request_cpus = 8
        [NEXTLINE]
        wmsqueue =
            ON_THE_NEXT_LINE
        """
    )
    res = load_queues([write(tmp_path, text)])
    assert sorted(res.broken) == ["ATTR", "EXE", "SITE", "WMS"]
    for section, key in [
        ("EXE", "batchsubmit.condorlocal.executable"),
        ("ATTR", "batchsubmit.condorlocal.condor_attributes.request_cpus"),
        ("SITE", "site_setting"),
        ("WMS", "wmsqueue"),
    ]:
        (msg,) = errors_of(res, section).values()
        assert list(errors_of(res, section)) == [key]
        assert "an indented line continues the value" in msg
    queues = {q.name: q for q in res.queues}
    assert [s.name for s in queues["LIST"].sched] == ["Ready", "MaxPerCycle", "MaxToRun"]
    attrs = queues["LIST"].batchsubmit.params["condor_attributes"]
    assert attrs == {"request_memory": "2000", "request_cpus": "8"}
    assert queues["NEXTLINE"].wmsqueue == "ON_THE_NEXT_LINE"


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\x7f", "\x85", "\u2028", "\x0b", "\x0c"])
def test_control_characters_are_refused_in_any_value(tmp_path: Path, char: str) -> None:
    text = PLUGINS + f"[Q]\nvo = a{char}b\n[F]\nbatchsubmit.condorlocal.environ = A=1{char}B=2\n"
    res = load_queues([write(tmp_path, text)])
    assert sorted(res.broken) == ["F", "Q"]
    code = f"U+{ord(char):04X}"
    assert errors_of(res, "Q") == {"vo": f"control character {code} in the value; refused"}
    assert errors_of(res, "F") == {
        "batchsubmit.condorlocal.environ": f"control character {code} in the value; refused"
    }


def test_a_tab_in_a_value_is_kept(tmp_path: Path) -> None:
    (q,) = load_queues([write(tmp_path, PLUGINS + "[Q]\nvo = a\tb\n")]).queues
    assert q.generic["vo"] == "a\tb"


# ---------------------------------------------------------------------------- numbers


def every_param() -> list[tuple[str, Param]]:
    """Every declared parameter: [Factory], queue settings, and each plugin's."""
    out = [(f"factory {p.name}", p) for p in FACTORY_PARAMS]
    out += [(f"queue {p.name}", p) for p in QUEUE_PARAMS]
    reg = default_registry()
    for kind in KINDS:
        for name in reg.names(kind):
            out += [(f"{kind} {name} {p.name}", p) for p in reg.get(kind, name).PARAMS]
    return out


NUMBERS = [(w, p) for w, p in every_param() if p.type in (int, float)]


@pytest.mark.parametrize(
    "raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "\u0663", "0x10", "1\n2", "1\x00", ""]
)
def test_every_number_refuses_what_is_not_a_finite_bounded_number(raw: str) -> None:
    assert len(NUMBERS) > 40
    for where, param in NUMBERS:
        with pytest.raises(ParamValueError):
            param.parse(raw)
            pytest.fail(f"{where} accepted {raw!r}")


def test_integers_fit_64_bits() -> None:
    for where, param in NUMBERS:
        if param.type is int:
            with pytest.raises(ParamValueError):
                param.parse(str(2**63))
                pytest.fail(f"{where} accepted 2**63")


def test_every_number_default_is_within_its_bounds() -> None:
    for where, p in NUMBERS:
        if p.default is not None:
            assert p.minimum is None or p.default >= p.minimum, where
            assert p.maximum is None or p.default <= p.maximum, where


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("shrink_freeze_ratio", "1.5", "a number from 0 to 1"),
        ("boot_timeout", "0", "a number from 1 to 31622400"),
        ("held_timeout", "-1", "a number from 1 to 31622400"),
        ("pending_timeout", "1e12", "a number from 1 to 31622400"),
        ("apfqueue.sleep", "inf", "a number from 0 to 31622400"),
        ("max_booting", "-1", "an integer >= 0"),
        ("sched.scale.factor", "1e308", "a number from 0 to 100"),
        ("sched.throttle.ratio", "2", "a number from 0 to 1"),
        ("wmsstatus.panda.timeout", "1e9", "a number from 0.1 to 3600"),
        ("sched.maxpercycle.maximum", "99999999999999999999", "an integer >= 0"),
    ],
)
def test_out_of_range_numbers_name_the_key(
    tmp_path: Path, key: str, raw: str, expected: str
) -> None:
    chain = {"sched.scale": "Ready, Scale", "sched.throttle": "Ready, Throttle"}
    sched = next((v for k, v in chain.items() if key.startswith(k)), "Ready, MaxPerCycle")
    wms = "Panda" if key.startswith("wmsstatus.panda") else "Condor"
    text = PLUGINS + f"[Q]\nwmsstatusplugin = {wms}\nschedplugin = {sched}\n{key} = {raw}\n"
    res = load_queues([write(tmp_path, text)])
    assert errors_of(res, "Q") == {key: f"got {raw!r}, expected {expected}"}


@pytest.mark.parametrize(
    ("raw", "ok"),
    [("5", True), ("10%", True), ("100 %", True), ("101%", False), ("²", False), ("5%%", False)],
)
def test_max_retire_per_cycle_is_a_count_or_a_percentage(raw: str, ok: bool) -> None:
    param = next(p for p in QUEUE_PARAMS if p.name == "max_retire_per_cycle")
    if ok:
        assert param.parse(raw) == raw
    else:
        with pytest.raises(ParamValueError, match="expected N or N%"):
            param.parse(raw)


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("metrics_port", "0", "an integer from 1 to 65535"),
        ("metrics_port", "65536", "an integer from 1 to 65535"),
        ("factory.sleep", "nan", "a number from 0 to 31622400"),
        ("maxperfactory.maximum", "-5", "an integer >= 0"),
    ],
)
def test_factory_numbers_out_of_range(tmp_path: Path, key: str, raw: str, expected: str) -> None:
    path = write(tmp_path, f"[Factory]\n{key} = {raw}\n", "factory.conf")
    _, problems = load_factory_config(path)
    assert [(p.key, p.message) for p in problems] == [(key, f"got {raw!r}, expected {expected}")]


# ---------------------------------------------------------------------------- names

HOSTILE_NAMES = [
    "",
    ".",
    "..",
    "../etc",
    "a/b",
    "a\\b",
    ".hidden",
    "a..b",
    "a b",
    "a\tb",
    'q"x',
    "q'x",
    "a=b",
    "a;b",
    "a,b",
    "$(HOME)",
    "a*b",
    "a\x00b",
    "a\x1b[31mb",
    "a\u202eb",
    "café",
    "Ａ",  # noqa: RUF001  (a full-width letter)
    "x" * 129,
]
GOOD_NAMES = [
    "BNL_CLOUD",
    "BNL_CLOUD-ec2-spot",
    "ANALY_BNL_SHORT-gridgk01.racf.bnl.gov",
    "user@site",
    "a+b:c",
    "Q1",
    "x" * 128,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_queue_names_are_refused(name: str) -> None:
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_apf_queue_names_pass(name: str) -> None:
    assert name_problem(name) is None


def test_a_hostile_section_name_breaks_only_its_queue(tmp_path: Path) -> None:
    text = PLUGINS + "[OK]\n[../../etc]\n[a b]\n[\x1b]0;pwned\x07]\n"
    res = load_queues([write(tmp_path, text)])
    assert [q.name for q in res.queues] == ["OK"]
    assert len(res.broken) == 3
    shown = [str(p) for p in res.errors]
    assert all("\x1b" not in line and "\x07" not in line for line in shown)
    assert any("[\\x1b]0;pwned\\x07]" in line for line in shown)


def test_wmsqueue_and_factory_id_are_names_too(tmp_path: Path) -> None:
    res = load_queues([write(tmp_path, PLUGINS + "[Q]\nwmsqueue = a b\n")])
    assert errors_of(res, "Q") == {
        "wmsqueue": "got 'a b': ' ' is not allowed (only letters, digits and _ - . @ + :)"
    }
    path = write(tmp_path, "[Factory]\nfactoryId = ../x\n", "factory.conf")
    fcfg, problems = load_factory_config(path)
    assert [p.key for p in problems] == ["factoryId"]
    assert fcfg.factory_id == "pilotfactory"  # the refused id is not carried on


def test_problems_print_as_one_escaped_bounded_line() -> None:
    p = ConfigProblem("error", "f\udcff.conf", "Q\nfake: ok", "k\x1b", "m" * 5000)
    line = str(p)
    assert "\n" not in line and "\x1b" not in line and "\udcff" not in line
    assert line.startswith("f\\udcff.conf: [Q\\nfake: ok] k\\x1b: error: ")
    assert len(line) < 1200


# ---------------------------------------------------------------------------- run and check


def test_run_refuses_a_factory_conf_with_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    qpath = write(tmp_path, PLUGINS + "[Q]\n", "queues.conf")
    fpath = write(tmp_path, f"[Factory]\nqueueConf = {qpath}\nfactory.sleep = nan\n", "f.conf")
    assert main(["check", "-c", fpath]) == 1
    for command in (["run", "--once"], ["run"], ["status"]):
        caplog.clear()
        assert main([*command, "-c", fpath]) == 1  # before any port is built
        assert f"not starting: {fpath}: [Factory] has errors" in caplog.text
        assert "factory.sleep: error: got 'nan'" in caplog.text


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("# nothing but a comment\n", "0 broken, 0 disabled"),
        (PLUGINS + "[OFF]\nenabled = false\n[BAD]\nschedplugin = Nope\n", "1 broken, 1 disabled"),
    ],
    ids=["empty", "all-broken-or-disabled"],
)
def test_no_usable_queue_stops_run_and_warns_check(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    text: str,
    counts: str,
) -> None:
    path = write(tmp_path, text)
    rc = main(["check", "-q", path])
    out = capsys.readouterr().out
    assert f"{path}: warning: no usable queue ({counts}); run will not start" in out
    assert rc == (1 if "BAD" in text else 0)  # the warning alone does not fail check
    assert main(["run", "--once", "-q", path]) == 1
    assert f"not starting: {path}: no usable queue ({counts})" in caplog.text


def test_a_reload_run_would_refuse_keeps_the_old_queues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(world, "RealWorld", lambda backend: FakeWorld(FakeCondor()))
    path = write(tmp_path, PLUGINS + "[Q]\n")
    factory = cli._make_factory(cli.build_parser().parse_args(["run", "-q", path]), True)
    assert factory is not None and factory.reload_hook is not None
    write(tmp_path, "")  # every queue gone: SIGHUP must not empty the running factory
    assert factory.reload_hook().queues == []
    factory._reload_requested = True
    factory.run(cycles=1)  # logs "reload refused, the old queues run on"
    assert list(factory.queues) == ["Q"]
    assert "no usable queue" in (factory.reload_refused or "")


def test_an_undecodable_path_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-q", "/nonexistent/\udcff\x1b.conf"]) == 2
    err = capsys.readouterr().err
    assert "pilotfactory: /nonexistent/\\udcff\\x1b.conf: cannot read" in err
