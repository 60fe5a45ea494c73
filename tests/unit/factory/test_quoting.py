"""The one quoting helper: hostile strings never leave their line or expand a macro."""

from __future__ import annotations

import pytest

from pilotfactory.factory.contract import (
    UnsafeValue,
    classad_string,
    inert,
    submit_environment,
    submit_key,
)

HOSTILE_LINES = [
    "x\nSTART = True",  # a new config line in a VM's HTCondor config
    "x\r\nqueue 1000",  # a new submit command
    "x\x1b[2J",  # terminal escape
    "x\x00y",
    "x\x7f",
    "x\u2028"[:1] + "\x0b",  # vertical tab
]


@pytest.mark.parametrize("value", HOSTILE_LINES)
def test_control_characters_are_refused_everywhere(value: str) -> None:
    with pytest.raises(UnsafeValue, match="control character"):
        classad_string(value)
    with pytest.raises(UnsafeValue, match="control character"):
        inert(value, "k", macros=True)
    with pytest.raises(UnsafeValue, match="control character"):
        submit_environment({"X": value})


@pytest.mark.parametrize("value", ["$(SHELL)", "$$(Memory)", "a$ENV(HOME)b"])
def test_macros_only_where_the_factory_writes_them(value: str) -> None:
    with pytest.raises(UnsafeValue, match="macro"):
        classad_string(value)
    assert classad_string(value, macros=True).startswith('"')


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ('\\"; START = True; x="', '"\\\\\\"; START = True; x=\\""'),
        ("tab\there", '"tab\there"'),
    ],
)
def test_classad_strings_escape_quotes_and_backslashes(value: str, literal: str) -> None:
    assert classad_string(value) == literal


def test_classad_literal_round_trips_through_the_classad_parser() -> None:
    classad2 = pytest.importorskip("classad2")
    for value in ['a"b', "a\\b", '\\"; x', "it's", "  spaced  "]:
        ad = classad2.ClassAd(f"[v = {classad_string(value)}]")
        assert ad["v"] == value


@pytest.mark.parametrize("key", ["executable", "+MyAttr", "MY.Attr", "request_cpus"])
def test_submit_keys(key: str) -> None:
    assert submit_key(key) == key


@pytest.mark.parametrize("key", ["", "a b", "x=y", "+", "a\nb", "queue 5;", "1abc", "a$b"])
def test_bad_submit_keys(key: str) -> None:
    with pytest.raises(UnsafeValue):
        submit_key(key)


def test_environment_quotes_values_with_spaces_and_quotes() -> None:
    env = submit_environment({"A": "plain", "B": "x y", "C": "it's", "D": 'say "hi"'})
    assert env == "\"A=plain B='x y' C='it''s' D='say \"\"hi\"\"'\""
    with pytest.raises(UnsafeValue, match="variable name"):
        submit_environment({"A B": "1"})
    with pytest.raises(UnsafeValue, match="variable name"):
        submit_environment({"A=1 B": "1"})
