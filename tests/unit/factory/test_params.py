"""Typed plugin parameters as tables: conversion, APF booleans, minimum, choices, defaults."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pilotfactory.factory.config import load_queues
from pilotfactory.factory.params import (
    Param,
    ParamValueError,
    defaults,
    merged,
    parse_pairs,
)

# ---------------------------------------------------------------------------- conversion

PARSE_OK: list[tuple[str, Param, str, Any]] = [
    # (case, param, raw, parsed)
    ("int", Param("k", int), "5", 5),
    ("int, padded", Param("k", int), "  42 \n", 42),
    ("int, negative", Param("k", int), "-3", -3),
    ("int, zero is a value", Param("k", int), "0", 0),
    ("float", Param("k", float), "0.156", 0.156),
    ("float from an integer", Param("k", float), "60", 60.0),
    ("float, exponent", Param("k", float), "1e3", 1000.0),
    ("str is stripped", Param("k", str), "  /bin/true  ", "/bin/true"),
    ("str may be empty", Param("k", str), "", ""),
    ("list", Param("k", list), "Ready, MaxPerCycle,MaxToRun", ["Ready", "MaxPerCycle", "MaxToRun"]),
    ("list drops empty items", Param("k", list), " a, ,b,, ", ["a", "b"]),
    ("list, empty", Param("k", list), "", []),
    ("list, one item", Param("k", list), "Ready", ["Ready"]),
    ("dict", Param("k", dict), "k1=v1, k2=v2", {"k1": "v1", "k2": "v2"}),
    ("dict, escaped comma", Param("k", dict), r"a=1\,2, b=3", {"a": "1,2", "b": "3"}),
    ("dict, '=' in a value", Param("k", dict), "req=a==b", {"req": "a==b"}),
    ("dict, empty value", Param("k", dict), "k=", {"k": ""}),
    ("dict, empty", Param("k", dict), "   ", {}),
    ("choice", Param("k", str, choices=("drain", "peaceful")), " peaceful ", "peaceful"),
    ("at the minimum", Param("k", int, minimum=0), "0", 0),
    ("above a float minimum", Param("k", float, minimum=0.5), "0.5", 0.5),
    ("negative minimum", Param("k", int, minimum=-2), "-2", -2),
]


@pytest.mark.parametrize(
    ("param", "raw", "parsed"), [c[1:] for c in PARSE_OK], ids=[c[0] for c in PARSE_OK]
)
def test_parse_converts_to_the_declared_type(param: Param, raw: str, parsed: Any) -> None:
    value = param.parse(raw)
    assert value == parsed
    assert type(value) is type(parsed)


# APF reads booleans with ConfigParser's spellings, in any case.
BOOLEANS = [
    *[(s, True) for s in ("true", "True", "TRUE", "yes", "Yes", "on", "ON", "1", " true ")],
    *[(s, False) for s in ("false", "False", "FALSE", "no", "No", "off", "OFF", "0", " no\t")],
]


@pytest.mark.parametrize(("raw", "parsed"), BOOLEANS)
def test_booleans_in_apf_spellings(raw: str, parsed: bool) -> None:
    assert Param("enabled", bool, True).parse(raw) is parsed


PARSE_BAD: list[tuple[str, Param, str, str]] = [
    # (case, param, raw, what the message says is expected)
    ("int from text", Param("k", int), "many", "an integer"),
    ("int from a decimal", Param("k", int), "5.0", "an integer"),
    ("int, empty", Param("k", int), "", "an integer"),
    ("float from text", Param("k", float), "soon", "a number"),
    ("float, a comma decimal", Param("k", float), "0,5", "a number"),
    ("bool, unknown spelling", Param("k", bool), "maybe", "a boolean (true/false)"),
    ("bool, 'y' is not APF", Param("k", bool), "y", "a boolean (true/false)"),
    ("bool, empty", Param("k", bool), "", "a boolean (true/false)"),
    ("dict, a pair without '='", Param("k", dict), "k1=v1, oops", "k1=v1, k2=v2 pairs"),
    ("dict, an empty key", Param("k", dict), "=v", "k1=v1, k2=v2 pairs"),
    (
        "choice, unknown",
        Param("k", str, choices=("drain", "peaceful", "kill")),
        "gentle",
        "one of drain, peaceful, kill",
    ),
    (
        "choice, case matters",
        Param("k", str, choices=("bindings", "cli")),
        "CLI",
        "one of bindings, cli",
    ),
    ("int below the minimum", Param("k", int, minimum=1), "0", "an integer >= 1"),
    ("negative, minimum 0", Param("k", int, minimum=0), "-1", "an integer >= 0"),
    ("float below the minimum", Param("k", float, minimum=0.5), "0.25", "a number >= 0.5"),
    ("float, negative sleep", Param("k", float, minimum=0.0), "-60", "a number >= 0"),
    ("float, nan passes no minimum", Param("k", float, minimum=0.0), "nan", "a number >= 0"),
    ("float, inf never comes due", Param("k", float, minimum=0.0), "inf", "a number >= 0"),
    ("float, -inf", Param("k", float), "-inf", "a number"),
    (
        "int above the maximum",
        Param("k", int, minimum=1, maximum=65535),
        "65536",
        "an integer from 1 to 65535",
    ),
    ("float above the maximum", Param("k", float, maximum=1.0), "1.5", "a number <= 1"),
    ("int beyond 64 bits", Param("k", int), str(2**63), "an integer"),
    ("int, digits not ASCII", Param("k", int), "\u0661\u0662", "an integer"),
    ("float, digits not ASCII", Param("k", float), "\u0661.\u0665", "a number"),
]


@pytest.mark.parametrize(
    ("param", "raw", "expected"), [c[1:] for c in PARSE_BAD], ids=[c[0] for c in PARSE_BAD]
)
def test_bad_values_name_the_value_and_what_was_expected(
    param: Param, raw: str, expected: str
) -> None:
    with pytest.raises(ParamValueError) as err:
        param.parse(raw)
    assert str(err.value) == f"got {raw!r}, expected {expected}"
    assert isinstance(err.value, ValueError)
    assert err.value.__cause__ is None  # the int()/float() traceback is not chained in


EXPECTED = [
    (Param("k", int), "an integer"),
    (Param("k", float), "a number"),
    (Param("k", bool), "a boolean (true/false)"),
    (Param("k", str), "a string"),
    (Param("k", list), "a comma-separated list"),
    (Param("k", dict), "k1=v1, k2=v2 pairs"),
    (Param("k", int, minimum=3), "an integer >= 3"),
    (Param("k", float, minimum=0.25), "a number >= 0.25"),
    (Param("k", int, minimum=1, maximum=65535), "an integer from 1 to 65535"),
    (Param("k", float, maximum=0.5), "a number <= 0.5"),
    (Param("k", str, choices=("a", "b")), "one of a, b"),
    (Param("k", str, choices=("a",), minimum=1), "one of a"),  # choices say it all
]


@pytest.mark.parametrize(("param", "text"), EXPECTED)
def test_expected_describes_the_type(param: Param, text: str) -> None:
    assert param.expected == text


@pytest.mark.parametrize("param", [Param("k", str), Param("k", int), Param("k", bool)])
def test_a_single_line_value_may_not_continue_on_the_next_line(param: Param) -> None:
    with pytest.raises(ParamValueError, match="an indented line continues the value; write k"):
        param.parse("1\ntrue")


def test_list_and_pair_values_may_span_lines() -> None:
    assert Param("k", list).parse("Ready,\nMaxPerCycle\nMaxToRun") == [
        "Ready",
        "MaxPerCycle",
        "MaxToRun",
    ]
    assert Param("k", dict).parse("a=1\nb=2, c=3") == {"a": "1", "b": "2", "c": "3"}


@pytest.mark.parametrize("param", [Param("k", str), Param("k", list), Param("k", dict)])
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x9b", "\u2028", "\u2029"])
def test_control_characters_are_refused(param: Param, char: str) -> None:
    with pytest.raises(ParamValueError, match=f"control character U\\+{ord(char):04X}"):
        param.parse(f"a{char}=b")


def test_a_long_bad_value_is_shown_shortened() -> None:
    with pytest.raises(ParamValueError) as err:
        Param("k", int).parse("9" * 100_000)
    assert len(str(err.value)) < 200 and "[100000 chars]" in str(err.value)


def test_minimum_applies_to_numbers_only() -> None:
    assert Param("k", list, minimum=5).parse("a") == ["a"]
    assert Param("k", str, minimum=5).parse("1") == "1"


def test_param_is_frozen_with_string_default_type() -> None:
    p = Param("name")
    assert (p.type, p.default, p.aliases, p.choices, p.minimum) == (str, None, (), None, None)
    with pytest.raises(AttributeError):
        p.default = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------- parse_pairs


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("a=1", {"a": "1"}),
        (" a = 1 , b= 2 ", {"a": "1", "b": "2"}),
        ("a=1,", {"a": "1"}),
        ("a=1, a=2", {"a": "2"}),  # the later one wins
        (r"x=a\,b\,c", {"x": "a,b,c"}),
        ("", {}),
    ],
)
def test_parse_pairs(text: str, pairs: dict[str, str]) -> None:
    assert parse_pairs(text) == pairs


@pytest.mark.parametrize("text", ["novalue", "a=1, b", " = 1"])
def test_parse_pairs_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pairs(text)


# ---------------------------------------------------------------------------- Param.of


OF_CASES: list[tuple[str, Param, dict[str, Any], Any]] = [
    ("missing key: default", Param("maxage", float, 600.0), {}, 600.0),
    ("None means unset: default", Param("maxage", float, 600.0), {"maxage": None}, 600.0),
    ("0 stays 0", Param("maxage", float, 600.0), {"maxage": 0}, 0),
    ("False stays False", Param("flag", bool, True), {"flag": False}, False),
    ("empty string stays", Param("s", str, "x"), {"s": ""}, ""),
    ("empty list stays", Param("l", list, ["a"]), {"l": []}, []),
    ("a value wins", Param("maxage", float, 600.0), {"maxage": 30.0}, 30.0),
    ("unset default stays unset", Param("maximum", int), {}, None),
    ("other keys are ignored", Param("maximum", int, 7), {"minimum": 1}, 7),
]


@pytest.mark.parametrize(
    ("param", "params", "value"), [c[1:] for c in OF_CASES], ids=[c[0] for c in OF_CASES]
)
def test_of_falls_back_to_the_default_only_when_unset(
    param: Param, params: dict[str, Any], value: Any
) -> None:
    got = param.of(params)
    assert got == value
    assert type(got) is type(value)


# ---------------------------------------------------------------------------- defaults / merged

DECLARED = (
    Param("maximum", int),
    Param("factor", float, 1.0),
    Param("enabled", bool, True),
    Param("condor_attributes", dict, {}),
    Param("names", list, None),
)


def test_defaults_map_every_declared_name() -> None:
    assert defaults(DECLARED) == {
        "maximum": None,
        "factor": 1.0,
        "enabled": True,
        "condor_attributes": {},
        "names": None,
    }
    assert defaults(()) == {}


def test_defaults_copy_dict_defaults() -> None:
    declared = (Param("attrs", dict, {"a": "1"}),)
    first = defaults(declared)
    first["attrs"]["b"] = "2"
    assert defaults(declared) == {"attrs": {"a": "1"}}
    assert declared[0].default == {"a": "1"}


def test_merged_overlays_values_on_defaults() -> None:
    out = merged(DECLARED, {"maximum": 5, "enabled": False, "extra": "kept"})
    assert out == {
        "maximum": 5,
        "factor": 1.0,
        "enabled": False,
        "condor_attributes": {},
        "names": None,
        "extra": "kept",
    }


def test_merged_leaves_its_inputs_alone() -> None:
    values = {"factor": 2.0}
    out = merged(DECLARED, values)
    out["factor"] = 3.0
    out["condor_attributes"]["x"] = "y"
    assert values == {"factor": 2.0}
    assert DECLARED[3].default == {}


def test_merged_none_is_unset_for_of() -> None:
    out = merged(DECLARED, {"factor": None})
    assert out["factor"] is None
    assert DECLARED[1].of(out) == 1.0


# ---------------------------------------------------------------------------- in queues.conf

QUEUES = """
[DEFAULT]
wmsstatusplugin = Condor
batchstatusplugin = Condor
batchsubmitplugin = CondorLocal
schedplugin = Ready, MaxPerCycle

[GOOD]
sched.maxpercycle.maximum = 0
apfqueue.sleep = 90

[BAD]
apfqueue.sleep = soon
sched.maxpercycle.maximum = -1
"""


def test_config_problems_name_the_key_and_the_bad_value(tmp_path: Path) -> None:
    conf = tmp_path / "queues.conf"
    conf.write_text(textwrap.dedent(QUEUES))
    res = load_queues([str(conf)])
    assert [q.name for q in res.queues] == ["GOOD"]
    good = res.queues[0]
    assert good.sleep == 90.0
    assert good.sched[1].params["maximum"] == 0  # 0 is a value, not unset
    assert good.sched[0].params["offset"] == 0  # Ready's declared default
    assert res.broken == ["BAD"]
    found = {(p.section, p.key): p.message for p in res.errors}
    assert found == {
        ("BAD", "apfqueue.sleep"): "got 'soon', expected a number from 0 to 31622400",
        ("BAD", "sched.maxpercycle.maximum"): "got '-1', expected an integer >= 0",
    }
    assert all(p.file == str(conf) for p in res.errors)
